"""Delivery when servers fail (docs/DESIGN.md section 2): real mosquitto and victoria-metrics stopped, hung
(SIGSTOP) and restarted, on 127.0.0.1 with free ports, each stopped by its own PID.

* After an outage the first delivery follows the server's return within a few seconds, whatever the backoff
  had grown to (30 s here): the worker probes the server while it backs off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.outputs.base import Output, OutputWorker
from appliance.outputs.influxdb.output import InfluxOutput
from appliance.outputs.mqtt.output import MqttOutput
from appliance.outputs.spool import Spool
from appliance.stats import Stats

from .mosquitto import Mosquitto
from .servers import VictoriaMetrics
from .test_influx import influx_cfg, sim_frames
from .test_mqtt import cfg_for, make_frames
from .util import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def first_delivery_after(
    output: Output, tmp_path: Path, frames: list, down: Callable[[], None], up: Callable[[], None]
) -> float:
    """Seconds from the server's return to the first delivery, with the worker's backoff at 30 s."""
    stats = Stats()
    w = OutputWorker(output, stats, spool=Spool(tmp_path / "spool"), backoff_initial=30.0, backoff_max=30.0)
    w.start()
    try:
        w.submit(frames[0])
        wait_until(lambda: stats.snapshot().outputs[w.name].sent == 1, 10)
        down()
        w.submit(frames[1])
        wait_until(lambda: stats.snapshot().outputs[w.name].state == "failing", 10)  # backing off for 30 s
        time.sleep(2.0)
        up()
        back = time.monotonic()
        wait_until(lambda: stats.snapshot().outputs[w.name].sent == 2, 35)
        return time.monotonic() - back
    finally:
        w.stop(2.0)


@pytest.mark.parametrize("fault", ["stopped", "hung"])
def test_influxdb_is_written_again_within_seconds_of_its_return(tmp_path: Path, fault: str) -> None:
    vm = VictoriaMetrics()
    vm.start(tmp_path)
    try:
        hung = fault == "hung"
        delay = first_delivery_after(
            InfluxOutput(influx_cfg(vm.url, timeout=1.0)),
            tmp_path,
            sim_frames(2, "historique"),
            vm.pause if hung else vm.stop,
            vm.resume if hung else lambda: vm.start(),
        )
        print(f"InfluxDB {fault}: first delivery {delay:.2f} s after its return (backoff 30 s)")
        assert delay < 3.0, delay
    finally:
        vm.stop()


@pytest.mark.parametrize("fault", ["stopped", "hung"])
def test_mqtt_is_published_again_within_seconds_of_the_brokers_return(tmp_path: Path, fault: str) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        hung = fault == "hung"
        delay = first_delivery_after(
            MqttOutput(cfg_for(broker), timeout=1.0),
            tmp_path,
            make_frames(2),
            broker.pause if hung else broker.stop,
            broker.resume if hung else lambda: broker.start(),
        )
        print(f"MQTT broker {fault}: first delivery {delay:.2f} s after its return (backoff 30 s)")
        assert delay < 3.0, delay
    finally:
        broker.stop()
