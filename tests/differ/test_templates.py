"""Endpoint templates: id shapes, learned sparse positions, user routes, the caps and the overflow."""

from __future__ import annotations

import random
import uuid

import pytest

from shadowtap.differ.templates import _ID_SHAPE, DistinctCounter, EndpointTemplater, segment_is_id, shape_template
from shadowtap.recorder.errors import ConfigError

_NAMES = "account alert badge basket brand campaign card carrier coupon device event invoice locale merchant note offer"
RESOURCES = [f"{name}s" for name in (*_NAMES.split(" "), "plan", "refund", "region", "ticket", "widget", "zone")]
_LETTERS = "abcdefghij"


def slug(n: int) -> str:
    """A non-id-shaped value (letters only): only its cardinality can say it is a parameter."""
    out = []
    for _ in range(5):
        n, r = divmod(n, len(_LETTERS))
        out.append(_LETTERS[r])
    return "doc-" + "".join(out)


@pytest.mark.parametrize(
    ("segment", "is_id"),
    [
        ("123", True),
        ("20261205", True),
        ("2026-12-05", True),
        ("2026-12-05T10:20:30Z", True),
        ("123e4567-e89b-12d3-a456-426614174000", True),
        ("5f3a9c2b", True),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", True),
        ("AbC123xyz789QrS456", True),
        ("{id}", True),
        ("users", False),
        ("v1", False),
        ("blue-river", False),
        ("deadbeef", False),
        ("recent", False),
    ],
)
def test_shapes(segment: str, is_id: bool) -> None:
    assert segment_is_id(segment) is is_id


@pytest.mark.parametrize("seed", range(3))
def test_the_shortcuts_answer_as_the_shape_expression_does(seed: int) -> None:
    # segment_is_id answers digits-only and letters-only segments without _ID_SHAPE; for every
    # kind of segment it must say what the expression says.
    rng = random.Random(seed)
    alphabets = ["0123456789", "abcdef", "ABCDEFabcdef", "xyzXYZ", "abcdef0123456789-", "ä٣²_-{}:T.Z+"]
    segments = ["", "abcdefabcdefabcdefabcdefabcdefab", "abcdefab-abcd-abcd-abcd-abcdefabcdef", "٣٤٥", "²³"]
    for _ in range(3000):
        alphabet = rng.choice(alphabets)
        segments.append("".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 7, 8, 15, 16, 31, 32, 36, 40]))))
    for segment in segments:
        assert segment_is_id(segment) is (_ID_SHAPE.match(segment) is not None), segment


def test_shape_ids_and_query_strings() -> None:
    templater = EndpointTemplater()
    assert templater.template("GET", "/users/42/orders/9f86d081884c?x=1") == "GET /users/{id}/orders/{id}"
    assert templater.template("GET", "/") == "GET /"
    assert templater.template("GET", "/api/v1/users") == "GET /api/v1/users"
    assert templater.observe_template("GET", "/days/2026-12-05/summary") == "GET /days/{id}/summary"
    assert shape_template("GET", "/users/42?x=1") == "GET /users/{id}"


def test_grpc_method_paths_stay_literal() -> None:
    templater = EndpointTemplater(max_literal_children=2, min_observations=4)
    for i in range(500):
        templater.observe("POST", f"/shop.Catalog/GetProduct{i}")
    assert templater.template("POST", "/shop.Catalog/GetProduct") == "POST /shop.Catalog/GetProduct"
    assert templater.template("POST", "/grpc.health.v1.Health/Check") == "POST /grpc.health.v1.Health/Check"
    assert shape_template("POST", "/shop.Catalog/GetProduct") == "POST /shop.Catalog/GetProduct"


def test_the_grpc_check_answers_as_its_regular_expression_does() -> None:
    from shadowtap.differ.templates import _GRPC_METHOD, _grpc_method

    paths = ["/shop.Catalog/GetProduct", "/grpc.health.v1.Health/Check", "/a.b/c", "/a.b/c/d", "/items/5",
             "/v1.2/users", "/.x/y", "/a./b", "/a.b/", "//a.b", "/a.b/c.d", "/1a.b/c", "/a.b/1c", "a.b/c",
             "/a.b/c\n", "/é.b/c", "/_a._b/_c", "/shop.Catalog/GetProduct/", ""]  # fmt: skip
    for path in paths:
        assert _grpc_method(path) == (_GRPC_METHOD.match(path) is not None), path
    assert sum(_grpc_method(path) for path in paths) == 4


