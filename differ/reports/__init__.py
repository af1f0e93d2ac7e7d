"""shadowtap.differ.reports: renders a ``DiffReport`` for people and machines.

Terminal (rich), JSON (schema in docs/report-schema.md), one self-contained HTML file, a Markdown
pull-request comment and JUnit XML. Renderers only format: they never compare, rank differently from
each other, or show a secret (everything passes through ``shadowtap.differ.reports.redact`` at render time).
gRPC bodies are shown as protobuf field trees, named by the schema the diff used when rendered inside
``proto_schema(schema)``, else by field number.
"""

from shadowtap.differ.reports._bodies import proto_schema
from shadowtap.differ.reports.html import render_html, write_html
from shadowtap.differ.reports.json_report import report_to_dict, write_json
from shadowtap.differ.reports.junit import render_junit, write_junit
from shadowtap.differ.reports.markdown import render_markdown, write_markdown
from shadowtap.differ.reports.terminal import render_terminal

__all__ = [
    "proto_schema",
    "render_html",
    "render_junit",
    "render_markdown",
    "render_terminal",
    "report_to_dict",
    "write_html",
    "write_json",
    "write_junit",
    "write_markdown",
]
