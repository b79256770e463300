"""Where records go: the registry of outputs.  The contract (:class:`~appliance.outputs.base.Output` and its
optional abilities) and the worker that isolates each output are in :mod:`appliance.outputs.base`.

Every output is one entry of :data:`OUTPUTS`: its name (the ``[outputs.<name>]`` section and the name in
``/status``), how to build it (its module is imported only then), how its worker is set up (queue, on-disk spool,
batch size) and what ``teleinfo doctor`` checks for it.  The service, ``teleinfo doctor`` and the documentation
loop over this tuple; docs/PLUGINS.md says how to add an output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.commands.doctor import Result
    from appliance.config import Config
    from appliance.outputs.base import Output

__all__ = ["OUTPUTS", "OutputPlugin", "WorkerOptions", "enabled_outputs"]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How the worker of one output is set up: its queue, its spool (None: best effort, never on disk)."""

    queue_size: int
    spool_max_bytes: int | None = None
    batch_size: int = 500


@dataclass(frozen=True)
class OutputPlugin:
    """A registered output.  ``section`` picks its settings out of the whole configuration; ``build`` makes the
    output (importing its module then); ``options`` sets up its worker; ``diagnose`` is its ``teleinfo doctor``
    check (it may reach the server, never send data)."""

    name: str
    summary: str
    module: str  # the implementation, imported by ``build`` only (for the docs and the convention test)
    section: Callable[[Config], Any]
    build: Callable[[Any], Output]
    options: Callable[[Any], WorkerOptions]
    diagnose: Callable[[Any], Iterator[Result]]


def _multicast(s: Any) -> Output:
    from appliance.outputs.multicast import MulticastOutput

    return MulticastOutput(s)


def _mqtt(s: Any) -> Output:
    from appliance.outputs.mqtt import MqttOutput

    return MqttOutput(s)


def _influxdb(s: Any) -> Output:
    from appliance.outputs.influx import InfluxOutput

    return InfluxOutput(s)


def _diagnose_multicast(s: Any) -> Iterator[Result]:
    from appliance.commands.doctor import check_multicast

    yield check_multicast(s)


def _diagnose_mqtt(s: Any) -> Iterator[Result]:
    from appliance.commands.doctor import check_tcp

    yield check_tcp("mqtt", s.host, s.port, "outputs.mqtt.host/port; is the broker running?")


def _diagnose_influxdb(s: Any) -> Iterator[Result]:
    from appliance.commands.doctor import check_http

    yield check_http("influxdb", s.url.rstrip("/") + "/ping", s.timeout)


def _spooled(s: Any, batch_size: int = 500) -> WorkerOptions:
    return WorkerOptions(s.queue_size, int(s.spool_max_mb * 1e6), batch_size)


#: Every output, in the order they are started and listed.
OUTPUTS: tuple[OutputPlugin, ...] = (
    OutputPlugin(
        "multicast",
        "UDP multicast to the LAN: line protocol or JSON, best effort",
        "appliance.outputs.multicast",
        lambda cfg: cfg.outputs.multicast,
        _multicast,
        lambda s: WorkerOptions(s.queue_size),
        _diagnose_multicast,
    ),
    OutputPlugin(
        "mqtt",
        "an MQTT broker: JSON states, Home Assistant discovery, check results; spooled while down",
        "appliance.outputs.mqtt",
        lambda cfg: cfg.outputs.mqtt,
        _mqtt,
        _spooled,
        _diagnose_mqtt,
    ),
    OutputPlugin(
        "influxdb",
        "InfluxDB /api/v2/write: frames, check results, health counters; spooled while down",
        "appliance.outputs.influx",
        lambda cfg: cfg.outputs.influxdb,
        _influxdb,
        lambda s: _spooled(s, s.batch_size),
        _diagnose_influxdb,
    ),
)


def enabled_outputs(cfg: Config) -> list[tuple[OutputPlugin, Any]]:
    """The enabled outputs of ``cfg``, each with its settings, in registry order."""
    return [(p, s) for p in OUTPUTS if (s := p.section(cfg)).enabled]
