"""Render-time redaction: removes secrets from what a report shows, whatever the tape kept.

Tapes are redacted when written, but a report is the thing people paste into tickets and CI
artifacts, so every renderer passes requests, headers and bodies through here once more. It redacts
credentials, not words: header, parameter and field names are matched exactly (any case) against
the tape's own default lists (``shadowtap.recorder.redact``, one place for them), so ``Authorization`` and
``access_token`` go while ``Access-Control-Allow-Credentials`` and ``total_tokens`` stay; and values
are redacted wherever they are when their shape is unmistakably a secret (a JWT, a ``Bearer`` or
``Basic`` credential, a private key block, a few vendors' prefixed API keys). Random-looking strings
are not guessed at: ids, hashes and ETags look the same, and hiding them would hide real diffs.

Values the tape already replaced (``redacted:hmac:...``) are kept: they are safe and show a
reviewer whether two credentials were equal. It must never change the shape of what it redacts
(header order, JSON structure, query parameter order stay as they were, so highlighted paths still
point at the right place) and never do I/O.
"""

from __future__ import annotations

import binascii
import re
from typing import Any, Final
from urllib.parse import unquote_plus

from shadowtap.recorder.model import Headers
from shadowtap.recorder.redact import DEFAULT_SECRET_FIELDS, DEFAULT_SECRET_HEADERS, REDACTED_PREFIX

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
_REDACTED_JWT: Final = "[redacted jwt]"

_SECRET_HEADERS: Final = frozenset(name.encode() for name in DEFAULT_SECRET_HEADERS)
# A credential header's name names a credential wherever it appears (an echo service's JSON
# `{"headers": {"Authorization": ...}}`).
_SECRET_FIELDS: Final = frozenset(DEFAULT_SECRET_FIELDS) | frozenset(DEFAULT_SECRET_HEADERS)
# Credentials that travel in URLs and forms, where the name alone says so: Google-style API keys
# (`?key=`), signed-URL signatures (Azure SAS `sig`, S3 presigned `X-Amz-Signature`), OAuth
# authorization codes and session ids in URLs. In a JSON body these names are ordinary (an error
# `code` changing is exactly what a reviewer must see), so they apply to queries and forms only.
_URL_SECRET_PARAMS: Final = _SECRET_FIELDS | {
    "key", "sig", "signature", "x-amz-signature", "code", "session", "session_id", "sessionid", "jsessionid",
}  # fmt: skip
_TAPE_REDACTED: Final = REDACTED_PREFIX.encode()
_TAPE_REDACTED_QUERY: Final = ("redacted:", "redacted%3a")
_AUTH_SCHEME: Final = re.compile(rb"^([A-Za-z][A-Za-z0-9_-]*)\s+\S")
_QUERY_PAIR: Final = re.compile(r"(?P<name>[^&=;]*)(?P<eq>=?)(?P<value>[^&;]*)")

# Secret shapes. Every run is possessive and anchored at a token start, so hostile input (a long
# "eyJeyJ..." or "Bearer Bearer ..." run) is scanned once, not from every position (a 64 KiB run of
# "eyJ" once took 3.7 s).
# A JWT: three base64url parts, the first two JSON objects ("eyJ" = '{"').
_JWT: Final = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}+\.eyJ[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]*+")
# Prefixes their issuers chose so that leaked keys can be found: they are never anything else.
_VENDOR_KEY: Final = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,}+"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,}+"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}+"  # Slack tokens
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}+"  # Stripe secret and restricted keys
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r")(?![A-Za-z0-9_-])"
)
# A PEM private key, to its END line or, when the shown text was cut inside it, to the end.
_PRIVATE_KEY: Final = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)", re.DOTALL
)
# `Bearer <token>` / `Basic <base64>` (RFC 9110 token68) anywhere: in a header the proxy forwarded
# under another name, a JSON string, a log line. Checked further in _auth_credential_end, because
# the same words start challenges (`Bearer realm="api"`) and prose (`Basic plan`).
_AUTH_CREDENTIAL: Final = re.compile(r"(?i)(?<![A-Za-z0-9_-])(bearer|basic)(?:[ \t]|\+|%20)++([A-Za-z0-9._~+/-]++=*+)")
_TOKEN68_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
_BEARER_MIN_CHARS: Final = 8


def is_secret_name(name: str, *, in_query: bool = False) -> bool:
    """Whether a JSON field (or, ``in_query``, a query or form parameter) named ``name``, any case, is a credential."""
    return name.lower() in (_URL_SECRET_PARAMS if in_query else _SECRET_FIELDS)


def is_secret_header(name: bytes) -> bool:
    """Whether header ``name`` (any case) carries a credential."""
    return name.lower() in _SECRET_HEADERS


