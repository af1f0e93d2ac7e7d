"""Redaction of secrets in exchanges before they reach a tape or a shadow: keyed hash or removal, by rule.

Rules name header fields, query parameters, JSON body fields (a name at any depth, or a path from
the document root) and form fields (``application/x-www-form-urlencoded`` and ``multipart/form-data``).
Each named value is replaced by ``redacted:hmac:<hex>`` (HMAC-SHA256 under a key kept outside the
tape directory, truncated), so equal secrets still compare equal across exchanges and runs and the
differ can still tell them apart, or is removed, or (to carve a name out of the defaults) kept.
Built-in defaults cover the common credential names, matched exactly and case-insensitively, never
as substrings (``token`` is a secret, ``tokenizer`` is not). The proxy applies the same compiled
rules to the copies it mirrors to shadows (``Redactor.redact_target`` / ``redact_request_body``),
where a shadow may swap in its own credentials instead.

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
import logging
import operator
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote_plus, unquote_plus

from shadowtap.recorder.errors import ConfigError, TapeWriteError
from shadowtap.recorder.model import Exchange, Failure, Headers, Outcome, Request, Response

__all__ = [
    "ACTIONS",
    "DEFAULT_KEY_ENV",
    "DEFAULT_SECRET_FIELDS",
    "DEFAULT_SECRET_HEADERS",
    "KEY_FILE_NAME",
    "REDACTED_PREFIX",
    "RULE_KINDS",
    "RedactionRules",
    "Redactor",
    "default_key_path",
    "parse_json_path",
    "resolve_redaction_key",
]

log = logging.getLogger(__name__)

HASH: Final = "hash"
REMOVE: Final = "remove"
KEEP: Final = "keep"
#: What a rule does with the value it names.
ACTIONS: Final = (HASH, REMOVE, KEEP)
#: The kinds of rule, as config keys.
RULE_KINDS: Final = ("headers", "query_params", "json_fields", "form_fields")

#: Header values hashed by default; names are matched case-insensitively, exactly.
DEFAULT_SECRET_HEADERS: Final = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token",
    "x-access-token", "x-refresh-token", "x-session-token", "x-csrf-token", "x-xsrf-token",
    "x-amz-security-token",
)  # fmt: skip
#: Query parameters, JSON fields and form fields hashed by default: exact names, any case (so
#: ``accessToken`` is ``accesstoken``), never substrings: ``tokenizer`` and ``password_hint`` stay.
DEFAULT_SECRET_FIELDS: Final = (
    "password", "passwd", "passphrase", "secret", "client_secret", "clientsecret", "token", "access_token",
    "accesstoken", "refresh_token", "refreshtoken", "id_token", "idtoken", "auth_token", "authtoken",
    "session_token", "sessiontoken", "api_key", "apikey", "api-key", "private_key", "privatekey",
)  # fmt: skip
_DEFAULTS: Final = {
    "headers": DEFAULT_SECRET_HEADERS,
    "query_params": DEFAULT_SECRET_FIELDS,
    "json_fields": DEFAULT_SECRET_FIELDS,
    "form_fields": DEFAULT_SECRET_FIELDS,
}
#: Config keys of the first rule format: one list per kind and action.
_LEGACY_KEYS: Final = {
    "hash_headers": ("headers", HASH),
    "remove_headers": ("headers", REMOVE),
    "hash_query_params": ("query_params", HASH),
    "remove_query_params": ("query_params", REMOVE),
    "hash_json_fields": ("json_fields", HASH),
    "remove_json_fields": ("json_fields", REMOVE),
}
#: The environment variable holding the key, unless the rules name another.
DEFAULT_KEY_ENV: Final = "SHADOWTAP_REDACTION_KEY"
#: The key file's name in the per-user state directory (and where older versions kept it: in the tape).
KEY_FILE_NAME: Final = "redaction.key"
#: A JSON path token matching every element of an array (``items[*].card``).
ANY_INDEX: Final = "[*]"

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
_KEEP_HEADER: Final = "keep"
# Headers whose value is a scheme then a credential: the scheme is kept (the differ may care).
_SCHEME_HEADERS: Final = frozenset({b"authorization", b"proxy-authorization"})
_COOKIE: Final = b"cookie"
_SET_COOKIE: Final = b"set-cookie"
_HEADER_NAME_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# One dotted segment of a JSON path: a key (no dots or brackets), then any number of ``[*]``.
_PATH_SEGMENT_RE: Final = re.compile(r"([^.\[\]]*)((?:\[\*\])*)\Z")
_BOUNDARY_RE: Final = re.compile(rb'(?i);\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))')
# The part's field name; ``;\s*name`` never matches ``filename``.
_PART_NAME_RE: Final = re.compile(rb'(?im)^content-disposition:[^\r\n]*?;\s*name\s*=\s*(?:"([^"]*)"|([^;\s]*))')
_FORM_TYPE: Final = b"application/x-www-form-urlencoded"
_MULTIPART_TYPE: Final = b"multipart/form-data"


def parse_json_path(path: str, *, field: str = "json_fields") -> tuple[str, ...]:
    """``user.password`` -> ``("user", "password")``; ``items[*].card`` -> ``("items", "[*]", "card")``.

    A path of one name (``password``) matches that key at any depth; a longer one matches from the
    document root. Keys cannot hold ``.``, ``[`` or ``]``; ``[*]`` is the only index."""
    tokens: list[str] = []
    for index, segment in enumerate(path.split(".")):
        match = _PATH_SEGMENT_RE.match(segment)
        if match is None or (not match.group(1) and (index > 0 or not match.group(2))):
            raise ConfigError(
                f"not a JSON field path: {path!r} (names joined by '.', each optionally followed by [*])",
                field=field,
            )
        if match.group(1):
            tokens.append(match.group(1))
        tokens += [ANY_INDEX] * (len(match.group(2)) // 3)
    if all(token == ANY_INDEX for token in tokens):
        raise ConfigError(f"a JSON field path must name a field: {path!r}", field=field)
    return tuple(tokens)


def _check_name(kind: str, name: str, field: str) -> None:
    if kind == "headers" and not _HEADER_NAME_RE.match(name):
        raise ConfigError(f"not a header name: {name!r}", field=field)
    if kind == "json_fields":
        parse_json_path(name, field=field)


def _rule_pairs(kind: str, value: object, default_action: str, where: str) -> tuple[tuple[str, str], ...]:
    """One kind's rules as ``(lower-cased name, action)`` pairs, from any of the forms a config may
    use: a list of names (and ``{NAME: ACTION}`` items), a map ``NAME: ACTION``, or ``{action: A,
    names: [...]}`` for the whole kind. Errors name the item (``redaction.json_fields[2]``)."""
    items: list[tuple[object, object, str]] = []
    if isinstance(value, Mapping):
        names = value.get("names")
        if isinstance(names, list | tuple) and set(value) <= {"names", "action"}:
            action = value.get("action", default_action)
            items = [(name, action, f"{where}.names[{i}]") for i, name in enumerate(names)]
        else:
            items = [(name, action, f"{where}.{name}") for name, action in value.items()]
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            if isinstance(item, str):
                items.append((item, default_action, at))
            elif isinstance(item, Mapping) and len(item) == 1:
                ((name, action),) = item.items()
                items.append((name, action, at))
            elif isinstance(item, list | tuple) and len(item) == 2:
                items.append((item[0], item[1], at))
            else:
                raise ConfigError(f"expected a name or {{NAME: ACTION}}, not {item!r}", field=at)
    else:
        raise ConfigError(f"expected a list of names or a map of NAME: ACTION, not {value!r}", field=where)
    out: dict[str, str] = {}
    for name, action, at in items:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"names must be non-empty strings, not {name!r}", field=at)
        if action not in ACTIONS:
            raise ConfigError(f"action must be hash, remove or keep, not {action!r}", field=at)
        lower = name.strip().lower()
        _check_name(kind, lower, at)
        if out.get(lower, action) != action:
            raise ConfigError(f"{name!r} is given two actions ({out[lower]} and {action})", field=at)
        out[lower] = str(action)
    return tuple(out.items())


@dataclass(frozen=True, slots=True)
class RedactionRules:
    """What to redact, how, and where the hashing key comes from.

    Each kind holds ``(lower-cased name, action)`` pairs, defaults included (unless
    ``extend_defaults`` is false), sorted: two rule sets that redact alike compare equal.
    ``from_mapping`` reads them from a config section; errors name the key.
    """

    #: Redact the tape at write time (``false``: record secrets as they are; copies sent to shadows
    #: are still stripped by these rules).
    enabled: bool = True
    #: The names below add to the built-in defaults (``false``: they replace them).
    extend_defaults: bool = True
    #: What the defaults and names listed without an action get: ``hash`` (a keyed HMAC, so equal
    #: secrets still match), ``remove``, or ``keep`` (leave a default alone).
    action: str = HASH
    #: Header names (any case) beyond the defaults: Authorization, Proxy-Authorization, Cookie,
    #: Set-Cookie, X-Api-Key, X-Auth-Token, X-Access-Token, X-Refresh-Token, X-Session-Token,
    #: X-Csrf-Token, X-Xsrf-Token, X-Amz-Security-Token. A list of names, a map NAME: ACTION, or
    #: {action: ACTION, names: [...]}. Shadows never get these headers.
    headers: tuple[tuple[str, str], ...] = ()
    #: Query parameter names (exact, any case) beyond the defaults: password, passwd, passphrase,
    #: secret, client_secret, token, access_token, refresh_token, id_token, auth_token,
    #: session_token, api_key, apikey, api-key, private_key (and the camelCase spellings, such as
    #: accessToken). Same forms as headers.
    query_params: tuple[tuple[str, str], ...] = ()
    #: JSON body fields beyond the defaults (the query parameter names): a plain name matches a key
    #: at any depth, a path (user.password, items[*].card) matches from the document root. Same
    #: forms as headers.
    json_fields: tuple[tuple[str, str], ...] = ()
    #: Form fields (application/x-www-form-urlencoded, multipart/form-data parts) beyond the
    #: defaults (the query parameter names). Same forms as headers.
    form_fields: tuple[tuple[str, str], ...] = ()
    #: File holding the HMAC key (null: $XDG_STATE_HOME/shadowtap/redaction.key, else
    #: ~/.local/state/shadowtap/redaction.key); created with mode 0600 when missing. Keep it out of
    #: the tape directory: whatever sits beside a tape is copied with it.
    key_file: str | None = None
    #: Environment variable whose value, when set, is the key (it wins over key_file; give every
    #: sidecar whose tapes are compared the same one).
    key_env: str = DEFAULT_KEY_ENV
    #: Hex digits of the HMAC kept: 16 (64 bits) keeps tapes small and collisions negligible.
    hash_hex_chars: int = 16

    def __post_init__(self) -> None:
        for name in ("enabled", "extend_defaults"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"expected true or false, not {getattr(self, name)!r}", field=f"redaction.{name}")
        if self.action not in ACTIONS:
            raise ConfigError(f"must be hash, remove or keep, not {self.action!r}", field="redaction.action")
        for kind in RULE_KINDS:
            pairs = _rule_pairs(kind, getattr(self, kind), self.action, f"redaction.{kind}")
            if self.extend_defaults:
                named = {name for name, _ in pairs}
                pairs += tuple((name, self.action) for name in _DEFAULTS[kind] if name not in named)
            object.__setattr__(self, kind, tuple(sorted(pairs)))
        if not isinstance(self.hash_hex_chars, int) or not 8 <= self.hash_hex_chars <= 64:
            raise ConfigError("must be an integer from 8 to 64", field="redaction.hash_hex_chars")
        if not isinstance(self.key_env, str) or not self.key_env:
            raise ConfigError("must name an environment variable", field="redaction.key_env")
        if self.key_file is not None and (not isinstance(self.key_file, str) or not self.key_file):
            raise ConfigError("must be a file path or null", field="redaction.key_file")

    def names(self, kind: str) -> tuple[str, ...]:
        """The names of one kind that are redacted (hashed or removed), lower-cased."""
        pairs: tuple[tuple[str, str], ...] = getattr(self, kind)
        return tuple(name for name, action in pairs if action != KEEP)

    @classmethod
    def from_mapping(cls, value: Any, where: str = "redaction") -> RedactionRules:
        """Rules from a config value: ``true``/``false`` (the defaults, on or off) or a mapping of
        the fields above. Unknown keys are an error; every error names the key under ``where``."""
        if isinstance(value, bool):
            return cls(enabled=value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected true, false or a mapping, not {value!r}", field=where)
        known = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, Any] = {}
        legacy: list[tuple[str, object, str, str]] = []
        for key, item in value.items():
            if key in _LEGACY_KEYS:
                kind, action = _LEGACY_KEYS[key]
                legacy.append((kind, item, action, f"{where}.{key}"))
            elif key in known:
                values[key] = item
            else:
                raise ConfigError(f"unknown key (known: {', '.join(known)})", field=f"{where}.{key}")
        try:
            action = values.get("action", HASH)
            if action not in ACTIONS:
                raise ConfigError(f"must be hash, remove or keep, not {action!r}", field="redaction.action")
            for kind in RULE_KINDS:
                if kind in values:
                    values[kind] = _rule_pairs(kind, values[kind], action, f"{where}.{kind}")
            for kind, item, kind_action, at in legacy:
                values[kind] = (*values.get(kind, ()), *_rule_pairs(kind, item, kind_action, at))
            return cls(**values)
        except ConfigError as exc:
            field = exc.field or where
            if field.startswith("redaction.") and where != "redaction":
                field = where + field[len("redaction") :]
            raise ConfigError(exc.message, field=field) from exc


# --- the key ---------------------------------------------------------------------------------------


def default_key_path() -> Path:
    """Where the key lives unless configured: ``$XDG_STATE_HOME/shadowtap/redaction.key``, else
    ``~/.local/state/shadowtap/redaction.key`` (a relative XDG_STATE_HOME is ignored, as the XDG
    spec asks)."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "shadowtap" / KEY_FILE_NAME


