"""Render-time redaction: removes secrets from what a report shows, whatever the tape kept.

Tapes are redacted when written, but a report is the thing people paste into tickets and CI
artifacts, so every renderer passes requests, headers and bodies through here once more. Values the
tape already replaced (``redacted:hmac:...``, see ``recorder.redact``) are kept: they are safe and
show a reviewer whether two credentials were equal. It must never change the shape of what it
redacts (header order, JSON structure, query parameter order stay as they were, so highlighted
paths still point at the right place) and never do I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

from recorder.model import Headers
from recorder.redact import DEFAULT_SECRET_HEADERS, REDACTED_PREFIX

__all__ = [
    "REDACTED",
    "is_secret_header",
    "is_secret_name",
    "redact_form",
    "redact_header_value",
    "redact_headers",
    "redact_json",
    "redact_multipart",
    "redact_target",
    "redact_text",
]

REDACTED: Final = "[redacted]"

# The tape's defaults, and more: render time can afford to be stricter than the recorder.
_SECRET_HEADERS: Final = frozenset(name.encode() for name in DEFAULT_SECRET_HEADERS) | {
    b"x-auth-token",
    b"x-csrf-token",
    b"x-xsrf-token",
    b"x-amz-security-token",
}
_TAPE_REDACTED: Final = REDACTED_PREFIX.encode()
_TAPE_REDACTED_QUERY: Final = ("redacted:", "redacted%3a")
# Field / parameter names whose values are credentials. Substring match on purpose: `access_token`,
# `client_secret` and `X-Session-Token` are all caught; short names only as whole names because as
# substrings they would blank out `monkey`, `zip_code` or `author`. `key`, `sig` and `code` are
# credentials in a query string (API keys, signed URLs, OAuth codes) but ordinary JSON fields (an
# error `code` changing is exactly what a reviewer must see), so they apply to queries and forms only.
_SECRET_NAME: Final = re.compile(
    r"token|secret|passw(or)?d|passphrase|api[-_]?key|credential|authorization|session([-_]?(id|key))?$",
    re.IGNORECASE,
)
_SECRET_EXACT_NAMES: Final = frozenset({"auth", "signature", "pwd", "otp"})
_SECRET_EXACT_QUERY_NAMES: Final = _SECRET_EXACT_NAMES | {"key", "sig", "code"}
_AUTH_SCHEME: Final = re.compile(rb"^([A-Za-z][A-Za-z0-9_-]*)\s+\S")
# A JWT anywhere in free text: three base64url parts, the first two JSON objects ("eyJ" = '{"').
# It must start a token (the lookbehind) and runs are possessive: otherwise a long "eyJeyJ..." run
# is tried from every position and scanned to its end each time (64 KiB took 3.7 s).
_JWT_PATTERN: Final = r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}+\.eyJ[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]*+"
_JWT: Final = re.compile(_JWT_PATTERN)
_JWT_BYTES: Final = re.compile(_JWT_PATTERN.encode())
_QUERY_PAIR: Final = re.compile(r"(?P<name>[^&=;]*)(?P<eq>=?)(?P<value>[^&;]*)")


def is_secret_name(name: str, *, in_query: bool = False) -> bool:
    """Whether a JSON field (or, ``in_query``, a query/form parameter) called ``name`` holds a credential."""
    exact = _SECRET_EXACT_QUERY_NAMES if in_query else _SECRET_EXACT_NAMES
    return name.lower() in exact or _SECRET_NAME.search(name) is not None


def is_secret_header(name: bytes) -> bool:
    """Whether header ``name`` (any case) carries a credential."""
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or is_secret_name(lowered.decode("latin-1"))


def _redact_cookie_pairs(value: bytes, separator: bytes) -> bytes:
    # Cookie names and attributes (Path, HttpOnly, Max-Age) help a reviewer and are not secret.
    parts = []
    for index, part in enumerate(value.split(separator)):
        name, eq, cookie_value = part.partition(b"=")
        is_attribute = separator == b";" and index > 0 and _is_cookie_attribute(name.strip())
        keep = is_attribute or not eq or cookie_value.strip().startswith(_TAPE_REDACTED)
        parts.append(part if keep else name + b"=" + REDACTED.encode())
    return separator.join(parts)


_COOKIE_ATTRIBUTES: Final = frozenset(
    {b"path", b"domain", b"expires", b"max-age", b"samesite", b"secure", b"httponly", b"partitioned", b"priority"}
)


def _is_cookie_attribute(name: bytes) -> bool:
    return name.lower() in _COOKIE_ATTRIBUTES


def redact_header_value(name: bytes, value: bytes) -> bytes:
    """``value`` with its secret part replaced; the auth scheme and cookie names stay readable."""
    lowered = name.lower()
    if lowered == b"set-cookie":
        return _redact_cookie_pairs(value, b";")
    if lowered == b"cookie":
        return b";".join(_redact_cookie_pairs(p, b";") for p in value.split(b";"))
    if is_secret_header(name):
        scheme = _AUTH_SCHEME.match(value) if lowered.endswith(b"authorization") else None
        credential = value[scheme.end(1) :].strip() if scheme else value.strip()
        if credential.startswith(_TAPE_REDACTED):
            return value
        return (scheme.group(1) + b" " if scheme else b"") + REDACTED.encode()
    return _JWT_BYTES.sub(b"[redacted jwt]", value)


def redact_headers(headers: Headers) -> Headers:
    """The same headers, in order and with duplicates, secret values replaced."""
    return tuple((name, redact_header_value(name, value)) for name, value in headers)


def redact_form(encoded: str) -> str:
    """A query string or urlencoded form with secret parameters' values replaced, order kept."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        tape_redacted = match.group("value").lower().startswith(_TAPE_REDACTED_QUERY)
        if match.group("eq") and not tape_redacted and is_secret_name(name.replace("+", " "), in_query=True):
            return f"{name}={REDACTED}"
        return match.group(0)

    return redact_text(_QUERY_PAIR.sub(replace, encoded))