def test_many_real_resources_each_hit_often_stay_apart() -> None:
    """22 top-level resources (more than any sibling count would allow) are 22 endpoints."""
    templater = EndpointTemplater()
    rnd = random.Random(7)
    for _ in range(5_000):
        templater.observe("GET", f"/api/v1/{rnd.choice(RESOURCES)}")
    assert {templater.template("GET", f"/api/v1/{r}") for r in RESOURCES} == {f"GET /api/v1/{r}" for r in RESOURCES}
    assert templater.generation == 0


def test_a_busy_literal_stays_apart_from_a_long_tail_of_sparse_values() -> None:
    templater = EndpointTemplater()
    for i in range(3_000):
        templater.observe("GET", "/files/recent")
        if i % 3 == 0:
            templater.observe("GET", f"/files/{slug(i)}")
    assert templater.template("GET", "/files/recent") == "GET /files/recent"
    assert templater.template("GET", f"/files/{slug(5)}") == "GET /files/{id}"
    assert templater.template("GET", "/files/never-seen") == "GET /files/{id}"
    assert templater.template("GET", "/files/recent/x") == "GET /files/recent/x"


def test_sparse_values_hit_twice_still_fold_and_stable_ones_never_do() -> None:
    """Ids fetched twice each (a GET then a refresh) are sparse; a few values hit forever are not."""
    twice, stable = EndpointTemplater(), EndpointTemplater()
    for i in range(1_000):
        for _ in range(2):
            twice.observe("GET", f"/people/{slug(i)}/avatar")
        stable.observe("GET", f"/people/{slug(i % 12)}/avatar")
    assert twice.template("GET", f"/people/{slug(3)}/avatar") == "GET /people/{id}/avatar"
    assert stable.template("GET", f"/people/{slug(3)}/avatar") == f"GET /people/{slug(3)}/avatar"


def test_learning_is_per_position_and_method() -> None:
    templater = EndpointTemplater()
    for i in range(400):
        templater.observe("GET", f"/people/{slug(i)}")
        templater.observe("GET", "/static/app.js")
    assert templater.template("GET", "/people/alice") == "GET /people/{id}"
    assert templater.template("GET", "/static/app.js") == "GET /static/app.js"
    assert templater.template("POST", f"/people/{slug(1)}") == f"POST /people/{slug(1)}"


def test_folding_is_monotone_and_earlier_templates_retemplate_to_the_current_one() -> None:
    templater = EndpointTemplater()
    early = [templater.observe_template("GET", f"/files/{slug(i)}/raw") for i in range(10)]
    assert early[0] == f"GET /files/{slug(0)}/raw"
    generation = templater.generation
    for i in range(10, 500):
        templater.observe("GET", f"/files/{slug(i)}/raw")
    assert templater.generation > generation
    assert {templater.retemplate(e) for e in early} == {"GET /files/{id}/raw"}
    assert templater.retemplate("GET /files/{id}/raw") == "GET /files/{id}/raw"


def test_learning_does_not_depend_on_order() -> None:
    requests = [("GET", f"/t/{slug(i)}/x{j}") for i in range(150) for j in range(3)]
    forward, backward = EndpointTemplater(), EndpointTemplater()
    forward.learn(requests)
    backward.learn(requests[::-1])
    assert {forward.template(*r) for r in requests} == {backward.template(*r) for r in requests}
    assert {forward.template(*r) for r in requests} == {"GET /t/{id}/x0", "GET /t/{id}/x1", "GET /t/{id}/x2"}


def test_routes_first() -> None:
    templater = EndpointTemplater(["GET /users/{name}", "/files/{path}/raw", "* /any/{x}"])
    assert templater.template("GET", "/users/alice") == "GET /users/{name}"
    assert templater.template("POST", "/users/alice") == "POST /users/alice"
    assert templater.template("PUT", "/files/a.txt/raw") == "PUT /files/{path}/raw"
    assert templater.template("DELETE", "/any/1") == "DELETE /any/{x}"
    assert templater.retemplate("GET /users/{name}") == "GET /users/{name}"
    with pytest.raises(ConfigError):
        EndpointTemplater(["users/{id}"])


def test_past_the_template_cap_paths_go_to_an_overflow_bucket_that_counts_them() -> None:
    templater = EndpointTemplater(max_templates=10)
    # Stable literal paths (each hit often), more than the cap allows.
    for _ in range(5):
        for i in range(30):
            templater.observe("GET", f"/r{slug(i)}")
    kept = {templater.template("GET", f"/r{slug(i)}") for i in range(30)}
    assert len(kept - {"GET {overflow}"}) == 10 and "GET {overflow}" in kept
    assert templater.observe_template("GET", f"/r{slug(29)}") == "GET {overflow}"
    assert templater.overflow() == {"GET": (20, True)}
    assert templater.template_count() == 10
    # Another method has its own cap.
    assert templater.observe_template("PUT", "/a") == "PUT /a"


