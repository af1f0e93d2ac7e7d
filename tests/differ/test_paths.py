"""Path spelling and the glob syntax of ignore rules and array options."""

from __future__ import annotations

import pytest

from shadowtap.differ.paths import IdKey, compile_glob, folded_path, full_path


def test_spelling() -> None:
    steps: list[str | int] = ["items", 3, "id", "a b", "x.y"]
    assert full_path("body", steps) == 'body.items[3].id["a b"]["x.y"]'
    assert folded_path("body", steps) == 'body.items[*].id["a b"]["x.y"]'
    assert folded_path("body", []) == "body"


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("body.ts", "body.ts", True),
        ("body.ts", "body.ts.nested", True),
        ("body.ts", "body.tsx", False),
        ("body.*_at", "body.created_at", True),
        ("body.*_at", "body.meta.created_at", False),
        ("body.**.created_at", "body.created_at", True),
        ("body.**.created_at", "body.items[*].created_at", True),
        ("body.**.created_at", "body.a.b.created_at", True),
        ("body.**.created_at", "body.a.not_created_at", False),
        ("body.items[*].id", "body.items[*].id", True),
        ("body.items[*].id", "body.items.id", False),
        ("header.x-*", "header.x-request-id", True),
        ("header.x-*", "header.content-type", False),
        ("**", "status", True),
    ],
)
def test_globs(glob: str, path: str, matches: bool) -> None:
    assert (compile_glob(glob).match(path) is not None) is matches


def test_keys_that_are_ids_fold_in_the_folded_path_only() -> None:
    steps: list[str | int] = ["users", IdKey("u123"), "name"]
    assert folded_path("body", steps) == "body.users.{key}.name"
    assert full_path("body", steps) == "body.users.u123.name"
    assert compile_glob("body.users.*.name").match(folded_path("body", steps))