#: Old key files already warned about (each once per process).
_warned_keys: set[Path] = set()


def resolve_redaction_key(rules: RedactionRules, directory: Path | None = None) -> bytes:
    """The HMAC key: environment variable ``key_env``, else ``key_file``, else the per-user default
    (created, mode 0600, when missing). ``directory`` is the tape's: a key file found there (where
    older versions kept it) is not used, and a warning says so: it travels with every copy of the tape."""
    if directory is not None:
        _warn_key_beside_tape(rules, directory)
    from_env = os.environ.get(rules.key_env, "")
    if from_env:
        return from_env.encode()
    if rules.key_file is not None:
        key_path = Path(rules.key_file).expanduser()
    else:
        try:
            key_path = default_key_path()
        except RuntimeError as exc:  # no home directory to fall back on
            raise TapeWriteError(
                f"no place for the redaction key: set ${rules.key_env}, XDG_STATE_HOME or redaction.key_file ({exc})"
            ) from exc
        try:
            key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise TapeWriteError(
                f"cannot create the redaction key's directory: {exc.strerror or exc}", path=str(key_path.parent)
            ) from exc
    return _read_or_create_key(key_path)


def _warn_key_beside_tape(rules: RedactionRules, directory: Path) -> None:
    old = directory / KEY_FILE_NAME
    if old in _warned_keys or not old.exists():
        return
    if rules.key_file is not None and Path(rules.key_file).expanduser().resolve() == old.resolve():
        return  # configured there on purpose
    _warned_keys.add(old)
    log.warning(
        "%s: a redaction key beside the tape is copied with the tape, and is no longer used; the key now "
        "comes from $%s or %s. Move it out of the tape directory (and set redaction.key_file to its new "
        "place to keep hashes matching this tape's older segments)",
        old,
        rules.key_env,
        rules.key_file or "the per-user state directory",
    )