def test_templates_that_folded_free_their_places_under_the_cap() -> None:
    templater = EndpointTemplater(max_templates=20)
    for i in range(2_000):
        templater.observe("GET", f"/files/{slug(i)}")
    templater.observe("GET", "/healthz")
    assert templater.template("GET", "/healthz") == "GET /healthz"
    assert templater.template("GET", f"/files/{slug(3)}") == "GET /files/{id}"


def test_memory_per_position_is_bounded() -> None:
    templater = EndpointTemplater(max_values=32, max_positions=50)
    for i in range(20_000):
        templater.observe("GET", f"/p/{slug(i)}/{slug(i + 1)}/{slug(i + 2)}")
    root = templater._roots["GET"]
    stack = [root]
    positions = 0
    while stack:
        pos = stack.pop()
        positions += 1
        assert pos.counts is None or len(pos.counts) <= 32
        stack.extend(pos.children.values())
    assert positions <= 51
    assert templater.template("GET", f"/p/{slug(1)}/{slug(2)}/{slug(3)}") == "GET /p/{id}/{id}/{id}"


def test_export_and_absorb_fold_another_process_the_same_way() -> None:
    worker = EndpointTemplater()
    for i in range(500):
        worker.observe("GET", f"/files/{slug(i)}")
        worker.observe("GET", "/files/recent")
    parent = EndpointTemplater()
    assert parent.template("GET", "/files/doc-abc") == "GET /files/doc-abc"
    parent.absorb(worker.export())
    assert parent.template("GET", "/files/doc-abc") == "GET /files/{id}"
    assert parent.template("GET", "/files/recent") == "GET /files/recent"


def test_distinct_counter_is_exact_then_estimates_and_merges() -> None:
    small = DistinctCounter()
    for i in range(500):
        small.add(f"/p/{i % 300}")
    assert (small.count(), small.exact) == (300, True)
    big, other = DistinctCounter(), DistinctCounter()
    for i in range(50_000):
        (big if i % 2 else other).add(str(uuid.UUID(int=i)))
    big.merge(DistinctCounter.decode(other.encode()))
    assert not big.exact and 45_000 < big.count() < 55_000


def test_a_busy_literal_beside_id_shaped_values_stays_apart() -> None:
    templater = EndpointTemplater()
    for i in range(2_000):
        templater.observe("GET", f"/users/{i}")
        if i % 5 == 0:
            templater.observe("GET", "/users/me")
    assert templater.template("GET", "/users/me") == "GET /users/me"
    assert templater.template("GET", "/users/alice") == "GET /users/{id}"


def test_distinct_paths_with_their_hit_counts_learn_like_the_traffic() -> None:
    """Relearning from a table of distinct paths: with their counts, the busy literal stays apart."""
    templater = EndpointTemplater()
    for i in range(500):
        templater.observe("GET", f"/files/{slug(i)}", hits=1 + i % 2)
    templater.observe("GET", "/files/recent", hits=800)
    for resource in RESOURCES:
        templater.observe("GET", f"/api/v1/{resource}", hits=40)
    assert templater.template("GET", "/files/recent") == "GET /files/recent"
    assert templater.template("GET", f"/files/{slug(7)}") == "GET /files/{id}"
    assert templater.template("GET", f"/api/v1/{RESOURCES[0]}") == f"GET /api/v1/{RESOURCES[0]}"


def test_a_literal_that_gets_busy_after_its_position_folded_becomes_a_template_of_its_own() -> None:
    templater = EndpointTemplater()
    for i in range(1_000):
        templater.observe("GET", f"/files/{slug(i)}")
    assert templater.template("GET", "/files/recent") == "GET /files/{id}"
    seen = [templater.observe_template("GET", "/files/recent") if i % 4 == 0 else
            templater.observe_template("GET", f"/files/{slug(5_000 + i)}") for i in range(1_000)]  # fmt: skip
    assert seen[0] == "GET /files/{id}" and seen[-4] == "GET /files/recent"
    # The long tail is never promoted, however long it runs.
    assert {e for e in seen if e != "GET /files/recent"} == {"GET /files/{id}"}
    assert templater.template("GET", "/files/recent") == "GET /files/recent"


