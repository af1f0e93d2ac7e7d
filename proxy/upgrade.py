"""Upgrade (WebSocket) pass-through: after the primary's 101, splice client and primary bytes.

A ``Tunnel`` joins two transports whose HTTP part is over. It copies bytes both ways as they come,
with back-pressure (a side whose write buffer is full stops the other side's reading), and closes
both sides when either ends. It must never parse, buffer without bound, or mirror what it carries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

__all__ = ["CLIENT", "PRIMARY_SIDE", "Tunnel"]

CLIENT: Final = 0
PRIMARY_SIDE: Final = 1


class Tunnel:
    """Two transports spliced together; each protocol forwards its events here."""

    __slots__ = ("_closed", "_on_closed", "_transports")

    def __init__(
        self,
        client: asyncio.Transport,
        primary: asyncio.Transport,
        on_closed: Callable[[], None],
    ) -> None:
        self._transports = (client, primary)
        self._on_closed = on_closed
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def received(self, side: int, data: bytes) -> None:
        """Bytes read on ``side`` go to the other side."""
        if self._closed or not data:
            return
        self._transports[1 - side].write(data)

    def write_paused(self, side: int, paused: bool) -> None:
        """``side``'s write buffer is full (or drained again): stop (or resume) reading the other."""
        other = self._transports[1 - side]
        if self._closed or other.is_closing():
            return
        if paused:
            other.pause_reading()
        else:
            other.resume_reading()

    def lost(self, side: int) -> None:
        """``side`` closed or reached EOF: flush and close the other side, once."""
        if self._closed:
            return
        self._closed = True
        for transport in self._transports:
            if not transport.is_closing():
                # close() flushes what is buffered, so the last frames still reach the peer.
                transport.close()
        self._on_closed()
