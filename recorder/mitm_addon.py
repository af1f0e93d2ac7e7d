"""A mitmproxy addon that records every HTTP flow into a shadowtap tape: ``mitmdump -s recorder/mitm_addon.py``.

mitmproxy does what shadowtap's proxy does not (TLS interception, HTTP/2 and HTTP/3, forward-proxy
mode); this addon turns what it sees into the same tape, with the same redaction rules (the defaults,
or ``shadowtap_redaction_config``: a file with the proxy's ``record.redaction`` section). Options are
declared the mitmproxy way in ``load`` and read once per change in ``configure`` into a validated
``RecorderSettings``. This module must never block mitmproxy's event loop: hooks only build an
Exchange and hand it to ``TapeWriter.submit`` (a bounded queue; a thread encodes, redacts and writes),
and it must never fail a flow: a full queue drops the recording, counted, never the traffic.

    mitmdump --mode reverse:https://api.internal -s recorder/mitm_addon.py --set shadowtap_tape=tapes/api

See docs/interop.md for HTTPS capture in forward and reverse mode.
"""

# No ``from __future__ import annotations``: mitmproxy runs this file as a script module that is not
# in sys.modules, where dataclasses cannot resolve string annotations.
import asyncio
import dataclasses
import logging
import random
import time
import tomllib
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Optional

from shadowtap.recorder.errors import ConfigError, ShadowtapError
from shadowtap.recorder.formats.mitm import exchange_from_flow
from shadowtap.recorder.redact import RedactionRules
from shadowtap.recorder.writer import TapeOptions, TapeWriter

if TYPE_CHECKING:
    from mitmproxy import http

__all__ = ["RecorderSettings", "TapeRecorder", "addons"]

log = logging.getLogger(__name__)

#: Flows this addon has already recorded (a flow can see both ``response`` and ``error``).
_RECORDED_KEY: Final = "shadowtap.recorded"
_NS_PER_S: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    """The addon's options after validation; ``tape=None`` means "not recording"."""

    tape: Path | None = None
    redact: bool = True
    #: What is redacted (``redact`` switches it off).
    rules: RedactionRules = RedactionRules()
    sample_percent: int = 100
    #: Bodies longer than this are cut (``truncated_from`` keeps the size); 0 keeps whole bodies.
    body_cap_bytes: int = 1024 * 1024
    compression: str = "none"

    def __post_init__(self) -> None:
        if not 0 <= self.sample_percent <= 100:
            raise ConfigError("must be from 0 to 100", field="shadowtap_sample_percent")
        if self.body_cap_bytes < 0:
            raise ConfigError("must be 0 (no cap) or a positive number of bytes", field="shadowtap_body_cap_bytes")
        if self.compression not in ("none", "zstd"):
            raise ConfigError("must be 'none' or 'zstd'", field="shadowtap_compression")


def load_redaction_rules(path: Optional[str]) -> RedactionRules:  # noqa: UP045 - see the imports' note
    """The rules in ``path`` (YAML, or TOML by extension): its ``redaction`` section, or
    ``record.redaction`` as a proxy config holds it; the defaults when ``path`` is None."""
    if path is None:
        return RedactionRules()
    where = "shadowtap_redaction_config"
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as binary:
                try:
                    data: Any = tomllib.load(binary)
                except tomllib.TOMLDecodeError as exc:
                    raise ConfigError(f"not TOML: {exc}", field=where, path=path) from exc
        else:
            import yaml

            with open(path, encoding="utf-8") as text:
                try:
                    data = yaml.safe_load(text)
                except (yaml.YAMLError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"not YAML: {exc}", field=where, path=path) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", field=where, path=path) from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with a 'redaction' section", field=where, path=path)
    if "redaction" in data:
        return RedactionRules.from_mapping(data["redaction"], "redaction")
    record = data.get("record")
    if isinstance(record, dict) and "redaction" in record:
        return RedactionRules.from_mapping(record["redaction"], "record.redaction")
    raise ConfigError("no 'redaction' (or 'record.redaction') section", field=where, path=path)


