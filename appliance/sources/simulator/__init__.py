"""The simulator source: the built-in meter simulator, paced like a real meter (:mod:`.source`), for the demo
and the tests (``source.kind = "simulator"``, ``teleinfo run --simulate``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from appliance.plugins import SourcePlugin
from appliance.sources.simulator.config import SimulatorConfig

if TYPE_CHECKING:
    from appliance.sources import Source
    from appliance.stats import Stats

__all__ = ["PLUGIN"]


def _build(settings: Any, stats: Stats, stop: threading.Event) -> Source:
    from appliance.sources.simulator.source import SimulatedSource

    return SimulatedSource(settings, stats, stop)


PLUGIN = SourcePlugin(
    "simulator",
    "the built-in meter simulator ([source.simulator])",
    "appliance.sources.simulator.source",
    SimulatorConfig,
    lambda cfg: cfg.source.simulator,
    _build,
)
