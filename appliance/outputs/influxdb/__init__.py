"""The InfluxDB output: frames, check results and health counters through ``/api/v2/write``
(docs/DATA_FORMAT.md §2); :mod:`.output` is the implementation (influxdb-client, imported only when enabled)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from appliance.outputs.influxdb.config import InfluxConfig
from appliance.plugins import OutputPlugin, WorkerOptions
from appliance.records import TARIFF
from appliance.tariff.lines import LANE_LINES

if TYPE_CHECKING:
    from appliance.commands.doctor import Result
    from appliance.outputs.base import Output

__all__ = ["PLUGIN"]


def _build(settings: Any) -> Output:
    from appliance.outputs.influxdb.output import InfluxOutput

    return InfluxOutput(settings)


def _diagnose(settings: Any) -> Iterator[Result]:
    from appliance.commands.doctor import check_http

    yield check_http("influxdb", settings.url.rstrip("/") + "/ping", settings.timeout)


PLUGIN = OutputPlugin(
    "influxdb",
    "InfluxDB /api/v2/write: frames, check results, health counters; spooled while down",
    "appliance.outputs.influxdb.output",
    InfluxConfig,
    lambda cfg: cfg.outputs.influxdb,
    _build,
    # Tariff records: 13 lines each at most, kept for a 26-hour outage (appliance.tariff.lines.LANE_LINES).
    lambda s: WorkerOptions(s.queue_size, int(s.spool_max_mb * 1e6), s.batch_size, {TARIFF: LANE_LINES}),
    _diagnose,
)