class TapeRecorder:
    """Records HTTP flows (responses and errors) into a tape through an asyncio ``TapeWriter``."""

    def __init__(self) -> None:
        self.settings = RecorderSettings()
        self.writer: TapeWriter | None = None
        self.sampled_out = 0
        self._random = random.Random()
        self._starting: asyncio.Task[None] | None = None
        # Start and close run as tasks; the references keep them from being collected mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()

    def load(self, loader: Any) -> None:
        # mitmproxy compares typespecs against ``Optional[str]`` itself, so the spelling matters here.
        loader.add_option(
            "shadowtap_tape",
            Optional[str],  # noqa: UP045
            None,
            "shadowtap: tape directory to record every HTTP flow into",
        )
        loader.add_option(
            "shadowtap_redact",
            bool,
            True,
            "shadowtap: redact credentials (Authorization, Cookie, X-Api-Key, X-Auth-Token, ...; query, JSON and "
            "form fields such as password, token, access_token, api_key) with a keyed hash at write time; the "
            "key is $SHADOWTAP_REDACTION_KEY or $XDG_STATE_HOME/shadowtap/redaction.key, never in the tape",
        )
        loader.add_option(
            "shadowtap_redaction_config",
            Optional[str],  # noqa: UP045
            None,
            "shadowtap: YAML or TOML file whose 'redaction' section (or 'record.redaction', as in a "
            "shadowtap proxy config) sets the redaction rules",
        )
        loader.add_option("shadowtap_sample_percent", int, 100, "shadowtap: percentage of flows to record (0-100)")
        loader.add_option(
            "shadowtap_body_cap_bytes",
            int,
            1024 * 1024,
            "shadowtap: record at most this many bytes of each body (0: no cap); the full size is kept",
        )
        loader.add_option(
            "shadowtap_compression", str, "none", "shadowtap: tape block compression", choices=["none", "zstd"]
        )

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx, exceptions

        if not any(name.startswith("shadowtap_") for name in updated):
            return
        options = ctx.options
        try:
            settings = RecorderSettings(
                tape=Path(options.shadowtap_tape) if options.shadowtap_tape else None,
                redact=options.shadowtap_redact,
                rules=load_redaction_rules(options.shadowtap_redaction_config),
                sample_percent=options.shadowtap_sample_percent,
                body_cap_bytes=options.shadowtap_body_cap_bytes,
                compression=options.shadowtap_compression,
            )
        except ConfigError as exc:
            raise exceptions.OptionsError(str(exc)) from exc  # type: ignore[no-untyped-call]
        if self.writer is not None and (settings.tape, settings.redact, settings.rules, settings.compression) != (
            self.settings.tape,
            self.settings.redact,
            self.settings.rules,
            self.settings.compression,
        ):
            # Switching tapes needs an await (close the old writer): restart mitmdump instead.
            raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
                "shadowtap_tape, _redact, _redaction_config and _compression cannot change while recording"
            )
        self.settings = settings

    def running(self) -> "asyncio.Task[None] | None":
        # Hooks are plain functions returning a task: mitmproxy awaits it at start-up and shutdown,
        # and calls hooks synchronously when it hot-reloads this script, where an async def fails.
        settings = self.settings
        if settings.tape is None or self.writer is not None:
            return None
        options = TapeOptions(
            compression="zstd" if settings.compression == "zstd" else "none",
            redaction=settings.rules if settings.redact else None,
        )
        # submit() queues (bounded) until the writer's thread is up.
        self.writer = TapeWriter(settings.tape, options)
        self._starting = self._track(self._start(self.writer))
        return self._starting

    async def _start(self, writer: TapeWriter) -> None:
        try:
            await writer.start()
        except ShadowtapError as exc:
            # One clear line; mitmproxy's errorcheck then stops mitmdump, as it does for its own errors.
            log.error("shadowtap: cannot record: %s", exc)
            if self.writer is writer:
                self.writer = None
            return
        settings = self.settings
        log.info("shadowtap: recording into %s (redaction %s)", settings.tape, "on" if settings.redact else "off")

    def _track(self, work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def response(self, flow: "http.HTTPFlow") -> None:
        if flow.websocket is not None:
            # A WebSocket follows this 101: record once it ends, with its message count.
            return
        self._record(flow)

    def websocket_end(self, flow: "http.HTTPFlow") -> None:
        self._record(flow)

    def error(self, flow: "http.HTTPFlow") -> None:
        self._record(flow)

    def _record(self, flow: "http.HTTPFlow") -> None:
        writer = self.writer
        if writer is None or flow.metadata.get(_RECORDED_KEY):
            return
        flow.metadata[_RECORDED_KEY] = True
        percent = self.settings.sample_percent
        if percent < 100 and self._random.random() * 100 >= percent:
            self.sampled_out += 1
            return
        cap = self.settings.body_cap_bytes or None
        exchange = exchange_from_flow(flow, body_cap_bytes=cap)
        # The flow's wall-clock start, mapped onto this host's monotonic clock for exact intervals.
        age_ns = time.time_ns() - exchange.started_at_ns
        tags = {**exchange.tags, "source": "mitm-addon", "mitm.mode": flow.client_conn.proxy_mode.full_spec}
        exchange = dataclasses.replace(exchange, started_mono_ns=time.monotonic_ns() - age_ns, tags=tags)
        # False means dropped (queue full): the writer counts it, and the flow goes on untouched.
        writer.submit(exchange)

    def done(self) -> "asyncio.Task[None] | None":
        writer, self.writer = self.writer, None
        if writer is None:
            return None
        return self._track(self._close(writer, self._starting))

    async def _close(self, writer: TapeWriter, starting: "asyncio.Task[None] | None") -> None:
        if starting is not None:
            await starting  # closing before the thread is up would drop what is queued
        await writer.close()
        stats = writer.stats
        log.info(
            "shadowtap: %d exchanges written to %s (%d sampled out, %d dropped: queue full, %d write errors)",
            stats.written,
            self.settings.tape,
            self.sampled_out,
            stats.dropped_queue_full + stats.dropped_closed,
            stats.write_errors,
        )


addons = [TapeRecorder()]