def _read_or_create_key(key_path: Path) -> bytes:
    try:
        return _read_key(key_path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TapeWriteError(f"cannot read redaction key: {exc.strerror or exc}", path=str(key_path)) from exc
    # Write a temporary file then hard-link it into place: the key appears complete or not at all,
    # and when two writers race, both end up using the one that won.
    tmp_path = key_path.parent / f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}"
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
_REQUEST_TARGET, _REQUEST_HEADERS, _REQUEST_BODY, _REQUEST_TRAILERS = (
    _REQUEST_AT[n] for n in ("target", "headers", "body", "trailers")
)
_response_values, _RESPONSE_AT = _field_getter(Response)
_RESPONSE_HEADERS, _RESPONSE_BODY, _RESPONSE_TRAILERS = (_RESPONSE_AT[n] for n in ("headers", "body", "trailers"))


# Positions in the exchange record array (docs/tape-format.md, "Exchange record").
_WIRE_REQUEST: Final = 3
_WIRE_PRIMARY: Final = 4
_WIRE_SHADOWS: Final = 5
_WIRE_REQ_TARGET: Final = 1
_WIRE_REQ_HEADERS: Final = 2
_WIRE_REQ_BODY: Final = 3
_WIRE_REQ_TRUNCATED: Final = 7
_WIRE_REQ_TRAILERS: Final = 8
_WIRE_TAG_RESPONSE: Final = 0
_WIRE_RESP_HEADERS: Final = 3
_WIRE_RESP_BODY: Final = 4
_WIRE_RESP_TRUNCATED: Final = 6
_WIRE_RESP_TRAILERS: Final = 7


