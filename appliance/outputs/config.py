"""``[outputs]``: one table per registered output (:data:`appliance.outputs.OUTPUTS`), each defined next to
its output (``appliance/outputs/<name>/config.py``); tests/test_plugins.py checks the two lists agree."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import section
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.outputs.mqtt.config import MqttConfig
from appliance.outputs.multicast.config import MulticastConfig

__all__ = ["OutputsConfig"]


@dataclass(frozen=True)
class OutputsConfig:
    """Where decoded frames go.  Each output has its own queue: a slow one never delays the others."""

    multicast: MulticastConfig = section(MulticastConfig)
    mqtt: MqttConfig = section(MqttConfig)
    influxdb: InfluxConfig = section(InfluxConfig)
