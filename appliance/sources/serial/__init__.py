"""The serial source: a TIC adapter on a serial port or USB, reopened and speed-detected by itself
(:mod:`.source`, pyserial, imported only when ``source.kind = "serial"``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from appliance.plugins import SourcePlugin
from appliance.sources.serial.config import SourceConfig

if TYPE_CHECKING:
    from appliance.sources import Source
    from appliance.stats import Stats

__all__ = ["PLUGIN"]


def _build(settings: Any, stats: Stats, stop: threading.Event) -> Source:
    from appliance.sources.serial.source import SerialSource

    return SerialSource(settings, stats, stop)


PLUGIN = SourcePlugin(
    "serial",
    "a TIC adapter on a serial port or USB ([source])",
    "appliance.sources.serial.source",
    SourceConfig,
    lambda cfg: cfg.source,
    _build,
)