# Boundary delimiter lines split a multipart body into parts (linear, unlike one regex per part
# scanning ahead for the next boundary, which is quadratic on hostile input).
_MULTIPART_DELIMITER: Final = re.compile(r"(\r?\n--[^\r\n]*)")
_PART_HEAD_END: Final = re.compile(r"\r?\n\r?\n")
_PART_FIELD_NAME: Final = re.compile(r'^Content-Disposition:[^\r\n]*?\bname="([^"]*)"', re.IGNORECASE | re.MULTILINE)


def redact_multipart(text: str) -> str:
    """A multipart/form-data body with the values of secret-named fields replaced."""
    pieces = _MULTIPART_DELIMITER.split(text)
    for index in range(0, len(pieces), 2):  # even pieces are part contents, odd ones delimiters
        head_end = _PART_HEAD_END.search(pieces[index])
        if head_end is None:
            continue
        name = _PART_FIELD_NAME.search(pieces[index], 0, head_end.start())
        if name is not None and is_secret_name(name.group(1), in_query=True):
            pieces[index] = pieces[index][: head_end.end()] + REDACTED
    return redact_text("".join(pieces))


def redact_target(target: str) -> str:
    """A request target (``/path?query``) with credential query parameters blanked."""
    path, question, query = target.partition("?")
    return redact_text(path) + (question + redact_form(query) if question else "")


def redact_text(text: str) -> str:
    """Free text with embedded JWTs replaced (the one secret shape recognisable without context)."""
    return _JWT.sub("[redacted jwt]", text)


# Anything redact_json could act on contains one of these (lower-cased); most bodies contain none,
# and a few substring scans of the text are much cheaper than walking every node of the document.
_JSON_HINTS: Final = (
    "token",
    "secret",
    "passw",
    "passphrase",
    "key",
    "credential",
    "authorization",
    "session",
    '"auth"',
    '"signature"',
    '"pwd"',
    '"otp"',
    "eyj",
)


def redact_json(value: Any, source_text: str | None = None) -> tuple[Any, bool]:
    """A copy of a parsed JSON value with secret-named fields' string values replaced; and whether any was.

    Only strings are replaced: counters such as ``tokens_used: 12`` are not secrets and a reviewer
    needs to see them change. Containers keep their shape so paths into them still resolve. With
    ``source_text`` (the JSON ``value`` was parsed from), a document that cannot hold a secret is
    returned as it is, uncopied.
    """
    if source_text is not None:
        lowered = source_text.lower()
        if not any(hint in lowered for hint in _JSON_HINTS):
            return value, False
    changed = False

    def walk(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, child in node.items():
                if isinstance(child, str) and not child.startswith(REDACTED_PREFIX) and is_secret_name(key):
                    out[key] = REDACTED
                    changed = True
                else:
                    out[key] = walk(child)
            return out
        if isinstance(node, list):
            return [walk(child) for child in node]
        if isinstance(node, str):
            redacted = redact_text(node)
            if redacted != node:
                changed = True
            return redacted
        return node

    return walk(value), changed