class _Swap:
    """A shadow's own value for a field (``ShadowSettings.credentials``), put in place of the client's."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


#: Compiled actions, compared by identity in the hot loops: HASH, REMOVE or a ``_Swap``.
_Action = object
_CANONICAL: Final[dict[str, _Action]] = {HASH: HASH, REMOVE: REMOVE}


class _PathNode:
    """A JSON path trie node: keys below it, the array elements below it, and its own action."""

    __slots__ = ("action", "children", "items")

    def __init__(self) -> None:
        self.children: dict[str, _PathNode] = {}
        self.items: _PathNode | None = None
        self.action: _Action | None = None

    def add(self, tokens: tuple[str, ...], action: _Action) -> None:
        node = self
        for token in tokens:
            if token == ANY_INDEX:
                if node.items is None:
                    node.items = _PathNode()
                node = node.items
            else:
                node = node.children.setdefault(token, _PathNode())
        node.action = action


def _compile(pairs: Iterable[tuple[str, str]], swaps: Iterable[tuple[str, str]]) -> dict[str, _Action]:
    out: dict[str, _Action] = {name: _CANONICAL[action] for name, action in pairs if action != KEEP}
    for name, text in swaps:
        out[name.lower()] = _Swap(text)
    return out


def _needles(names: Iterable[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A few substrings, at least one of which every name holds (``token`` stands for the ten
    ``*token`` names), each with the names it stands for. Text holding none of the substrings (any
    case) cannot hold any of the names, and one substring search costs about what reading the text
    once does, so few short ones are cheapest."""
    uncovered = set(names)
    chosen: list[tuple[str, tuple[str, ...]]] = []
    while uncovered:
        counts: dict[str, int] = {}
        for name in uncovered:
            shortest = min(3, len(name))
            pieces = {name[i:j] for i in range(len(name)) for j in range(i + shortest, len(name) + 1)}
            for piece in pieces:
                counts[piece] = counts.get(piece, 0) + 1
        best = max(counts, key=lambda piece: (counts[piece], len(piece), piece))
        covered = tuple(sorted(name for name in uncovered if best in name))
        chosen.append((best, covered))
        uncovered.difference_update(covered)
    return tuple(chosen)


