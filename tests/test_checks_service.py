"""Check results in InfluxDB and in the service: the line protocol (documented in docs/DATA_FORMAT.md section 5)
lands in VictoriaMetrics through the InfluxDB output's record lane and is accepted by influxd 1.6.7's strict
parser with stable field types; an unreachable server keeps a bounded backlog; a hung or crashing check is
abandoned or reported without stopping anything; ``teleinfo run`` runs the checks on the control socket's
``check now`` and shows them in the health socket's /status, while meter frames keep flowing."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from appliance.checks import scheduler
from appliance.checks.peers.check import _compare
from appliance.checks.peers.config import PeerConfig
from appliance.checks.ports import check as ports_module
from appliance.checks.ports.check import ScanReport, check_target
from appliance.checks.ports.config import PortsCheckConfig, PortsTargetConfig
from appliance.checks.public_ip.check import PublicIpChecker
from appliance.checks.public_ip.config import PublicIpCheckConfig
from appliance.checks.results import ERROR, CheckResult, to_lines
from appliance.checks.scheduler import CheckRunner, CheckScheduler
from appliance.commands.status import fetch
from appliance.config import parse_config
from appliance.outputs.base import Fanout, OutputWorker
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.outputs.influxdb.output import InfluxOutput
from appliance.outputs.mqtt.output import MqttOutput
from appliance.records import CHECK, CheckRun
from appliance.schema import Config
from appliance.service import simulated
from appliance.stats import Stats

from .servers import InfluxD, VictoriaMetrics
from .test_checks_public_ip import Providers
from .util import free_port, wait_until

pytestmark = pytest.mark.integration


class VM(VictoriaMetrics):
    """victoria-metrics on 127.0.0.1 (tests/servers.py); stop() then start() is an outage."""

    def values(self, match: str) -> dict[tuple[tuple[str, str], ...], list[float]]:
        """``{sorted labels: sorted values}`` of the series matching ``match`` (one second's points: any order)."""
        return {tuple(sorted(s["metric"].items())): sorted(s["values"]) for s in self.export(match)}


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VM]:
    server = VM()
    server.start(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    p.thread.start()
    yield p
    p.release.set()
    p.server.shutdown()
    p.server.server_close()


@pytest.fixture
def listener() -> Iterator[int]:
    s = socket.create_server(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def sample_results(providers: Providers, port: int) -> list[CheckResult]:
    """Real results of every kind: public IP ok and error, ports ok and error, a peer discrepancy and a refusal."""
    ip_ok = PublicIpChecker(PublicIpCheckConfig(providers=[providers.url("/valid")])).run(time.monotonic() + 5)
    ip_err = PublicIpChecker(PublicIpCheckConfig(providers=[providers.url("/html")])).run(time.monotonic() + 5)
    ports = PortsCheckConfig()
    t = PortsTargetConfig(host="127.0.0.1", ports=str(port), expected=[port])
    ports_ok = check_target(ports, t, time.monotonic() + 30)
    ports_err = check_target(replace(ports, nmap="/nonexistent/nmap"), t, time.monotonic() + 5)
    peer = PeerConfig(name="office", host="192.0.2.1", key_file="/k")
    here = ScanReport("127.0.0.1", frozenset({22, port}), {}, 0.1)
    there = ScanReport("127.0.0.1", frozenset({22}), {}, 0.1)
    diff = _compare(peer, "127.0.0.1", here, there, 0.5)
    refused = CheckResult("peers", "office", ERROR, "office: host key CHANGED", {"host_key_refused": True})
    return [*ip_ok, *ip_err, ports_ok, ports_err, diff, refused]


def lane(stats: Stats, output: str) -> dict[str, Any]:
    """The counters of an output's lane of check records (``outputs.<name>.records.check`` in /status)."""
    return dict(stats.snapshot().outputs[output].records.get(CHECK, {}))


def run_of(results: list[CheckResult]) -> CheckRun:
    return CheckRun("ports", "error", time.time(), tuple(results))


def test_results_land_in_victoriametrics(vm: VM, providers: Providers, listener: int) -> None:
    results = sample_results(providers, listener)
    stats = Stats()
    worker = OutputWorker(InfluxOutput(InfluxConfig(url=vm.url, timeout=2.0)), stats, lane_sizes={CHECK: 100})
    worker.start()
    try:
        worker.submit_record(run_of(results))
        wait_until(lambda: lane(stats, "influxdb").get("written") == len(to_lines(results)), 10)
    finally:
        worker.stop(2.0)
    assert lane(stats, "influxdb") == {
        "written": len(to_lines(results)),
        "failed": 0,
        "dropped": 0,
        "backlog": 0,
        "last_error": None,
    }
    codes = vm.values('{__name__="teleinfo_check_code"}')
    by_target = {dict(k)["check"] + ":" + dict(k)["target"]: v for k, v in codes.items()}
    assert by_target["public_ip:public"] == [0, 2]  # ok, then no provider gave a valid address
    assert by_target["ports:127.0.0.1"] == [0, 2]
    assert by_target["peers:office/127.0.0.1"] == [1]
    assert by_target["peers:office"] == [2]
    (opened,) = vm.values('{__name__="teleinfo_ports_open"}').values()
    assert opened == [1]
    only_local = vm.values('{__name__="teleinfo_peer_ports_only_local"}')
    assert only_local == {
        (("__name__", "teleinfo_peer_ports_only_local"), ("peer", "office"), ("target", "127.0.0.1")): [1]
    }
    assert list(vm.values('{__name__="teleinfo_public_ip_version"}').values()) == [[4]]


def test_unreachable_server_keeps_a_bounded_backlog(vm: VM, providers: Providers, listener: int) -> None:
    results = sample_results(providers, listener)
    lines = to_lines(results)
    assert len(lines) == 9
    assert len(to_lines(results[:3])) == 5  # two runs: 5 lines, then 4
    vm.stop()
    stats = Stats()
    out = InfluxOutput(InfluxConfig(url=vm.url, timeout=1.0))
    worker = OutputWorker(out, stats, lane_sizes={CHECK: 6}, backoff_initial=0.2, backoff_max=0.5)
    worker.start()
    try:
        start = time.monotonic()
        worker.submit_record(run_of(results[:3]))
        wait_until(lambda: lane(stats, "influxdb").get("failed") == 5, 5)
        worker.submit_record(run_of(results[3:]))
        wait_until(lambda: lane(stats, "influxdb").get("failed") == 9, 5)
        assert time.monotonic() - start < 5
        c = lane(stats, "influxdb")
        assert c["failed"] == 9
        assert c["backlog"] == 6
        assert c["dropped"] == 3  # the oldest
        assert c["last_error"] == "connection refused"
        vm.start()  # same port, same data: the backlog is written once the server answers
        wait_until(lambda: lane(stats, "influxdb").get("written") == 6, 10)
        assert lane(stats, "influxdb")["backlog"] == 0
    finally:
        worker.stop(2.0)
    assert len(vm.export('{__name__=~"teleinfo_.*"}')) > 0


def test_line_protocol_is_accepted_by_influxd_with_stable_types(
    tmp_path: Path, providers: Providers, listener: int
) -> None:
    server = InfluxD()
    http_port, _ = server.start(tmp_path)
    try:
        server.execute('CREATE DATABASE "checks"')
        first = sample_results(providers, listener)
        providers.address = "81.56.1.3"
        second = sample_results(providers, listener)  # other values, same types (empty strings, zeros...)
        for batch in (first, second):
            body = "\n".join(to_lines(batch)).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/write?db=checks&precision=s", data=body, method="POST"
            )
            with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - an http:// URL built above
                assert r.status == 204
        types: dict[str, dict[str, str]] = {}
        for result in server.query("checks", "SHOW FIELD KEYS")["results"]:
            for series in result["series"]:
                types[series["name"]] = dict(series["values"])
        assert types == documented_fields()  # exactly what docs/DATA_FORMAT.md section 5 says
        assert types["teleinfo_public_ip"]["changed"] == "boolean"
        rows = server.rows("checks", "SELECT status, code FROM teleinfo_check WHERE \"check\" = 'peers'")
        # Both batches hold the same peers results; they share one row each when written within the same second.
        assert sorted({(r["status"], r["code"]) for r in rows}) == [("error", 2), ("problem", 1)]
        assert len(rows) in (2, 4)
    finally:
        server.stop()


def documented_fields() -> dict[str, dict[str, str]]:
    """Measurement -> field -> type, from the tables of docs/DATA_FORMAT.md section 5."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "DATA_FORMAT.md").read_text()
    section = text.split("## 5. Self-checks", 1)[1].split("\n## ", 1)[0]
    fields: dict[str, dict[str, str]] = {}
    for block in section.split("\n### ")[1:]:
        name = re.match(r"5\.\d+ `(\w+)`", block)
        if name is None:
            continue
        rows = re.findall(r"^\| field \| `(\w+)` \| (\w+) \|", block, re.MULTILINE)
        fields[name.group(1)] = dict(rows)
    return fields


def ports_config(tmp_path: Path, port: int, **checks: Any) -> Config:
    cfg = parse_config(
        f'[state]\ndirectory = "{tmp_path}"\n[checks.public_ip]\nproviders = []\n'
        f'[[checks.ports.targets]]\nhost = "127.0.0.1"\nports = "{port}"\nexpected = [{port}]\n'
    )
    return replace(cfg, checks=replace(cfg.checks, **checks))


@pytest.mark.slow
def test_a_hung_check_is_abandoned_at_the_deadline(tmp_path: Path, listener: int, mocker: MockerFixture) -> None:
    """A check that ignores every timeout (a library bug): only a fake can hang on demand."""
    release = threading.Event()
    hung = mocker.patch.object(ports_module, "check_target", side_effect=lambda *_args: release.wait(10))
    runner = CheckRunner(ports_config(tmp_path, listener, deadline=0.3), persist=False)
    start = time.monotonic()
    try:
        (result,) = runner.run("ports")
        assert time.monotonic() - start < scheduler.GRACE + 1.5
        assert result.status == ERROR
        assert result.message == "did not finish within 0.3 s (abandoned)"
        (again,) = runner.run("ports")  # the abandoned thread still hangs: no second one is started
        assert "previous run, abandoned after the deadline, is still running" in again.message
        hung.assert_called_once()
        deadline = hung.call_args.args[2]  # the check was given the run's deadline
        assert start < deadline <= start + 0.3 + 0.1
    finally:
        release.set()  # let the abandoned thread end


def test_a_crashing_check_is_an_error_result(tmp_path: Path, listener: int, mocker: MockerFixture) -> None:
    crash = mocker.patch.object(ports_module, "check_target", side_effect=RuntimeError("boom"))
    (result,) = CheckRunner(ports_config(tmp_path, listener), persist=False).run("ports")
    crash.assert_called_once()
    assert result.status == ERROR
    assert result.message == "crashed: RuntimeError: boom"


def test_the_simulator_demo_never_runs_checks(tmp_path: Path, listener: int) -> None:
    cfg = ports_config(tmp_path, listener, enabled=True)
    assert cfg.checks.enabled
    assert simulated(cfg).checks.enabled is False


class Control:
    """A line client of the control socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("r", encoding="utf-8")
        assert self.file.readline().strip() == "hello principal"

    def ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        return self.file.readline().strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.slow
def test_service_runs_checks_on_check_now(vm: VM, providers: Providers, listener: int, tmp_path: Path) -> None:
    health, control = free_port(), free_port()
    conf = tmp_path / "teleinfo.toml"
    conf.write_text(
        f'[source]\nkind = "simulator"\n[outputs.multicast]\nenabled = false\n'
        f'[outputs.influxdb]\nenabled = true\nurl = "{vm.url}"\n'
        f'[health]\nbind = "127.0.0.1"\nport = {health}\n[control]\nport = {control}\n[web]\nenabled = false\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        f'[checks]\nenabled = true\n[checks.public_ip]\nproviders = ["{providers.url("/valid")}"]\n'
        f'[[checks.ports.targets]]\nhost = "127.0.0.1"\nports = "{listener}"\nexpected = []\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(conf), "--no-view"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    client: Control | None = None
    try:
        status: dict[str, Any] = {}

        def up() -> bool:
            nonlocal status
            try:
                status = fetch("127.0.0.1", health, 1.0)
            except (OSError, ValueError):
                return False
            return bool(status.get("frames"))

        wait_until(up, timeout=20)
        assert status["checks"]["runs"] == 0  # the first scheduled run waits for the service to settle
        client = Control(control)
        answer = client.ask("check now")
        assert answer == "ok check now: public_ip, ports started; results in status (checks)"

        def checked() -> bool:
            return up() and status["checks"]["runs"] >= 2

        wait_until(checked, timeout=30)
        written = lambda: status["outputs"]["influxdb"].get("records", {}).get("check", {}).get("written")  # noqa: E731
        wait_until(lambda: up() and written() == 4, timeout=10)
        frames = status["frames"]
        last = status["checks"]["last"]
        assert last["public_ip"]["status"] == "ok"
        assert last["public_ip"]["results"][0]["address"] == "81.56.1.2"
        assert last["ports"]["status"] == "problem"  # the listener's port is open but not expected
        assert last["ports"]["results"][0]["unexpected"] == [listener]
        assert status["checks"]["status"] == "problem"
        assert written() == 4
        assert set(status["checks"]["next_in_s"]) == {"public_ip", "ports"}
        codes = vm.values('{__name__="teleinfo_check_code"}')
        assert sorted(dict(k)["check"] for k in codes) == ["ports", "public_ip"]
        wait_until(lambda: up() and status["frames"] > frames, timeout=10)  # the meter pipeline went on
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"check ports problem" in err


def test_check_now_when_checks_are_disabled(tmp_path: Path) -> None:
    health, control = free_port(), free_port()
    conf = tmp_path / "teleinfo.toml"
    conf.write_text(
        f'[source]\nkind = "simulator"\n[outputs.multicast]\nenabled = false\n'
        f'[health]\nbind = "127.0.0.1"\nport = {health}\n[control]\nport = {control}\n[web]\nenabled = false\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(conf), "--no-view"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def connect() -> Control | None:
            try:
                return Control(control)
            except OSError:
                return None

        client: Control | None = None

        def connected() -> bool:
            nonlocal client
            client = connect()
            return client is not None

        wait_until(connected, timeout=20)
        assert client is not None
        assert client.ask("check now") == "error check now: the self-checks are disabled (checks.enabled = false)"
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A real mosquitto on 127.0.0.1 (anonymous, no persistence), stopped by its PID."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None or shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto mosquitto-clients)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_until(accepts, timeout=10)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def retained(port: int, topic: str) -> dict[str, Any]:
    """The retained message of ``topic``, read by mosquitto_sub."""
    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", "1", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return dict(json.loads(out))


def test_scheduler_publishes_latest_results_to_mqtt(broker: int, tmp_path: Path, listener: int) -> None:
    cfg = ports_config(tmp_path, listener, enabled=True)
    cfg = replace(
        cfg,
        outputs=replace(cfg.outputs, mqtt=replace(cfg.outputs.mqtt, enabled=True, host="127.0.0.1", port=broker)),
    )
    stats = Stats()
    worker = OutputWorker(MqttOutput(cfg.outputs.mqtt), stats, lane_sizes={CHECK: 10})
    worker.start()
    checks = CheckScheduler(cfg, stats, Fanout([worker]).publish, first_delay=3600)
    checks.start()
    try:
        assert checks.check_now() == "ok check now: ports started; results in status (checks)"
        wait_until(lambda: stats.snapshot().sections["checks"]["runs"] == 1, timeout=30)
        doc = stats.snapshot().sections["checks"]
        wait_until(lambda: lane(stats, "mqtt").get("written") == 1, timeout=10)
        assert lane(stats, "mqtt") == {"written": 1, "failed": 0, "dropped": 0, "backlog": 0, "last_error": None}
        assert "influxdb" not in stats.snapshot().outputs  # not enabled
        message = retained(broker, "teleinfo/checks/ports")
        assert message["status"] == "ok"
        assert message["results"][0]["open"] == [listener]
        assert message == doc["last"]["ports"]
    finally:
        assert checks.stop(2.0)
        worker.stop(2.0)


def test_mqtt_broker_down_is_counted(tmp_path: Path) -> None:
    from appliance.outputs.mqtt.config import MqttConfig

    stats = Stats()
    out = MqttOutput(MqttConfig(enabled=True, host="127.0.0.1", port=free_port()), timeout=1.0)
    worker = OutputWorker(out, stats, lane_sizes={CHECK: 10})
    worker.start()
    try:
        start = time.monotonic()
        worker.submit_record(CheckRun("ports", "ok", time.time(), ()))
        wait_until(lambda: lane(stats, "mqtt").get("failed") == 1, timeout=3)
        assert time.monotonic() - start < 3
        assert lane(stats, "mqtt") == {
            "written": 0,
            "failed": 1,
            "dropped": 0,
            "backlog": 1,  # kept for the next attempt (bounded by the lane)
            "last_error": "connection refused",
        }
    finally:
        worker.stop(1.0)


def test_checks_disabled_by_a_reload_leave_no_stale_results() -> None:
    """/status must not show the last results of checks a reload switched off as if they were current."""
    from appliance.config import parse_config
    from appliance.service import Service

    stats = Stats()
    stats.set_extra("checks", {"public_ip": {"status": "ok"}})
    assert "checks" in stats.snapshot().sections
    service = Service(parse_config("[checks]\nenabled = false\n"), stats=stats)
    service._start_checks()
    assert "checks" not in stats.snapshot().sections
    assert service.checks is None