def test_a_literal_at_one_percent_beside_a_long_tail_is_found_and_a_rarer_one_or_the_tail_is_not() -> None:
    """A million ids in the path and ``/users/me`` once in 84 requests: too rare to stand out when
    the position folds early, it becomes a template of its own from the hits counted since; a value
    at 0.25 %, or values repeated a few times each, stay ``{id}``."""
    templater = EndpointTemplater()
    seen: list[str] = []
    for i in range(120_000):
        if i % 84 == 0:
            seen.append(templater.observe_template("GET", "/users/me"))
        elif i % 400 == 1:
            seen.append(templater.observe_template("GET", "/users/rarely"))
        else:
            # Each sparse value five times, far apart: the tail repeats, but no value stands out.
            seen.append(templater.observe_template("GET", f"/users/{slug(i % 24_000)}"))
    assert seen[0] == "GET /users/me" and "GET /users/{id}" in seen[:1_000]  # folded early, "me" then rare
    assert templater.template("GET", "/users/me") == "GET /users/me"
    assert templater.template("GET", "/users/rarely") == "GET /users/{id}"
    # Once folded, nothing of the tail ever got a template of its own.
    assert set(seen[1_000:]) == {"GET /users/{id}", "GET /users/me"}


def test_values_hit_alike_are_never_promoted_out_of_the_parameter_they_folded_into() -> None:
    """150 slugs hit alike (0.7 % of the requests each, over the 0.5 % share) fold while still
    new; none is later taken for a busy literal, as none stands out from the average value."""
    templater = EndpointTemplater()
    rnd = random.Random(3)
    seen = [templater.observe_template("GET", f"/products/{slug(rnd.randrange(150))}") for _ in range(60_000)]
    assert "GET /products/{id}" in seen[:1_000]
    assert set(seen[30_000:]) == set(seen[1_000:2_000])  # what the fold kept apart, and no more


def test_more_values_hit_alike_than_a_position_counts_fold_together() -> None:
    """130 values hit alike, two more than a position counts: the two met past the full count fold
    the position, and none of the 130 stays apart (none is busier than the others)."""
    templater = EndpointTemplater()
    rnd = random.Random(3)
    seen = [templater.observe_template("GET", f"/products/{slug(rnd.randrange(130))}") for _ in range(30_000)]
    folded = seen.index("GET /products/{id}")
    assert folded > 5_000  # by the values past the full count, not by early growth
    assert set(seen[folded:]) == {"GET /products/{id}"}


def test_settling_a_table_of_distinct_paths_with_their_counts_keeps_the_busy_literals_alone() -> None:
    """Learned from distinct paths once each, ``/users/me`` is one row among 20,000 ids and
    ``/files/recent`` one among 2,000 slugs; the table's counts then keep both apart. The slugs,
    seen five times each and early in the table, are not kept: the share is of the position's
    whole count, not of the rows read so far."""
    rows = [("GET", f"/files/{slug(i)}", 5) for i in range(2_000)]  # "doc-..." sorts before "recent"
    rows += [("GET", "/files/recent", 200), ("GET", "/users/me", 300)]
    rows += [("GET", f"/users/{i}", 1) for i in range(20_000)]
    rows.sort()
    templater = EndpointTemplater()
    templater.learn([(method, path) for method, path, _ in rows])
    assert templater.template("GET", "/users/me") == "GET /users/{id}"
    assert templater.template("GET", "/files/recent") == "GET /files/{id}"
    generation = templater.generation
    assert templater.settle(lambda: iter(rows)) == 2
    assert templater.generation > generation
    assert {templater.template(m, p) for m, p, _ in rows} == {
        "GET /users/{id}", "GET /users/me", "GET /files/{id}", "GET /files/recent"
    }  # fmt: skip
    assert templater.settle(lambda: iter(rows)) == 0  # settled: nothing more to keep


def test_a_very_deep_path_costs_a_bounded_number_of_positions() -> None:
    templater = EndpointTemplater()
    deep = "/" + "/".join(f"level{chr(97 + i % 26)}" for i in range(5_000))
    assert templater.observe_template("GET", deep) == f"GET {deep}"
    for i in range(500):
        templater.observe("GET", f"/{slug(i)}/x")  # the root position folds, dropping the deep subtree
    assert templater.template("GET", "/anything/x") == "GET /{id}/x"
    assert templater._positions <= 40


def test_made_up_methods_past_a_cap_share_the_overflow() -> None:
    templater = EndpointTemplater()
    for i in range(100):
        templater.observe(f"M{chr(65 + i % 26)}{i}", "/a")
    assert templater.template("MA0", "/a") == "MA0 /a"
    assert templater.observe_template("MZ99", "/a") == "MZ99 {overflow}"
    assert len(templater._roots) == 32 and templater.overflow() == {"*": (1, True)}
