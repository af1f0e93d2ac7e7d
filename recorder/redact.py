"""Redaction of secrets in exchanges before they reach a tape: keyed hash or removal, by rule.

Secrets are replaced by ``redacted:hmac:<hex>`` (HMAC-SHA256 under a per-tape key, truncated), so
equal secrets still compare equal across exchanges and the differ can still tell them apart, but
the tape never holds them. Rules cover header values, query parameters and JSON body fields.
This module must never write a secret anywhere, never touch a content-encoded or truncated body
(it cannot rewrite it faithfully; see docs/tape-format.md), and never hash an already redacted
value twice (merging redacted tapes keeps their hashes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import operator
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote_plus

from recorder.errors import ConfigError, TapeWriteError
from recorder.model import Exchange, Failure, Headers, Outcome, Request, Response

__all__ = [
    "DEFAULT_SECRET_HEADERS",
    "REDACTED_PREFIX",
    "RedactionRules",
    "Redactor",
    "resolve_redaction_key",
]

#: Header values hashed by default (DESIGN.md); names are matched case-insensitively.
DEFAULT_SECRET_HEADERS: Final = ("authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key")
#: Every redacted value starts with this; values that already do are left alone.
REDACTED_PREFIX: Final = "redacted:"
_HASH_PREFIX: Final = "redacted:hmac:"
_REDACTED_PREFIX_BYTES: Final = REDACTED_PREFIX.encode()
#: Bound on the secret -> hash cache: a few hundred KiB at most, far more than the distinct
#: credentials a sidecar sees in a second.
_CACHE_ENTRIES: Final = 4096
#: Bound on the (header, value) -> redacted value cache: values are larger (cookies run to a few
#: KiB), so fewer entries: at most a few MiB.
_VALUE_CACHE_ENTRIES: Final = 1024
# What happens to a header; compared by identity in the hot loop.
_KEEP: Final = "keep"
_HASH: Final = "hash"
_REMOVE: Final = "remove"
# Headers whose value is a scheme then a credential: the scheme is kept (the differ may care).
_SCHEME_HEADERS: Final = frozenset({b"authorization", b"proxy-authorization"})
_COOKIE: Final = b"cookie"
_SET_COOKIE: Final = b"set-cookie"
_NAME_LISTS: Final = (
    "hash_headers",
    "remove_headers",
    "hash_query_params",
    "remove_query_params",
    "hash_json_fields",
    "remove_json_fields",
)


def _check_names(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError("must be a list of names", field=key)
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"names must be non-empty strings, got {name!r}", field=key)
    return names


@dataclass(frozen=True, slots=True)
class RedactionRules:
    """What to redact, and where the hashing key comes from.

    Header and query parameter names match case-insensitively (headers) or exactly (query
    parameters); JSON field names match an object key at any depth of a JSON body. ``hash_*``
    replaces the value with a keyed hash, ``remove_*`` deletes the header, parameter or field.
    The key is the UTF-8 of environment variable ``key_env`` when set and non-empty, else the file
    ``key_file_name`` in the tape directory (generated, mode 0600, on first use).
    """

    hash_headers: tuple[str, ...] = DEFAULT_SECRET_HEADERS
    remove_headers: tuple[str, ...] = ()
    hash_query_params: tuple[str, ...] = ()
    remove_query_params: tuple[str, ...] = ()
    hash_json_fields: tuple[str, ...] = ()
    remove_json_fields: tuple[str, ...] = ()
    key_env: str = "SHADOWTAP_REDACTION_KEY"
    key_file_name: str = "redaction.key"
    #: Hex digits of the HMAC kept: 16 (64 bits) keeps tapes small and collisions negligible.
    hash_hex_chars: int = 16

    def __post_init__(self) -> None:
        for name in _NAME_LISTS:
            object.__setattr__(self, name, _check_names(getattr(self, name), f"redaction.{name}"))
        for hashed, removed, what, fold_case in (
            ("hash_headers", "remove_headers", "header", True),
            ("hash_query_params", "remove_query_params", "query parameter", False),
            ("hash_json_fields", "remove_json_fields", "JSON field", False),
        ):
            hashed_names = {n.lower() if fold_case else n for n in getattr(self, hashed)}
            both = hashed_names & {n.lower() if fold_case else n for n in getattr(self, removed)}
            if both:
                message = f"{what} {sorted(both)[0]!r} is both hashed and removed"
                raise ConfigError(message, field=f"redaction.{removed}")
        if not isinstance(self.hash_hex_chars, int) or not 8 <= self.hash_hex_chars <= 64:
            raise ConfigError("must be an integer from 8 to 64", field="redaction.hash_hex_chars")
        if not self.key_env:
            raise ConfigError("must name an environment variable", field="redaction.key_env")
        if not self.key_file_name or "/" in self.key_file_name or self.key_file_name.startswith("."):
            raise ConfigError("must be a plain file name", field="redaction.key_file_name")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RedactionRules:
        """Rules from a config section; unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in mapping:
            if key not in known:
                raise ConfigError("unknown redaction setting", field=f"redaction.{key}")
        return cls(**dict(mapping))


