"""The HTML report's document: self-contained, locked down by its CSP, escaped, highlighted (no browser)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import re
from html.parser import HTMLParser
from typing import Any

from pytest import MonkeyPatch

import shadowtap.differ.reports.html
from shadowtap.differ import DifferConfig, DiffSession, DiffStore, RunMeta
from shadowtap.differ.aggregate import build_report
from shadowtap.differ.report_model import DiffReport, EndpointReport, FieldStat
from shadowtap.differ.reports import render_html
from shadowtap.differ.reports._bodies import DisplayBody, display_body
from shadowtap.differ.reports.html import _asset, _changed_lines, _json_html
from shadowtap.recorder import Exchange, Request, Response
from tests.differ.report_fixtures import (
    HOSTILE_MARKERS,
    IMG_PAYLOAD,
    SCRIPT_PAYLOAD,
    SECRETS,
    inconclusive_report,
    passing_report,
    rich_report,
)


class Outline(HTMLParser):
    """Tags, attributes and the raw contents of <script>/<style> in a document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.raw: dict[str, list[str]] = {"script": [], "style": []}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in self.raw:
            self._in = tag
            self.raw[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self.raw[self._in][-1] += data

    def count(self, tag: str) -> int:
        return sum(1 for name, _ in self.tags if name == tag)


def outline(document: str) -> Outline:
    parser = Outline()
    parser.feed(document)
    parser.close()
    return parser


def sha256_source(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def test_the_document_is_self_contained() -> None:
    document = render_html(rich_report())
    parsed = outline(document)
    for tag, attrs in parsed.tags:
        assert "src" not in attrs, tag
        assert tag not in ("link", "iframe", "object", "embed", "base", "form", "img")
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    assert parsed.count("script") == 1 and parsed.count("style") == 1
    assert "url(" not in parsed.raw["style"][0] and "@import" not in parsed.raw["style"][0]
    assert "fetch(" not in parsed.raw["script"][0] and "XMLHttpRequest" not in parsed.raw["script"][0]


def test_csp_admits_exactly_the_inline_script_and_style() -> None:
    document = render_html(passing_report())
    parsed = outline(document)
    (csp,) = [a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp is not None
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == sha256_source(parsed.raw["script"][0]) == sha256_source(_asset("report.js"))
    assert directives["style-src"] == sha256_source(parsed.raw["style"][0])
    assert directives["base-uri"] == "'none'" and directives["form-action"] == "'none'"


def test_hostile_text_is_escaped_everywhere() -> None:
    document = render_html(rich_report())
    for marker in HOSTILE_MARKERS:
        assert marker not in document
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in document
    assert IMG_PAYLOAD.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") in document
    parsed = outline(document)
    assert parsed.count("script") == 1 and parsed.count("img") == 0 and parsed.count("b") > 0
    assert all(not name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    assert SCRIPT_PAYLOAD not in "".join(parsed.raw["script"])


def test_secrets_are_redacted() -> None:
    document = render_html(rich_report())
    for secret in SECRETS:
        assert secret not in document
    assert "Bearer [redacted]" in document
    assert "session=[redacted]; Path=/; HttpOnly" in document
    assert "/users/7?token=[redacted]&amp;expand=orders" in document


def section(document: str, signature_id: str) -> str:
    start = document.index(f'id="sig-{signature_id}"')
    # A signature's <details> ends its body <div>; the header folds inside it end their <table>.
    return document[start : document.index("</div></details>", start)]


def test_differing_paths_are_highlighted_on_each_side() -> None:
    document = render_html(rich_report())
    removed = section(document, "sig-removed")
    assert '<mark class="hl" title="body.email"><span class="jk">"email"</span>: ' in removed
    assert '<mark class="hl" title="body.orders[1].total">' in removed
    status = section(document, "sig-status")
    assert status.count('<p class="status hl">') == 2
    assert '<pre class="body hl-block">' in status  # the whole-body change (HTML error page vs JSON)
    text = section(document, "sig-text")
    assert '<mark class="hl">result LINE five</mark>' in text
    assert '<mark class="hl">extra</mark>' in text
    assert '<mark class="hl">result line 4</mark>' not in text
    binary = section(document, "sig-binary")
    assert '<tr class="hl"><th>Cache-Control</th>' in binary
    assert binary.count('<pre class="body hl-block">binary, 10 bytes') == 2
    failure = section(document, "sig-error")
    assert "failed: <b>timeout</b> no response within 2.0s" in failure


def test_overview_endpoints_fields_and_suppressions() -> None:
    document = render_html(rich_report())
    for card, number in (("pairs", 1300), ("differing", 260), ("noise-suppressed", 1110), ("errors", 7)):
        assert f'data-card="{card}"><span class="num">{number}</span>' in document
    assert '<p class="verdict fail"><b>FAIL</b>' in document
    order = re.findall(r'<details class="endpoint ep-(\w+)[^"]*" id="ep-(\d+)" data-endpoint="([^"]*)"', document)
    assert [(sev, name) for sev, _, name in order][:3] == [
        ("critical", "GET /users/{id}"),
        ("critical", "GET /orders/{id}/&lt;b&gt;&lt;script&gt;window.__pwned = 1&lt;/script&gt;"),
        ("high", "POST /orders"),
    ]
    users = document[document.index('id="ep-0"') : document.index('id="ep-1"')]
    fields = re.findall(r'<tr class="d(\d)[^"]*"><td><code class="path">([^<]*)</code>', users)
    assert fields == [
        ("0", "status"),
        ("0", "header.x-request-id"),
        ("0", "body"),
        ("1", "body.email"),
        ("1", "body.orders[*]"),
        ("2", "body.orders[*].total"),
        ("1", "body.updated_at"),
    ]
    suppressions = document[document.index('<section id="suppressions">') :]
    assert "<h2>Noise suppressed: 1110</h2>" in suppressions
    assert '<td><code>volatile:timestamp</code></td><td class="num">480</td>' in suppressions
    assert '<a href="#sig-sig-score"><code>body.score</code></a>' in suppressions
    assert "<td>learned-noise</td>" in suppressions


def test_an_empty_report_still_renders_a_useful_page() -> None:
    document = render_html(inconclusive_report())
    assert "no endpoints were compared" in document
    assert "nothing was suppressed" in document
    assert '<p class="verdict inconclusive"><b>INCONCLUSIVE</b>' in document


def test_a_path_missing_on_one_side_gets_a_placeholder_there() -> None:
    removed = section(render_html(rich_report()), "sig-removed")
    assert '<mark class="hl absent" title="body.email"><span class="jk">"email"</span>: (absent)</mark>' in removed
    assert removed.count('title="body.email"') == 2  # the value on one side, the placeholder on the other


def test_json_highlighting_handles_odd_keys_indexes_and_empty_containers() -> None:
    patterns = [("odd key", 1), ("gone",), ("list", 3), ("empty", "x")]
    value = {"odd key": [0, {"a": 1}], "list": [1], "empty": {}}
    rendered = _json_html(value, patterns)
    assert '<mark class="hl" title="body[&quot;odd key&quot;][1]">{' in rendered
    assert '<mark class="hl absent" title="body.gone"><span class="jk">"gone"</span>: (absent)</mark>' in rendered
    assert '<mark class="hl absent" title="body.list[3]">(absent)</mark>' in rendered
    assert '<span class="jk">"empty"</span>: {\n' in rendered
    # Placeholders are not JSON: stripping the markup leaves a document that parses without them.
    plain = re.sub(r"<[^>]+>", "", rendered)
    plain = "\n".join(line for line in plain.split("\n") if "(absent)" not in line).replace("&quot;", '"')
    assert json.loads(plain) == value
    assert _json_html({"a": 1}, [()]).startswith('<mark class="hl" title="body">{')


def test_json_is_indented_like_json_dumps_inside_and_outside_highlighted_subtrees() -> None:
    value = {"a": {"b": [1, {"c": '<x> & "y"'}], "d": {}}, "e": [[], [2, 3]], "f": None}
    for patterns in ([], [("e",)], [("a", "b", 1, "c")], [("a", "b", "*", "c")], [()]):
        rendered = _json_html(value, patterns)  # type: ignore[arg-type]
        assert html.unescape(re.sub(r"<[^>]+>", "", rendered)) == json.dumps(value, indent=2), patterns
        # Text is escaped for an element, never left as markup.
        assert "&lt;x&gt; &amp;" in rendered


def test_a_huge_report_keeps_full_examples_for_the_top_and_tables_for_the_rest(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(shadowtap.differ.reports.html, "EXAMPLES_BUDGET_CHARS", 60_000)
    report = rich_report()
    orders = report.endpoints[1]  # two signatures sampled the same exchange

    def copy(i: int) -> EndpointReport:
        signatures = tuple(
            dataclasses.replace(
                sig,
                id=f"{sig.id}-{i}",
                examples=tuple(
                    dataclasses.replace(e, request=dataclasses.replace(e.request, target=f"/orders?copy={i}"))
                    for e in sig.examples
                ),
            )
            for sig in orders.signatures
        )
        return dataclasses.replace(orders, endpoint=f"POST /orders/{i}", signatures=signatures)

    document = render_html(dataclasses.replace(report, endpoints=(report.endpoints[0], *(copy(i) for i in range(30)))))
    omitted = "full request and responses omitted: this report reached its size budget"
    linked = "request and responses shown once, under"
    first = section(document, "sig-status")
    assert omitted not in first and '<div class="request">' in first
    full, compact, links = document.count('<div class="request">'), document.count(omitted), document.count(linked)
    # Every example is there in one form or another: GET /users/{id} has three (two of them the
    # same exchange), each copy two (the same exchange).
    assert full + compact + links == 3 + 30 * 2
    assert full > 3 and compact > 3 and links == full - 1
    # A link leads to the example shown in full.
    anchors = re.findall(r'shown once, under <a href="#(sig-[^"]+)">', document)
    assert len(anchors) == links
    for anchor in anchors:
        assert '<div class="request">' in section(document, anchor.removeprefix("sig-"))
    # Even an omitted example keeps what differed, with both values.
    last = document[document.rindex('<div class="example">') :]
    assert omitted in last
    assert "<td><code>20</code></td><td><code>&quot;20.00&quot;</code></td>" in last
    assert len(document) < 200_000


def many_pairs_report(endpoints: int = 20, pairs_per_endpoint: int = 15) -> DiffReport:
    """A real run through the engine and the store: ``endpoints`` x ``pairs_per_endpoint`` differing
    pairs (and five equal ones per endpoint) of a 600-byte JSON customer with eight headers.

    Every pair changes an order total (medium); every fifth endpoint also loses ``email`` (high:
    fails the default gate), every fifth from the second answers a third of its pairs with a 500.
    """
    store = DiffStore(":memory:")
    session = DiffSession(store, DifferConfig(), RunMeta("primary", "v2", None, ()))

    def response(i: int, status: int, doc: dict[str, Any]) -> Response:
        body = json.dumps(doc).encode()
        headers = (
            (b"Content-Type", b"application/json"),
            (b"Date", b"Tue, 14 Nov 2023 22:13:20 GMT"),
            (b"Server", b"nginx/1.25"),
            (b"Cache-Control", b"private, max-age=0"),
            (b"X-Request-Id", f"req-{i:08x}-4b1c".encode()),
            (b"ETag", f'W/"{i:x}-{len(body)}"'.encode()),
            (b"Vary", b"Accept-Encoding"),
            (b"Content-Length", str(len(body)).encode()),
        )
        return Response(status, "OK", headers, body)

    n = 0
    for k in range(endpoints):
        for j in range(pairs_per_endpoint + 5):
            n += 1
            i = 1000 + n
            doc: dict[str, Any] = {
                "id": i,
                "name": f"customer {i}",
                "email": f"c{i}@example.com",
                "address": {"street": f"{i} Main St", "city": "Springfield", "zip": f"{10000 + i}"},
                "orders": [{"id": i * 10 + o, "total": 10 * o + 0.5, "status": "shipped"} for o in range(6)],
            }
            changed = json.loads(json.dumps(doc))
            status = 200
            if j < pairs_per_endpoint:
                changed["orders"][1]["total"] += 1
                if k % 5 == 0:
                    del changed["email"]
                if k % 5 == 1 and j % 3 == 0:
                    status = 500
            request = Request("GET", f"/api{k}/customers/{i}?expand=orders", ((b"Accept", b"application/json"),))
            session.add(
                Exchange(
                    id=f"e{i}",
                    started_at_ns=1_700_000_000 * 10**9 + i * 10**6,
                    request=request,
                    primary=response(i, 200, doc),
                    shadows={"v2": response(i + 7, status, changed)},
                )
            )
    session.finish()
    return build_report(store, DifferConfig())


def test_a_few_hundred_differing_pairs_make_a_small_report() -> None:
    report = many_pairs_report()
    assert (report.differing, len(report.endpoints)) == (300, 20)
    assert sum(len(s.examples) for e in report.endpoints for s in e.signatures) > 60
    document = render_html(report)
    assert len(document.encode()) < 200_000
    # Small by showing each signature one example in full and the others by their differing values.
    signatures = sum(len(e.signatures) for e in report.endpoints)
    full = document.count('<div class="request">')
    linked = document.count("request and responses shown once, under")
    assert 8 <= full <= signatures and full + linked + document.count("size budget") == signatures
    # Examples with the same differing values are one entry that names the others.
    assert document.count('<div class="example compact">') > 0
    assert re.search(r"\d more examples? with the same values: <code>e\d+</code>", document)
    # The endpoints that fail the gate are open, the others closed; headers fold behind the bodies.
    opened = re.findall(r'<details class="endpoint [^"]*" id="ep-\d+" data-endpoint="([^"]*)" open>', document)
    failing = {s.endpoint for e in report.endpoints for s in e.signatures if s.id in report.verdict.failing_signatures}
    assert set(opened) == failing and len(failing) == 8
    assert document.count('<details class="endpoint') == 20
    assert '<details class="hdrs"><summary>8 headers</summary>' in document
    side = document[document.index('<div class="side">') :]
    assert side.index('<pre class="body">') < side.index('<details class="hdrs">')


def test_failing_signatures_are_listed_up_front_with_links() -> None:
    document = render_html(rich_report())
    failing = document[
        document.index('<section id="failing">') : document.index("</section>", document.index('id="failing"'))
    ]
    assert "<h2>Failing the gate (5)</h2>" in failing
    links = re.findall(r'<a href="#sig-([^"]+)">', failing)
    # Most severe first, then by rate: the timeout at 25% before the 500s at 2.4%.
    assert links == ["sig-error", "sig-status", "sig-currency", "sig-type", "sig-removed"]
    assert '<section id="failing">' not in render_html(passing_report())


def _text_body(text: str) -> DisplayBody:
    return display_body(((b"Content-Type", b"text/plain"),), text.encode())


def test_line_diffs_mark_exactly_the_changed_lines() -> None:
    left = _text_body("a\nb\nc\nd\ne")
    right = _text_body("a\nB\nc\nd\ne\nf")
    assert _changed_lines(left, right) == (frozenset({1}), frozenset({1, 5}))
    assert _changed_lines(left, left) == (frozenset(), frozenset())
    assert _changed_lines(left, _text_body("")) is None  # text vs empty: the whole body is the change


def test_line_diffs_stay_bounded_on_repetitive_text() -> None:
    # 2,000 periodic lines took difflib 29 s; the changed middle is now marked as a block instead.
    left = _text_body("\n".join(f"l{i % 7}" for i in range(2000)))
    right = _text_body("\n".join(f"l{(i * 3) % 7}" for i in range(2000)))
    changed = _changed_lines(left, right)
    assert changed is not None
    assert len(changed[0]) > 1900 and len(changed[1]) > 1900


def test_field_tree_shows_the_busiest_paths_of_a_huge_endpoint() -> None:
    report = rich_report()
    fields = tuple(FieldStat(f"body.f{i}", i, 1000, 0, None) for i in range(1000))
    wide = dataclasses.replace(report.endpoints[0], fields=fields)
    document = render_html(dataclasses.replace(report, endpoints=(wide,)))
    assert document.count('<code class="path">body.f') == 300
    assert '<code class="path">body.f999</code>' in document and '<code class="path">body.f699</code>' not in document
    assert "700 quieter paths not shown (the JSON report lists them all)" in document
