"""Endpoint templates from id shapes, cardinality and user routes."""

from __future__ import annotations

import pytest

from shadowtap.differ.templates import EndpointTemplater, segment_is_id
from shadowtap.recorder.errors import ConfigError


@pytest.mark.parametrize(
    ("segment", "is_id"),
    [
        ("123", True),
        ("123e4567-e89b-12d3-a456-426614174000", True),
        ("5f3a9c2b", True),
        ("AbC123xyz789QrS456", True),
        ("users", False),
        ("v1", False),
        ("blue-river", False),
        ("deadbeef", False),
    ],
)
def test_shapes(segment: str, is_id: bool) -> None:
    assert segment_is_id(segment) is is_id


def test_shape_ids_and_query_strings() -> None:
    templater = EndpointTemplater()
    assert templater.template("GET", "/users/42/orders/9f86d081884c?x=1") == "GET /users/{id}/orders/{id}"
    assert templater.template("GET", "/") == "GET /"
    assert templater.template("GET", "/api/v1/users") == "GET /api/v1/users"


def test_cardinality_learns_ids_per_position_and_method() -> None:
    templater = EndpointTemplater(max_literal_children=5)
    names = [f"name{chr(97 + i)}x" for i in range(8)]
    requests = [("GET", f"/people/{n}/avatar") for n in names] + [("GET", "/static/app.js"), ("GET", "/static/a.css")]
    templater.learn(requests)
    assert {templater.template(m, p) for m, p in requests[:8]} == {"GET /people/{id}/avatar"}
    assert templater.template("GET", "/static/app.js") == "GET /static/app.js"
    assert templater.template("POST", "/people/namea/avatar") == "POST /people/namea/avatar"


def test_learning_does_not_depend_on_order() -> None:
    requests = [("GET", f"/t/{chr(97 + i)}{chr(97 + j)}/x{j}") for i in range(6) for j in range(6)]
    forward, backward = EndpointTemplater(max_literal_children=4), EndpointTemplater(max_literal_children=4)
    forward.learn(requests)
    backward.learn(requests[::-1])
    assert [forward.template(*r) for r in requests] == [backward.template(*r) for r in requests]


def test_routes_first() -> None:
    templater = EndpointTemplater(["GET /users/{name}", "/files/{path}/raw", "* /any/{x}"])
    assert templater.template("GET", "/users/alice") == "GET /users/{name}"
    assert templater.template("POST", "/users/alice") == "POST /users/alice"
    assert templater.template("PUT", "/files/a.txt/raw") == "PUT /files/{path}/raw"
    assert templater.template("DELETE", "/any/1") == "DELETE /any/{x}"
    with pytest.raises(ConfigError):
        EndpointTemplater(["users/{id}"])