def resolve_redaction_key(rules: RedactionRules, directory: Path) -> bytes:
    """The HMAC key: from the environment, else the key file beside the tape (created if absent)."""
    from_env = os.environ.get(rules.key_env, "")
    if from_env:
        return from_env.encode()
    key_path = directory / rules.key_file_name
    try:
        return _read_key(key_path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TapeWriteError(f"cannot read redaction key: {exc.strerror or exc}", path=str(key_path)) from exc
    # Write a temporary file then hard-link it into place: the key appears complete or not at all,
    # and when two writers race, both end up using the one that won.
    tmp_path = directory / f".{rules.key_file_name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp_path, key_path)
        return _read_key(key_path)
    except OSError as exc:
        raise TapeWriteError(f"cannot create redaction key: {exc.strerror or exc}", path=str(key_path)) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if not key:
        raise TapeWriteError("redaction key file is empty", path=str(path))
    return key


def _field_getter(cls: type[Any]) -> tuple[Callable[[Any], list[Any]], dict[str, int]]:
    """All init fields of a dataclass as a list, and each name's position.

    Rebuilding a model object positionally from this list costs a third of ``dataclasses.replace``
    (the redactor rebuilds most exchanges) and still carries fields added to the model later.
    """
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    getter = operator.attrgetter(*names)
    return (lambda obj: list(getter(obj))), {name: i for i, name in enumerate(names)}


_exchange_values, _EXCHANGE_AT = _field_getter(Exchange)
_EXCHANGE_REQUEST, _EXCHANGE_PRIMARY, _EXCHANGE_SHADOWS = (_EXCHANGE_AT[n] for n in ("request", "primary", "shadows"))
_request_values, _REQUEST_AT = _field_getter(Request)
_REQUEST_TARGET, _REQUEST_HEADERS, _REQUEST_BODY = (_REQUEST_AT[n] for n in ("target", "headers", "body"))
_response_values, _RESPONSE_AT = _field_getter(Response)
_RESPONSE_HEADERS, _RESPONSE_BODY = _RESPONSE_AT["headers"], _RESPONSE_AT["body"]


# Positions in the exchange record array (docs/tape-format.md, "Exchange record").
_WIRE_REQUEST: Final = 3
_WIRE_PRIMARY: Final = 4
_WIRE_SHADOWS: Final = 5
_WIRE_REQ_TARGET: Final = 1
_WIRE_REQ_HEADERS: Final = 2
_WIRE_REQ_BODY: Final = 3
_WIRE_REQ_TRUNCATED: Final = 7
_WIRE_TAG_RESPONSE: Final = 0
_WIRE_RESP_HEADERS: Final = 3
_WIRE_RESP_BODY: Final = 4
_WIRE_RESP_TRUNCATED: Final = 6


class Redactor:
    """Applies ``RedactionRules`` under one key. Returns the same object when nothing matched."""

    __slots__ = (
        "_hash_chars",
        "_hash_headers",
        "_hash_json",
        "_hash_query",
        "_key",
        "_remove_headers",
        "_remove_json",
        "_remove_query",
        "_query_names",
        "_json_names",
        "_cache",
        "_header_actions",
        "_value_cache",
    )

    def __init__(self, rules: RedactionRules, key: bytes) -> None:
        self._key = key
        self._hash_chars = rules.hash_hex_chars
        self._hash_headers = frozenset(n.lower().encode() for n in rules.hash_headers)
        self._remove_headers = frozenset(n.lower().encode() for n in rules.remove_headers)
        self._hash_query = frozenset(rules.hash_query_params)
        self._remove_query = frozenset(rules.remove_query_params)
        self._query_names = self._hash_query | self._remove_query
        self._hash_json = frozenset(rules.hash_json_fields)
        self._remove_json = frozenset(rules.remove_json_fields)
        self._json_names = self._hash_json | self._remove_json
        # Secret -> hash. The same few tokens and cookies recur in most traffic; an HMAC costs more
        # than the rest of encoding an exchange. Bounded by clearing when full.
        self._cache: dict[bytes, bytes] = {}
        # Header name as sent -> action, and (name, value) -> redacted value; bounded like _cache.
        self._header_actions: dict[bytes, str] = {}
        self._value_cache: dict[tuple[bytes, bytes], bytes] = {}

    def hash_bytes(self, value: bytes) -> bytes:
        """The redacted form of ``value`` (already redacted values pass through unchanged)."""
        cached = self._cache.get(value)
        if cached is not None:
            return cached
        if value.startswith(_REDACTED_PREFIX_BYTES):
            return value
        digest = hmac.new(self._key, value, hashlib.sha256).hexdigest()[: self._hash_chars]
        hashed = f"{_HASH_PREFIX}{digest}".encode()
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[value] = hashed
        return hashed

    def redact(self, ex: Exchange) -> Exchange:
        request = self._request(ex.request)
        primary = None if ex.primary is None else self._outcome(ex.primary)
        shadows: Mapping[str, Outcome] = ex.shadows
        if shadows:
            redacted = {name: self._outcome(o) for name, o in shadows.items()}
            if any(redacted[name] is not o for name, o in shadows.items()):
                shadows = redacted
        if request is ex.request and primary is ex.primary and shadows is ex.shadows:
            return ex
        values = _exchange_values(ex)
        values[_EXCHANGE_REQUEST], values[_EXCHANGE_PRIMARY], values[_EXCHANGE_SHADOWS] = request, primary, shadows
        return Exchange(*values)

    def redact_record(self, record: list[Any]) -> None:
        """Redact an exchange record array (``exchange_to_wire``'s fresh lists) in place.

        The tape writers use this: it rewrites only the parts that change, where rebuilding the
        frozen model objects would cost more than the rest of encoding. Positions are the record
        layout in docs/tape-format.md, which never changes meaning.
        """
        request = record[_WIRE_REQUEST]
        headers = self._headers(request[_WIRE_REQ_HEADERS])
        if self._query_names and "?" in request[_WIRE_REQ_TARGET]:
            request[_WIRE_REQ_TARGET] = self._target(request[_WIRE_REQ_TARGET])
        if self._json_names:
            request[_WIRE_REQ_BODY], headers = self._json_body(
                request[_WIRE_REQ_BODY], headers, request[_WIRE_REQ_TRUNCATED]
            )
        request[_WIRE_REQ_HEADERS] = headers
        primary = record[_WIRE_PRIMARY]
        if primary is not None:
            self._outcome_record(primary)
        for outcome in record[_WIRE_SHADOWS].values():
            self._outcome_record(outcome)

    def _outcome_record(self, outcome: list[Any]) -> None:
        if outcome[0] != _WIRE_TAG_RESPONSE:
            return
        headers = self._headers(outcome[_WIRE_RESP_HEADERS])
        if self._json_names:
            outcome[_WIRE_RESP_BODY], headers = self._json_body(
                outcome[_WIRE_RESP_BODY], headers, outcome[_WIRE_RESP_TRUNCATED]
            )
        outcome[_WIRE_RESP_HEADERS] = headers

    # --- parts ---------------------------------------------------------------------------------

    def _request(self, req: Request) -> Request:
        headers = self._headers(req.headers)
        target = self._target(req.target) if self._query_names and "?" in req.target else req.target
        body, headers = self._json_body(req.body, headers, req.truncated_from)
        if headers is req.headers and target is req.target and body is req.body:
            return req
        values = _request_values(req)
        values[_REQUEST_TARGET], values[_REQUEST_HEADERS], values[_REQUEST_BODY] = target, headers, body
        return Request(*values)

    def _outcome(self, outcome: Outcome) -> Outcome:
        if isinstance(outcome, Failure):
            return outcome
        headers = self._headers(outcome.headers)
        body, headers = self._json_body(outcome.body, headers, outcome.truncated_from)
        if headers is outcome.headers and body is outcome.body:
            return outcome
        values = _response_values(outcome)
        values[_RESPONSE_HEADERS], values[_RESPONSE_BODY] = headers, body
        return Response(*values)

    def _headers(self, headers: Headers) -> Headers:
        # Runs for every header of every exchange written: one dict lookup per header name as
        # sent (no lower-casing) decides it, and whole redacted values are cached.
        actions = self._header_actions
        for key, _ in headers:
            action = actions.get(key)
            if action is None:
                action = self._learn_header(key)
            if action is not _KEEP:
                break
        else:
            return headers
        out: list[tuple[bytes, bytes]] = []
        values = self._value_cache
        for key, value in headers:
            action = actions.get(key)
            if action is None:
                action = self._learn_header(key)
            if action is _REMOVE:
                continue
            if action is _HASH:
                redacted = values.get((key, value))
                if redacted is None:
                    redacted = self._header_value(key.lower(), value)
                    if len(values) >= _VALUE_CACHE_ENTRIES:
                        values.clear()
                    values[(key, value)] = redacted
                value = redacted
            out.append((key, value))
        return tuple(out)

    def _learn_header(self, name: bytes) -> str:
        lower = name.lower()
        action = _REMOVE if lower in self._remove_headers else _HASH if lower in self._hash_headers else _KEEP
        if len(self._header_actions) >= _CACHE_ENTRIES:
            self._header_actions.clear()
        self._header_actions[name] = action
        return action

    def _header_value(self, lower_name: bytes, value: bytes) -> bytes:
        if lower_name == _COOKIE:
            # Keep cookie names so the differ can still say which cookie changed.
            return b"; ".join(self._cookie_pair(p.strip()) for p in value.split(b";"))
        if lower_name == _SET_COOKIE:
            first, sep, attributes = value.partition(b";")
            return self._cookie_pair(first.strip()) + sep + attributes
        if lower_name in _SCHEME_HEADERS:
            scheme, sep, credential = value.partition(b" ")
            if sep and credential:
                return scheme + sep + self.hash_bytes(credential)
        return self.hash_bytes(value)

    def _cookie_pair(self, pair: bytes) -> bytes:
        name, sep, value = pair.partition(b"=")
        if not sep:
            return self.hash_bytes(pair)
        return name + sep + self.hash_bytes(value)

    def _target(self, target: str) -> str:
        path, _, query = target.partition("?")
        query, _, fragment = query.partition("#")
        pieces: list[str] = []
        changed = False
        for piece in query.split("&"):
            name, sep, value = piece.partition("=")
            plain = unquote_plus(name)
            if plain in self._remove_query:
                changed = True
                continue
            if plain in self._hash_query and sep:
                hashed = self.hash_bytes(value.encode()).decode()
                changed = changed or hashed != value
                piece = f"{name}={hashed}"
            pieces.append(piece)
        if not changed:
            return target
        rebuilt = f"{path}?{'&'.join(pieces)}" if pieces else path
        return f"{rebuilt}#{fragment}" if fragment else rebuilt

    def _json_body(self, body: bytes, headers: Headers, truncated_from: int | None) -> tuple[bytes, Headers]:
        if not self._json_names or not body or truncated_from is not None:
            return body, headers
        content_type = b""
        for key, value in headers:
            lower = key.lower()
            if lower == b"content-type":
                content_type = value.lower()
            elif lower == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                return body, headers
        if b"json" not in content_type:
            return body, headers
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body, headers
        redacted, changed = self._json_value(document)
        if not changed:
            return body, headers
        new_body = json.dumps(redacted, ensure_ascii=False, separators=(",", ":")).encode()
        length = str(len(new_body)).encode()
        new_headers = tuple((k, length) if k.lower() == b"content-length" else (k, v) for k, v in headers)
        return new_body, new_headers

    def _json_value(self, value: Any) -> tuple[Any, bool]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            changed = False
            for key, item in value.items():
                if key in self._remove_json:
                    changed = True
                    continue
                if key in self._hash_json:
                    hashed = self._json_hash(item)
                    changed = changed or hashed != item
                    out[key] = hashed
                    continue
                new_item, item_changed = self._json_value(item)
                changed = changed or item_changed
                out[key] = new_item
            return out, changed
        if isinstance(value, list):
            items = [self._json_value(item) for item in value]
            return [item for item, _ in items], any(c for _, c in items)
        return value, False

    def _json_hash(self, value: Any) -> str:
        raw = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        return self.hash_bytes(raw.encode()).decode()