def _is_credential(scheme: str, credential: str) -> bool:
    if scheme.lower() == "basic":
        # user:password in base64, padded as every client sends it: "Basic Authentication" is not.
        try:
            return b":" in binascii.a2b_base64(credential, strict_mode=True)
        except binascii.Error:
            return False
    # An opaque token has digits and letters; words after "Bearer" in prose do not.
    return (
        len(credential) >= _BEARER_MIN_CHARS
        and any(c.isdigit() for c in credential)
        and any(c.isalpha() for c in credential)
    )


def _redact_auth_credentials(text: str) -> str:
    pieces: list[str] = []
    position = 0
    search_from = 0
    while (match := _AUTH_CREDENTIAL.search(text, search_from)) is not None:
        following = text[match.end() : match.end() + 1]
        credential = match.group(2)
        # `name="value"` and `name=value` are auth-params of a challenge, not a token68.
        is_param = credential.endswith("=") and (following == '"' or following in _TOKEN68_CHARS and following != "")
        if not is_param and _is_credential(match.group(1), credential):
            pieces += (text[position : match.start(2)], REDACTED)
            position = search_from = match.end()
        else:
            search_from = match.start(2)  # the rejected word may itself start a credential
    return "".join(pieces) + text[position:] if pieces else text


def _redact_cookie_pairs(value: bytes, separator: bytes) -> bytes:
    # Cookie names and attributes (Path, HttpOnly, Max-Age) help a reviewer and are not secret. A
    # first pair without "=" is a nameless cookie's value (as browsers read it); later ones are flags.
    parts = []
    for index, part in enumerate(value.split(separator)):
        name, eq, cookie_value = part.partition(b"=")
        if index > 0 and (not eq or _is_cookie_attribute(name.strip())):
            parts.append(part)
        elif not eq:
            bare = name.strip()
            kept = not bare or bare.startswith(_TAPE_REDACTED)
            parts.append(part if kept else part[: len(part) - len(part.lstrip())] + REDACTED.encode())
        elif cookie_value.strip().startswith(_TAPE_REDACTED):
            parts.append(part)
        else:
            parts.append(name + b"=" + REDACTED.encode())
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
    if lowered in _SECRET_HEADERS:
        scheme = _AUTH_SCHEME.match(value) if lowered.endswith(b"authorization") else None
        credential = value[scheme.end(1) :].strip() if scheme else value.strip()
        if credential.startswith(_TAPE_REDACTED):
            return value
        return (scheme.group(1) + b" " if scheme else b"") + REDACTED.encode()
    # Replacements are ASCII, so latin-1 gives back every other byte as it was.
    return redact_text(value.decode("latin-1")).encode("latin-1")


def redact_headers(headers: Headers) -> Headers:
    """The same headers, in order and with duplicates, secret values replaced."""
    return tuple((name, redact_header_value(name, value)) for name, value in headers)


def redact_form(encoded: str) -> str:
    """A query string or urlencoded form with secret parameters' values replaced, order kept."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        tape_redacted = match.group("value").lower().startswith(_TAPE_REDACTED_QUERY)
        if match.group("eq") and not tape_redacted and is_secret_name(unquote_plus(name), in_query=True):
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
    """Free text with every value shaped like a secret replaced (names are not looked at here)."""
    text = _PRIVATE_KEY.sub(REDACTED, text)
    text = _JWT.sub(_REDACTED_JWT, text)
    text = _VENDOR_KEY.sub(REDACTED, text)
    return _redact_auth_credentials(text)


def _minimal_hints(names: frozenset[str]) -> tuple[str, ...]:
    """The names no other name contains: a text holding none of them holds none of ``names``."""
    return tuple(sorted(n for n in names if not any(o != n and o in n for o in names)))


# Anything redact_json could act on contains one of these (lower-cased): a secret field's name or
# the start of a secret shape. Most bodies contain none, and a few substring scans of the text are
# much cheaper than walking every node of the document. An escape could spell a name the text does
# not show ("pass\u0077ord"), so a document with backslashes is always walked.
_JSON_HINTS: Final = (
    *_minimal_hints(_SECRET_FIELDS),
    "eyj",
    "bearer",
    "basic",
    "private key",
    "akia",
    "asia",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "k_live_",
    "k_test_",
    "aiza",
)


def redact_json(value: Any, source_text: str | None = None) -> tuple[Any, bool]:
    """A copy of a parsed JSON value with secret-named fields' string values replaced; and whether any was.

    Only strings are replaced: counters such as ``tokens_used: 12`` are not secrets and a reviewer
    needs to see them change. Containers keep their shape so paths into them still resolve. With
    ``source_text`` (the JSON ``value`` was parsed from), a document that cannot hold a secret is
    returned as it is, uncopied.
    """
    if source_text is not None and "\\" not in source_text:
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
