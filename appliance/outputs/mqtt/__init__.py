"""The MQTT output: each frame's JSON for any subscriber, Home Assistant discovery, availability by last will,
check results retained (docs/DATA_FORMAT.md §4); :mod:`.output` is the implementation (paho-mqtt, imported only
when the output is enabled)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from appliance.outputs.mqtt.config import MqttConfig
from appliance.plugins import OutputPlugin, WorkerOptions

if TYPE_CHECKING:
    from appliance.commands.doctor import Result
    from appliance.outputs.base import Output

__all__ = ["PLUGIN"]


def _build(settings: Any) -> Output:
    from appliance.outputs.mqtt.output import MqttOutput

    return MqttOutput(settings)


def _diagnose(settings: Any) -> Iterator[Result]:
    from appliance.commands.doctor import check_tcp

    yield check_tcp("mqtt", settings.host, settings.port, "outputs.mqtt.host/port; is the broker running?")


PLUGIN = OutputPlugin(
    "mqtt",
    "an MQTT broker: JSON states, Home Assistant discovery, check results; spooled while down",
    "appliance.outputs.mqtt.output",
    MqttConfig,
    lambda cfg: cfg.outputs.mqtt,
    _build,
    lambda s: WorkerOptions(s.queue_size, int(s.spool_max_mb * 1e6)),
    _diagnose,
)
