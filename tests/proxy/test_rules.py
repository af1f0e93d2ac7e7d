"""Route rules: glob paths, first match wins, unsafe methods only by opt-in, errors name keys."""

from __future__ import annotations

import pytest

from shadowtap.proxy.rules import DEFAULT_RULE, RouteRule, RouteTable, compile_path_pattern
from shadowtap.recorder.errors import ConfigError


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/api/*", "/api/users", True),
        ("/api/*", "/api/users/7", False),
        ("/api/**", "/api/users/7", True),
        ("/users/*/orders", "/users/7/orders", True),
        ("/a.b", "/aXb", False),
        ("/exact", "/exact/", False),
    ],
)
def test_path_patterns(pattern: str, path: str, expected: bool) -> None:
    assert (compile_path_pattern(pattern, field="p").match(path) is not None) is expected


def test_first_match_wins_and_default() -> None:
    table = RouteTable(
        [
            RouteRule.from_mapping(
                {"path": "/orders/**", "methods": ["post"], "mirror_methods": ["POST"]},
                field="routes[0]",
                shadow_names=["v2"],
            ),
            RouteRule.from_mapping({"path": "/**", "mirror": False, "methods": "POST"}, field="r1", shadow_names=[]),
        ]
    )
    orders = table.match("POST", "/orders/1")
    assert orders.allows_method("POST") and not orders.allows_method("GET")
    assert not table.match("POST", "/other").mirror
    assert table.match("GET", "/other") is DEFAULT_RULE
    assert DEFAULT_RULE.allows_method("GET") and DEFAULT_RULE.allows_method("OPTIONS")
    assert not DEFAULT_RULE.allows_method("POST") and not DEFAULT_RULE.allows_method("DELETE")
    # A target matches by its path: the query never decides a route.
    assert table.match_target("POST", "/orders/1?next=/other") is orders
    assert RouteTable([]).match_target("POST", "/orders/1?x=1") is DEFAULT_RULE


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"path": "no-slash"}, "routes[2].path"),
        ({"path": "/x", "bogus": 1}, "routes[2].bogus"),
        ({"methods": ["GE T"]}, "routes[2].methods[0]"),
        ({"sample_percent": 120}, "routes[2].sample_percent"),
        ({"sample_percent": "x"}, "routes[2].sample_percent"),
        ({"shadows": ["nope"]}, "routes[2].shadows[0]"),
        ({"mirror": "yes"}, "routes[2].mirror"),
        ({"grpc": "shop.Catalog/Get"}, "routes[2].grpc"),
        ({"grpc": "/shop/Catalog/Get"}, "routes[2].grpc"),
        ({"grpc": 7}, "routes[2].grpc"),
        ("GET /x", "routes[2]"),
    ],
)
def test_bad_rules_name_the_key(data: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RouteRule.from_mapping(data, field="routes[2]", shadow_names=["v2"])
    assert info.value.field == field


def test_grpc_routes_opt_methods_in_and_match_grpc_calls_only() -> None:
    get = RouteRule.from_mapping({"grpc": "/shop.Catalog/Get*"}, field="routes[0]", shadow_names=["v2"])
    every = RouteRule.from_mapping(
        {"grpc": "/shop.*/*", "shadows": ["v2"], "sample_percent": 5}, field="routes[1]", shadow_names=["v2"]
    )
    posts = RouteRule(name="posts", path="/**", mirror_methods=frozenset({"POST"}))
    assert get.name == "/shop.Catalog/Get*"
    table = RouteTable([get, every])
    assert table.match_grpc("POST", "/shop.Catalog/GetProduct") is get
    assert table.match_grpc("POST", "/shop.Catalog/Chat") is every
    assert table.match_grpc("POST", "/other.Svc/Call") is DEFAULT_RULE
    assert get.allows_method("POST") and not get.allows_method("GET")  # the gRPC pattern is the opt-in
    assert not DEFAULT_RULE.allows_method("POST")  # no route: a gRPC call is not mirrored
    # A gRPC route never matches a request that is not a gRPC call, whatever its path.
    assert table.match_target("POST", "/shop.Catalog/GetProduct") is DEFAULT_RULE
    # Path routes match gRPC calls by their path (and mirror them where they name POST).
    assert RouteTable([posts, get]).match_grpc("POST", "/shop.Catalog/GetProduct") is posts
    narrowed = RouteRule(name="n", grpc="/shop.Catalog/*", mirror_methods=frozenset({"GET"}))
    assert not narrowed.allows_method("POST")
    assert RouteRule(name="all", grpc="/**").matches_grpc("POST", "/a.B/C")
