"""Where the meter's bytes come from: the :class:`Source` contract and the registry of sources.

A source hands raw bytes to the service's reader loop and keeps itself alive: it never raises for I/O problems,
it reopens what was lost, and it returns from every ``read()`` within about 0.25 s so the loop can keep pinging
systemd, reloading and stopping.  The service tells it which frames verified (``frame_ok``/``frame_bad``), which
is the only honest measure of progress: a port that delivers garbage is as dead as a silent one (docs/PROTOCOL.md
§10.8).

Each source is a folder ``appliance/sources/<name>/`` (:mod:`appliance.plugins` gives the shape) whose
implementation is imported only when configured (:func:`build_source`), so the simulator never loads pyserial
and a serial appliance never loads the simulator.  ``source.kind`` names one of :data:`SOURCES`;
docs/PLUGINS.md says how to add one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from appliance.plugins import SourcePlugin
from appliance.sources import serial, simulator

if TYPE_CHECKING:
    from appliance.schema import Config
    from appliance.stats import Stats

__all__ = ["SOURCES", "Source", "SourcePlugin", "build_source"]


class Source(Protocol):
    """Where the TIC bytes come from: the serial port or the simulator."""

    def read(self) -> bytes:
        """The next bytes, possibly ``b""``, within about 0.25 s; never raises for I/O problems."""
        ...

    def frame_ok(self, mode: str) -> None:
        """A frame read from this source verified in ``mode`` (progress: the no-data watchdog restarts)."""

    def frame_bad(self) -> None:
        """A frame came but did not verify (while detecting the speed: evidence of the wrong one)."""

    def close(self) -> None:
        """Release the port for good; later reads return ``b""``."""


#: Every source, by the name ``source.kind`` gives it.
SOURCES: dict[str, SourcePlugin] = {p.name: p for p in (serial.PLUGIN, simulator.PLUGIN)}


def build_source(cfg: Config, stats: Stats, stop: threading.Event) -> Source:
    """The configured source (imports only what it needs)."""
    plugin = SOURCES[cfg.source.kind]
    return plugin.build(plugin.section(cfg), stats, stop)