def _content_type(headers: Headers) -> bytes | None:
    """The Content-Type value (``b""`` when absent), or None when a content-encoding hides the body."""
    content_type = b""
    for key, value in headers:
        lower = key.lower()
        if lower == b"content-type":
            content_type = value
        elif lower == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return None
    return content_type


class Redactor:
    """Applies ``RedactionRules`` under one key. Returns the same object when nothing matched.

    ``swaps`` (kind, name, value) put a shadow's own credentials in place of the client's, for query
    parameters, JSON fields and form fields; they apply whether or not the rules name the field.
    """

    __slots__ = (
        "_cache",
        "_form",
        "_hash_chars",
        "_header_actions",
        "_header_rules",
        "_json_anywhere",
        "_json_leaves",
        "_json_roots",
        "_bodies",
        "_key",
        "_query",
        "_query_needles",
        "_value_cache",
    )

    def __init__(self, rules: RedactionRules, key: bytes, swaps: Iterable[tuple[str, str, str]] = ()) -> None:
        self._key = key
        self._hash_chars = rules.hash_hex_chars
        swapped: dict[str, list[tuple[str, str]]] = {kind: [] for kind in RULE_KINDS}
        for kind, name, text in swaps:
            swapped[kind].append((name, text))
        self._header_rules = {
            name.encode("latin-1"): _CANONICAL[action] for name, action in rules.headers if action != KEEP
        }
        self._query = _compile(rules.query_params, swapped["query_params"])
        self._form = _compile(rules.form_fields, swapped["form_fields"])
        # JSON: names matched at any depth, and paths from the root as a trie.
        self._json_anywhere: dict[str, _Action] = {}
        root = _PathNode()
        leaves: set[str] = set()
        for name, action in _compile(rules.json_fields, swapped["json_fields"]).items():
            tokens = parse_json_path(name)
            if len(tokens) == 1:
                self._json_anywhere[name] = action
            else:
                root.add(tokens, action)
            leaves.add(next(t for t in reversed(tokens) if t != ANY_INDEX))
        has_paths = bool(root.children) or root.items is not None
        self._json_roots: tuple[_PathNode, ...] = (root,) if has_paths else ()
        # What a body must hold for any rule to match, to skip parsing most bodies. Only ASCII
        # names: bytes case-folding knows no other letters.
        # Each substring with the quoted names it stands for: a hit is confirmed by one of them.
        self._json_leaves: tuple[tuple[bytes, tuple[bytes, ...]], ...] | None = (
            tuple((n.encode(), tuple(f'"{name}"'.encode() for name in names)) for n, names in _needles(leaves))
            if all(leaf.isascii() for leaf in leaves)
            else None
        )
        # Substrings one of which a query must hold (lower-cased) for a parameter rule to match.
        self._query_needles: tuple[str, ...] | None = (
            tuple(n for n, _ in _needles(self._query)) if all(name.isascii() for name in self._query) else None
        )
        self._bodies = bool(self._json_leaves is None or self._json_leaves or self._form)
        # Secret -> hash. The same few tokens and cookies recur in most traffic; an HMAC costs more
        # than the rest of encoding an exchange. Bounded by clearing when full.
        self._cache: dict[bytes, bytes] = {}
        # Header name as sent -> action, and (name, value) -> redacted value; bounded like _cache.
        self._header_actions: dict[bytes, _Action] = {}
        self._value_cache: dict[tuple[bytes, bytes], bytes] = {}

    @property
    def rewrites_targets(self) -> bool:
        """Whether any rule can change a request target (its query)."""
        return bool(self._query)

    @property
    def rewrites_bodies(self) -> bool:
        """Whether any rule can change a body (JSON or form)."""
        return self._bodies

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
        if self._query and "?" in request[_WIRE_REQ_TARGET]:
            request[_WIRE_REQ_TARGET] = self.redact_target(request[_WIRE_REQ_TARGET])
        request[_WIRE_REQ_BODY], headers = self._body(request[_WIRE_REQ_BODY], headers, request[_WIRE_REQ_TRUNCATED])
        request[_WIRE_REQ_HEADERS] = headers
        # Trailers are fields too (HTTP/2, gRPC metadata at the end of a stream): the header rules apply.
        if len(request) > _WIRE_REQ_TRAILERS and request[_WIRE_REQ_TRAILERS]:
            request[_WIRE_REQ_TRAILERS] = self._headers(request[_WIRE_REQ_TRAILERS])
        primary = record[_WIRE_PRIMARY]
        if primary is not None:
            self._outcome_record(primary)
        for outcome in record[_WIRE_SHADOWS].values():
            self._outcome_record(outcome)

    def redact_target(self, target: str) -> str:
        """``target`` with the query parameters the rules name hashed, removed or swapped."""
        question = target.find("?")
        if question < 0 or not self._query:
            return target
        needles = self._query_needles
        if needles is not None and "%" not in target and "+" not in target:
            # Most queries name no secret: a few substring searches say so without splitting them.
            # (Runs for every mirrored copy and taped exchange with a query: no generator here.)
            lowered = target[question + 1 :].lower()
            for needle in needles:
                if needle in lowered:
                    break
            else:
                return target
        path, query = target[:question], target[question + 1 :]
        query, hash_sign, fragment = query.partition("#")
        rebuilt, changed = self._pairs(query, self._query, "utf-8")
        if not changed:
            return target
        out = f"{path}?{rebuilt}" if rebuilt else path
        return f"{out}#{fragment}" if hash_sign else out

    def redact_request_body(self, body: bytes, headers: Headers) -> bytes:
        """A complete request ``body`` with the JSON or form fields the rules name rewritten (the
        same object when nothing matched, or when a content-encoding hides it)."""
        if not body or not self._bodies:
            return body
        content_type = _content_type(headers)
        return body if content_type is None else self._rewrite_body(body, content_type)

    def _outcome_record(self, outcome: list[Any]) -> None:
        if outcome[0] != _WIRE_TAG_RESPONSE:
            return
        headers = self._headers(outcome[_WIRE_RESP_HEADERS])
        outcome[_WIRE_RESP_BODY], headers = self._body(outcome[_WIRE_RESP_BODY], headers, outcome[_WIRE_RESP_TRUNCATED])
        outcome[_WIRE_RESP_HEADERS] = headers
        if len(outcome) > _WIRE_RESP_TRAILERS and outcome[_WIRE_RESP_TRAILERS]:
            outcome[_WIRE_RESP_TRAILERS] = self._headers(outcome[_WIRE_RESP_TRAILERS])

    # --- parts ---------------------------------------------------------------------------------

    def _request(self, req: Request) -> Request:
        headers = self._headers(req.headers)
        target = self.redact_target(req.target) if self._query and "?" in req.target else req.target
        body, headers = self._body(req.body, headers, req.truncated_from)
        trailers = self._headers(req.trailers) if req.trailers else req.trailers
        if headers is req.headers and target is req.target and body is req.body and trailers is req.trailers:
            return req
        values = _request_values(req)
        values[_REQUEST_TARGET], values[_REQUEST_HEADERS], values[_REQUEST_BODY] = target, headers, body
        values[_REQUEST_TRAILERS] = trailers
        return Request(*values)

    def _outcome(self, outcome: Outcome) -> Outcome:
        if isinstance(outcome, Failure):
            return outcome
        headers = self._headers(outcome.headers)
        body, headers = self._body(outcome.body, headers, outcome.truncated_from)
        trailers = self._headers(outcome.trailers) if outcome.trailers else outcome.trailers
        if headers is outcome.headers and body is outcome.body and trailers is outcome.trailers:
            return outcome
        values = _response_values(outcome)
        values[_RESPONSE_HEADERS], values[_RESPONSE_BODY], values[_RESPONSE_TRAILERS] = headers, body, trailers
        return Response(*values)

    def _headers(self, headers: Headers) -> Headers:
        # Runs for every header of every exchange written: one dict lookup per header name as
        # sent (no lower-casing) decides it, and whole redacted values are cached.
        actions = self._header_actions
        for key, _ in headers:
            action = actions.get(key)
            if action is None:
                action = self._learn_header(key)
            if action is not _KEEP_HEADER:
                break
        else:
            return headers
        out: list[tuple[bytes, bytes]] = []
        values = self._value_cache
        for key, value in headers:
            action = actions.get(key)
            if action is None:
                action = self._learn_header(key)
            if action is REMOVE:
                continue
            if action is HASH:
                redacted = values.get((key, value))
                if redacted is None:
                    redacted = self._header_value(key.lower(), value)
                    if len(values) >= _VALUE_CACHE_ENTRIES:
                        values.clear()
                    values[(key, value)] = redacted
                value = redacted
            out.append((key, value))
        return tuple(out)

    def _learn_header(self, name: bytes) -> _Action:
        action = self._header_rules.get(name.lower(), _KEEP_HEADER)
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

    def _pairs(self, encoded: str, rules: Mapping[str, _Action], value_encoding: str) -> tuple[str, bool]:
        """``a=1&b=2`` (a query or a urlencoded form) with the named parameters rewritten. A hashed
        value is the hash of its raw (still percent-encoded) text in ``value_encoding``."""
        pieces: list[str] = []
        changed = False
        for piece in encoded.split("&"):
            name, sep, value = piece.partition("=")
            plain = unquote_plus(name) if "%" in name or "+" in name else name
            action = rules.get(plain.lower())
            if action is None:
                pieces.append(piece)
                continue
            if action is REMOVE:
                changed = True
                continue
            if action is HASH:
                if not sep:
                    pieces.append(piece)
                    continue
                new_value = self.hash_bytes(value.encode(value_encoding)).decode()
            else:
                assert isinstance(action, _Swap)
                new_value = quote_plus(action.text)
            changed = changed or new_value != value
            pieces.append(f"{name}={new_value}")
        return "&".join(pieces), changed

    def _body(self, body: bytes, headers: Headers, truncated_from: int | None) -> tuple[bytes, Headers]:
        if not body or truncated_from is not None or not self._bodies:
            return body, headers
        content_type = _content_type(headers)
        if content_type is None:
            return body, headers
        new_body = self._rewrite_body(body, content_type)
        if new_body is body:
            return body, headers
        length = str(len(new_body)).encode()
        new_headers = tuple((k, length) if k.lower() == b"content-length" else (k, v) for k, v in headers)
        return new_body, new_headers

    def _rewrite_body(self, body: bytes, content_type: bytes) -> bytes:
        mime = content_type.partition(b";")[0].strip().lower()
        if mime.find(b"json") >= 0:  # find(), not ``in``: see _may_name_json_secret
            return self._json_body(body)
        if not self._form:
            return body
        if mime == _FORM_TYPE:
            text, changed = self._pairs(body.decode("latin-1"), self._form, "latin-1")
            return text.encode("latin-1") if changed else body
        if mime == _MULTIPART_TYPE:
            match = _BOUNDARY_RE.search(content_type)
            if match is not None:
                return self._multipart_body(body, match.group(1) or match.group(2))
        return body

    def _multipart_body(self, body: bytes, boundary: bytes) -> bytes:
        delimiter = b"--" + boundary
        pieces = body.split(delimiter)
        if len(pieces) < 3:  # not a whole multipart body: leave it alone
            return body
        changed = False
        out = [pieces[0]]
        for piece in pieces[1:]:
            head, sep, content = piece.partition(b"\r\n\r\n")
            match = _PART_NAME_RE.search(head) if sep else None
            if match is None:
                out.append(piece)
                continue
            raw_name = match.group(1) if match.group(1) is not None else match.group(2)
            action = self._form.get(raw_name.decode("utf-8", "replace").lower())
            if action is None:
                out.append(piece)
                continue
            changed = True
            if action is REMOVE:
                continue
            data, tail = (content[:-2], b"\r\n") if content.endswith(b"\r\n") else (content, b"")
            new = self.hash_bytes(data) if action is HASH else _swap_text(action).encode()
            out.append(head + sep + new + tail)
        return delimiter.join(out) if changed else body

    def _json_body(self, body: bytes) -> bytes:
        if not self._may_name_json_secret(body):
            return body
        try:
            redacted, changed = self._json_value(json.loads(body), self._json_roots)
            if not changed:
                return body
            return json.dumps(redacted, ensure_ascii=False, separators=(",", ":")).encode()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return body

    def _may_name_json_secret(self, body: bytes) -> bool:
        """False only when no rule can match: the body holds none of the names' substrings, any case.

        Escapes could spell a name the bytes do not show (``"pass\\u0077ord"``), and UTF-16 or -32
        bodies show none: those are always parsed."""
        leaves = self._json_leaves
        if leaves is None:
            return True
        if not leaves:
            return False
        # find(), not ``in``: ``bytes in bytes`` first tries its operand as an integer and formats
        # (then drops) a TypeError each time, some 1,500 instructions per test on every JSON body.
        if body.find(b"\\") >= 0 or body[:4].find(b"\x00") >= 0 or body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return True
        lowered = body.lower()
        for needle, quoted_names in leaves:
            if lowered.find(needle) >= 0:
                for quoted in quoted_names:
                    if lowered.find(quoted) >= 0:
                        return True
        return False

    def _json_value(self, value: Any, nodes: tuple[_PathNode, ...]) -> tuple[Any, bool]:
        anywhere = self._json_anywhere
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            changed = False
            for key, item in value.items():
                lower = key.lower()
                next_nodes: tuple[_PathNode, ...] = ()
                action: _Action | None = None
                if nodes:
                    next_nodes = tuple(node.children[lower] for node in nodes if lower in node.children)
                    action = next((node.action for node in next_nodes if node.action is not None), None)
                if action is None:
                    action = anywhere.get(lower)
                if action is not None:
                    if action is REMOVE:
                        changed = True
                        continue
                    new_item = self._json_replace(item, action)
                    changed = changed or new_item != item
                    out[key] = new_item
                elif anywhere or next_nodes:
                    new_item, item_changed = self._json_value(item, next_nodes)
                    changed = changed or item_changed
                    out[key] = new_item
                else:
                    out[key] = item
            return out, changed
        if isinstance(value, list):
            element_nodes = tuple(node.items for node in nodes if node.items is not None)
            action = next((node.action for node in element_nodes if node.action is not None), None)
            if action is REMOVE:
                return [], bool(value)
            if action is not None:
                replaced = [self._json_replace(item, action) for item in value]
                return replaced, replaced != value
            if not anywhere and not element_nodes:
                return value, False
            items = [self._json_value(item, element_nodes) for item in value]
            return [item for item, _ in items], any(c for _, c in items)
        return value, False

    def _json_replace(self, value: Any, action: _Action) -> Any:
        if action is HASH:
            raw = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
            return self.hash_bytes(raw.encode()).decode()
        return _swap_text(action)


def _swap_text(action: _Action) -> str:
    assert isinstance(action, _Swap)
    return action.text
