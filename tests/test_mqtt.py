"""The MQTT output against a real mosquitto on 127.0.0.1 (``tests/mosquitto.py``), with real paho subscribers.

Covered: states and retained discovery reach a subscriber; MQTT 3.1.1 and 5; TLS with a test CA (server
verification, client certificates, wrong CA, TLS/plain mismatches); password authentication (and a wrong
password: a clear error with the broker's reason code, counted, no crash, the password in no log); discovery
published again on Home Assistant's birth message and after a reconnect; the update state (running version,
release, pending reboot) retained and published again; a broker killed and restarted
mid-stream (every frame arrives, in order, through the worker and its spool); ``teleinfo run`` killed with
SIGKILL (subscribers get ``offline`` at once); unreachable brokers (clear log line, no hang; in a network
namespace of its own, since a DNS query or a SYN to a foreign address must never leave this machine).
"""

from __future__ import annotations

import doctest
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from appliance import __version__
from appliance.config import Secret, parse_config
from appliance.outputs.base import OutputWorker, PartialDelivery
from appliance.outputs.mqtt.config import MqttConfig
from appliance.outputs.mqtt.output import MqttError, MqttOutput
from appliance.outputs.spool import Spool
from appliance.records import UpdateState
from appliance.simulator import PARIS, MeterSimulator
from appliance.stats import Stats
from appliance.tariff.periods import PERIOD_NAMES
from appliance.tic import Decoder, Frame
from appliance.update.guard import Paths, write_json

from .ha_rules import Entity, check_discovery
from .mosquitto import LOOPBACK, Mosquitto, Subscriber, TestCA
from .test_ha import stream, wanted
from .util import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS")


# --- helpers -----------------------------------------------------------------------------------------------
def make_frames(n: int, mode: str = "standard", seed: int = 5, start: float = 1_700_000_000.0) -> list[Frame]:
    """``n`` decoded frames 10 s apart (distinct DATEs, so each standard frame's JSON is unique)."""
    sim = MeterSimulator(mode=mode, start=datetime(2024, 3, 1, 12, tzinfo=PARIS), seed=seed)  # type: ignore[arg-type]
    dec = Decoder(mode)  # type: ignore[arg-type]
    out: list[Frame] = []
    it = sim.frames(step=10)
    while len(out) < n:
        for f in dec.feed(next(it).data):
            out.append(f.received(start + 10 * len(out)))
    return out[:n]


def cfg_for(broker: Mosquitto, **kw: Any) -> MqttConfig:
    return replace(MqttConfig(enabled=True, host=LOOPBACK, port=broker.port, client_id="test-appliance"), **kw)


def state_topic(frame: Frame) -> str:
    return f"teleinfo/{frame.meter}/state"


def states(sub: Subscriber, frame: Frame) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.on(state_topic(frame))]


def discovery_topic(frame: Frame) -> str:
    return f"homeassistant/device/linky_{frame.meter}/config"


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def subscriber(broker: Mosquitto) -> Any:
    with Subscriber(broker.port, ["#"]) as s:
        yield s


def test_doctests() -> None:
    import appliance.outputs.mqtt.output

    result = doctest.testmod(appliance.outputs.mqtt.output)
    assert result.attempted and not result.failed


# --- delivery ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_states_discovery_and_availability(broker: Mosquitto, subscriber: Subscriber, protocol: str) -> None:
    frames = make_frames(5)
    out = MqttOutput(cfg_for(broker, protocol=protocol))
    out.open()
    try:
        for f in frames:
            out.send(f)  # returns once the broker acknowledged (QoS 1)
        wait_until(lambda: len(states(subscriber, frames[0])) == 5, 5)
        assert states(subscriber, frames[0]) == [json.loads(json.dumps(f.to_json())) for f in frames]
        topics = [t for t, *_ in subscriber.messages]
        assert topics.index(discovery_topic(frames[0])) < topics.index(state_topic(frames[0]))
        assert subscriber.on(out.availability_topic) == [b"online"]
        # A subscriber arriving later gets the retained discovery and availability, never a state.
        with Subscriber(broker.port, ["#"]) as late:
            wait_until(lambda: len(late.messages) >= 2, 5)
            time.sleep(0.1)
            retained = {t: (p, r) for t, p, r, _ in late.messages}
            assert retained[out.availability_topic] == (b"online", True)
            disc = json.loads(retained[discovery_topic(frames[0])][0])
            assert retained[discovery_topic(frames[0])][1] is True
            assert disc["cmps"]["east"]["unique_id"] == f"{frames[0].meter}_east"
            assert disc["availability_topic"] == out.availability_topic
            assert state_topic(frames[0]) not in retained
    finally:
        out.close()
    wait_until(lambda: subscriber.on(out.availability_topic)[-1:] == [b"offline"], 5)


@pytest.mark.parametrize("name", ["standard tempo producer", "historique tempo three-phase", "standard base"])
def test_home_assistant_sees_valid_entities_and_states(broker: Mosquitto, subscriber: Subscriber, name: str) -> None:
    """A simulated stream through the real broker, read back by a subscriber: every retained discovery message
    passes Home Assistant's discovery rules (tests/ha_rules.py), and every state message received, replayed
    through the entities announced before it as HA's MQTT sensor and binary sensor take it, logs no warning and
    gives the states of tests/test_ha.py: readable periods with their code, Tempo colours from STGE, aware
    mobile-peak timestamps, only the relays the meter closed, ERQ1-4 without a device class, entity ids for
    every HA version."""
    frames = stream(name)  # with the simulated reception times: the index guard sees real rates
    out = MqttOutput(cfg_for(broker))
    try:
        for f in frames:
            out.send(f)
        wait_until(lambda: len(states(subscriber, frames[0])) == len(frames), 10)
    finally:
        out.close()
    mode = frames[0].mode
    entities: dict[str, Entity] = {}
    replayed = 0
    restarted = False
    for topic, payload, _retained, _at in list(subscriber.messages):
        if topic == discovery_topic(frames[0]):
            disc = json.loads(payload)
            check_discovery(disc)
            for cid, c in disc["cmps"].items():
                assert (
                    c["default_entity_id"] == f"{c['p']}.{c['object_id']}" == f"{c['p']}.linky_{frames[0].meter}_{cid}"
                )
                entities.setdefault(cid, Entity(cid, c))
        elif topic == state_topic(frames[0]):
            frame = frames[replayed]
            state = json.loads(payload)
            if mode == "historique" and "PTEC" not in frame.values and not restarted:
                # Home Assistant restarts just before a short frame: every state unknown, and the frame lacks
                # PTEC, DEMAIN and HHPHC. The templates must send no value (None), not "unknown" as an option.
                restarted = True
                for entity in entities.values():
                    entity.state, entity.attributes = "unknown", {}
            for cid, entity in entities.items():
                before = entity.state
                want = wanted(mode, cid, frame, state)
                assert entity.receive(state) == (before if want is None else want), (name, cid)
            replayed += 1
    assert replayed == len(frames)
    ids = set(entities)
    relays = {i for i in ids if i.startswith("relais_")}
    if name == "standard tempo producer":
        assert relays == {"relais_1"} and {"tempo_today", "tempo_tomorrow", "dpm1", "fpm1", "erq1"} <= ids
        assert entities["dpm1"].state.endswith("+01:00") and "device_class" not in entities["erq1"].config
        assert entities["tempo_today"].state in ("Bleu", "Blanc", "Rouge")
    elif name == "standard base":
        assert not relays and not {"tempo_today", "tempo_tomorrow"} & ids
    else:
        assert restarted and entities["ptec"].state in PERIOD_NAMES.values() and entities["ptec"].attributes["code"]
        assert entities["demain"].state in entities["demain"].config["options"]


def test_batch_replay_is_ordered(broker: Mosquitto, subscriber: Subscriber) -> None:
    frames = make_frames(60, mode="historique")
    out = MqttOutput(cfg_for(broker, qos=2))
    try:
        out.send_batch(frames)
        wait_until(lambda: len(states(subscriber, frames[0])) == 60, 5)
        assert states(subscriber, frames[0]) == [json.loads(json.dumps(f.to_json())) for f in frames]
    finally:
        out.close()


def test_decreasing_index_and_missing_values(broker: Mosquitto, subscriber: Subscriber) -> None:
    a, b = make_frames(2)
    values = {**b.values, "EAST": a.values["EAST"] - 1}  # a decrease HA would read as a meter reset
    del values["SINSTS"]
    b = replace(b, values=values)
    out = MqttOutput(cfg_for(broker))
    try:
        out.send(a)
        out.send(b)
        wait_until(lambda: len(states(subscriber, a)) == 2, 5)
    finally:
        out.close()
    got = states(subscriber, a)[1]
    assert "EAST" not in got["values"] and "EAST" in got["invalid"] and "EAST" not in got["units"]
    assert "SINSTS" not in got["values"]  # missing stays missing, never 0
    assert got["values"]["EASF01"] == b.values["EASF01"]
    assert out.dropped_values == 1


def test_publish_interval_and_on_change(broker: Mosquitto, subscriber: Subscriber) -> None:
    frames = [f.received(1000.0 + at) for f, at in zip(make_frames(4), (0.0, 0.5, 1.0, 2.5), strict=True)]
    out = MqttOutput(cfg_for(broker, publish_interval=1.0))
    try:
        for f in frames:
            out.send(f)
        wait_until(lambda: len(states(subscriber, frames[0])) == 3, 5)
        assert out.skipped == 1
    finally:
        out.close()
    assert [s["timestamps"]["DATE"] for s in states(subscriber, frames[0])] == [
        frames[i].timestamps["DATE"] for i in (0, 2, 3)
    ]
    same = make_frames(1, mode="historique")[0]
    twin = Frame(same.mode, dict(same.values), received_at=2000.0)
    on_change = MqttOutput(cfg_for(broker, publish_on_change=True, client_id="on-change"))
    try:
        for f in (same, twin, same):
            on_change.send(f)
        assert on_change.skipped == 2
    finally:
        on_change.close()


def test_discovery_again_on_home_assistant_birth(broker: Mosquitto, subscriber: Subscriber) -> None:
    frame = make_frames(1)[0]
    out = MqttOutput(cfg_for(broker))
    try:
        out.send(frame)
        wait_until(lambda: len(subscriber.on(discovery_topic(frame))) == 1, 5)
        subscriber.publish("homeassistant/status", b"offline")
        time.sleep(0.3)
        assert len(subscriber.on(discovery_topic(frame))) == 1
        subscriber.publish("homeassistant/status", b"online")
        wait_until(lambda: len(subscriber.on(discovery_topic(frame))) == 2, 5)
        assert subscriber.on(discovery_topic(frame))[1] == subscriber.on(discovery_topic(frame))[0]
    finally:
        out.close()


def test_update_state_retained_and_published_again_on_reconnection(broker: Mosquitto, subscriber: Subscriber) -> None:
    """The running version and pending reboot (docs/UPDATES.md): retained on the appliance's bridge topic, and
    published again by every new connection (a broker restarted without persistence lost it)."""
    frame = make_frames(1)[0]
    out = MqttOutput(cfg_for(broker))
    section = {"release": "9.9.9-abcd1234", "reboot_required": True, "reboot_reasons": ["kernel 6.1.0-99 installed"]}
    try:
        out.deliver(out.encode(UpdateState(1.5, "9.9.9", section)))
        assert out.update_topic == "teleinfo/bridge/test-appliance/update"
        wait_until(lambda: len(subscriber.on(out.update_topic)) == 1, 5)
        assert json.loads(subscriber.on(out.update_topic)[0]) == {"version": "9.9.9", **section, "at": 1.5}
        out.close()
        out.send(frame)  # a new connection
        wait_until(lambda: len(subscriber.on(out.update_topic)) == 2, 5)
        assert subscriber.on(out.update_topic)[1] == subscriber.on(out.update_topic)[0]
        disc = json.loads(subscriber.on(discovery_topic(frame))[0])
        assert disc["dev"]["sw"] == __version__  # HA's sw_version: the software reading this meter
    finally:
        out.close()
    with Subscriber(broker.port, [out.update_topic]) as late:
        wait_until(lambda: len(late.on(out.update_topic)) == 1, 5)


@pytest.mark.slow
def test_broker_killed_and_restarted_mid_stream(tmp_path: Path) -> None:
    """Through the service's worker and spool: nothing lost, nothing reordered, discovery re-sent."""
    frames = make_frames(30)
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    stats = Stats()
    # A persistent session (and a persistent broker) keeps what is published while the subscriber itself is
    # still reconnecting after the restart: the test must not depend on who reconnects first.
    sub = Subscriber(broker.port, ["teleinfo/#", "homeassistant/#"], client_id="observer", clean=False)
    worker = OutputWorker(
        MqttOutput(cfg_for(broker), timeout=1.0),
        stats,
        backoff_initial=0.1,
        backoff_max=0.5,
        spool=Spool(tmp_path / "spool"),
    )
    worker.start()
    try:
        wait_until(lambda: (tmp_path / "broker" / "mosquitto.db").exists(), 5)
        for f in frames[:10]:
            worker.submit(f)
        wait_until(lambda: len(states(sub, frames[0])) == 10, 10)
        broker.kill()
        for f in frames[10:20]:
            worker.submit(f)
        wait_until(lambda: stats.output("mqtt").spooled >= 10, 10)
        assert stats.output("mqtt").state == "failing"
        broker.start()
        for f in frames[20:]:
            worker.submit(f)
        wait_until(lambda: len(states(sub, frames[0])) >= 30, 20)
        time.sleep(0.2)
    finally:
        worker.stop(5)
        sub.close()
        broker.stop()
    got = states(sub, frames[0])
    assert [g["timestamps"]["DATE"] for g in got] == [f.timestamps["DATE"] for f in frames]
    assert got == [json.loads(json.dumps(f.to_json())) for f in frames]
    live = [p for t, p, retained, _ in sub.messages if t == discovery_topic(frames[0]) and not retained]
    assert len(live) >= 2  # published again after the reconnect (not just the broker's retained copy)
    assert stats.output("mqtt").sent == 30 and stats.output("mqtt").spooled == 0


def test_partial_delivery_when_the_broker_dies(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    out = MqttOutput(cfg_for(broker), timeout=1.0)
    frames = make_frames(3)
    try:
        out.send(frames[0])
        broker.kill()
        with pytest.raises(PartialDelivery) as e:
            out.send_batch(frames[1:])
        assert e.value.delivered == 0 and isinstance(e.value.cause, MqttError)
        with pytest.raises(MqttError, match="refused the TCP connection"):
            out.send(frames[1])
    finally:
        out.close()
        broker.stop()


@pytest.mark.slow
def test_silent_broker_send_and_close_are_bounded(broker: Mosquitto) -> None:
    """A broker that stops answering (SIGSTOP: the kernel still accepts bytes, nothing acknowledges)."""
    assert broker.proc is not None
    frames = make_frames(2)
    out = MqttOutput(cfg_for(broker), timeout=1.0)
    idle = MqttOutput(cfg_for(broker, client_id="idle"), timeout=1.0)
    out.send(frames[0])
    idle.open()
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(MqttError, match="no acknowledgement"):
            out.send(frames[1])
        with pytest.raises(MqttError, match="no answer"):
            out.open()
        idle.close()  # its "offline" is never acknowledged: bounded all the same
        assert time.monotonic() - t0 < 9  # about 1 s per wait, never a hang on a socket
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)


# --- TLS and authentication --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def test_tls(tmp_path: Path, ca: TestCA) -> None:
    other = TestCA(tmp_path / "other-ca")
    with Mosquitto(tmp_path / "broker", tls=ca) as broker, Subscriber(broker.port, ["teleinfo/#"]) as sub:
        frame = make_frames(1)[0]
        good = MqttOutput(cfg_for(broker, port=broker.tls_port, tls=True, ca_file=str(ca.ca_cert)))
        try:
            good.send(frame)
            wait_until(lambda: len(states(sub, frame)) == 1, 5)
        finally:
            good.close()
        cases = [
            (dict(port=broker.tls_port, tls=True, ca_file=str(other.ca_cert)), "certificate is not trusted"),
            (dict(port=broker.tls_port, tls=True, ca_file=str(ca.ca_cert), host="localhost"), None),
            (dict(port=broker.port, tls=True, ca_file=str(ca.ca_cert)), "TLS handshake"),
            (dict(port=broker.tls_port), "closed the connection|no answer"),
            (dict(port=broker.tls_port, tls=True, ca_file=str(tmp_path / "missing.pem")), "cannot set up TLS"),
        ]
        for kw, error in cases:
            out = MqttOutput(cfg_for(broker, **kw), timeout=1.5)
            try:
                if error is None:
                    out.open()
                else:
                    with pytest.raises(MqttError, match=error):
                        out.open()
            finally:
                out.close()


def test_tls_client_certificate(tmp_path: Path, ca: TestCA) -> None:
    with Mosquitto(tmp_path / "broker", tls=ca, client_certs=True) as broker:
        base = dict(port=broker.tls_port, tls=True, ca_file=str(ca.ca_cert))
        out = MqttOutput(cfg_for(broker, **base, cert_file=str(ca.client_cert), key_file=str(ca.client_key)))
        try:
            out.open()
        finally:
            out.close()
        anonymous = MqttOutput(cfg_for(broker, **base), timeout=1.5)
        with pytest.raises(MqttError):
            anonymous.open()
        anonymous.close()


@pytest.mark.parametrize(("protocol", "reason"), [("3.1.1", "Not authorized"), ("5", "Not authorized")])
def test_password(tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str, reason: str) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55"
    with Mosquitto(tmp_path / "broker", users={"tic": secret, "ha": "ha-pw"}) as broker:
        with Subscriber(broker.port, ["teleinfo/#"], username="ha", password="ha-pw") as sub:
            frame = make_frames(1)[0]
            ok = MqttOutput(cfg_for(broker, protocol=protocol, username="tic", password=Secret(secret, "env")))
            try:
                ok.send(frame)
                wait_until(lambda: len(states(sub, frame)) == 1, 5)
            finally:
                ok.close()
        wrong = cfg_for(broker, protocol=protocol, username="tic", password=Secret("wrong-Pa55", "env"))
        with pytest.raises(MqttError, match=f"refused the connection: {reason}") as e:
            MqttOutput(wrong).open()
        assert "(code " in str(e.value)  # the broker's reason code, as sent (5 in 3.1.1, 0x87 = 135 in 5)
        # In the service's worker: counted, logged once, retried, never a crash.
        stats = Stats()
        out = MqttOutput(wrong, timeout=1.0)
        worker = OutputWorker(out, stats, backoff_initial=0.1, backoff_max=0.2, spool=Spool(tmp_path / "spool"))
        worker.start()
        worker.submit(frame)
        wait_until(lambda: out.connect_failures >= 2, 5)
        o = stats.output("mqtt")
        assert o.state == "failing" and reason in (o.last_error or "")
        assert worker.stop(3)
        assert len(Spool(tmp_path / "spool")) == 1  # the frame is kept for when the password is fixed
    log = caplog.text
    assert secret not in log and "wrong-Pa55" not in log
    assert sum("output mqtt failing" in r.getMessage() for r in caplog.records) == 1


def test_refused_port_fails_fast() -> None:
    out = MqttOutput(MqttConfig(host=LOOPBACK, port=free_port()))
    t0 = time.monotonic()
    with pytest.raises(MqttError, match="refused the TCP connection"):
        out.open()
    assert time.monotonic() - t0 < 2
    out.close()


# --- the service -------------------------------------------------------------------------------------------
def service_config(tmp_path: Path, host: str, port: int, **mqtt: str) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in mqtt.items())
    text = f"""
[source]
kind = "simulator"
[source.simulator]
mode = "standard"
[outputs.multicast]
enabled = false
[outputs.mqtt]
enabled = true
host = "{host}"
port = {port}
client_id = "svc-under-test"
{extra}
[health]
enabled = false
[control]
enabled = false
[web]
enabled = false
[state]
directory = "{tmp_path / "state"}"
"""
    parse_config(text)  # fail here, readably, rather than in the child
    path = tmp_path / "teleinfo.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Service:
    """``python -m appliance run`` as its own process; its log (stderr) is collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in SYSTEMD_ENV}
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._lines.append(raw.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        try:
            wait_until(lambda: text in self.log, timeout)
        except AssertionError:
            raise AssertionError(f"{text!r} not logged within {timeout} s; log:\n{self.log}") from None

    def stop(self, timeout: float = 8.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._reader.join(2)


def run_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "appliance", "run", "--config", str(config), "--no-view"]


@pytest.mark.slow
def test_service_killed_subscribers_get_offline_at_once(broker: Mosquitto, tmp_path: Path) -> None:
    avail = "teleinfo/bridge/svc-under-test/status"
    with Subscriber(broker.port, ["teleinfo/#"]) as sub:
        svc = Service(run_argv(service_config(tmp_path, LOOPBACK, broker.port, keepalive="60")))
        try:
            wait_until(lambda: any(t.endswith("/state") for t, *_ in sub.messages), 20)
            assert sub.on(avail) == [b"online"]
            killed = time.monotonic()
            svc.proc.send_signal(signal.SIGKILL)
            wait_until(lambda: sub.on(avail)[-1:] == [b"offline"], 10)
            arrived = next(at for t, p, _r, at in sub.messages if t == avail and p == b"offline")
        finally:
            svc.stop()
        # The broker sends the will when the socket closes, not after keepalive x 1.5 (90 s here).
        assert arrived - killed < 5
    with Subscriber(broker.port, [avail]) as late:  # and it is retained
        wait_until(lambda: late.on(avail) == [b"offline"], 5)


@pytest.mark.slow
def test_service_publishes_its_version_release_and_pending_reboot(broker: Mosquitto, tmp_path: Path) -> None:
    """``teleinfo run`` on a system with a release layout (under TELEINFO_ROOT) and a pending reboot: the update
    state is retained at start, follows the end of an update, and discovery's device carries the version."""
    root = tmp_path / "root"
    paths = Paths(root)
    (paths.releases / "0.1.0-image").mkdir(parents=True)
    os.symlink("releases/0.1.0-image", paths.current)
    (root / "run").mkdir()
    (root / "run" / "reboot-required").write_text("*** System restart required ***\n")
    (root / "run" / "reboot-required.pkgs").write_text("linux-image-6.1.0-99-arm64\n")
    topic = "teleinfo/bridge/svc-under-test/update"
    with Subscriber(broker.port, ["teleinfo/#", "homeassistant/#"]) as sub:
        svc = Service(run_argv(service_config(tmp_path, LOOPBACK, broker.port)), env={"TELEINFO_ROOT": str(root)})
        try:
            discovered = lambda: any(t.startswith("homeassistant/device/") for t, *_ in sub.messages)  # noqa: E731
            wait_until(lambda: sub.on(topic) and discovered(), 20)
            state = json.loads(sub.on(topic)[-1])
            assert state["version"] == __version__ and state["release"] == "0.1.0-image"
            assert state["reboot_required"] is True
            assert state["reboot_reasons"] == ["updates need a reboot (linux-image-6.1.0-99-arm64)"]
            disc = next(json.loads(p) for t, p, *_ in sub.messages if t.startswith("homeassistant/device/"))
            assert disc["dev"]["sw"] == __version__
            write_json(paths.transaction, {"phase": "rolled-back", "to": "0.2.0-abc", "reason": "READY not received"})
            wait_until(lambda: json.loads(sub.on(topic)[-1]).get("last_update", {}).get("phase") == "rolled-back", 10)
            assert len(sub.on(topic)) == 2  # published when something changed, not at every look
        finally:
            svc.stop()
    with Subscriber(broker.port, [topic]) as late:  # retained
        wait_until(lambda: late.on(topic) and json.loads(late.on(topic)[0])["last_update"]["to"] == "0.2.0-abc", 5)


@pytest.mark.slow
def test_service_with_a_wrong_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "Wr0ng-Secret")  # the service inherits it
    with Mosquitto(tmp_path / "broker", users={"tic": "right"}) as broker:
        cfg = service_config(
            tmp_path, LOOPBACK, broker.port, username='"tic"', password='{ env = "TEST_MQTT_PASSWORD" }'
        )
        svc = Service(run_argv(cfg))
        try:
            svc.wait_log("refused the connection: Not authorized", 15)
            time.sleep(1.0)
            assert svc.proc.poll() is None  # still running, reading the meter, retrying
        finally:
            assert svc.stop() == 0
    assert "Wr0ng-Secret" not in svc.log and "Traceback" not in svc.log
    assert svc.log.count("output mqtt failing") == 1


def _netns_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare --net)")
    for tool in ("unshare", "ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("broker.invalid", 1883, "cannot resolve the MQTT broker's host name 'broker.invalid'"),
        ("10.255.0.1", 1883, "cannot reach the MQTT broker 10.255.0.1:1883"),
        ("127.0.0.1", 1883, "no answer"),  # SYN dropped by nftables: only the timeout ends the wait
    ],
)
def test_unreachable_broker_in_a_private_namespace(tmp_path: Path, host: str, port: int, expected: str) -> None:
    """The service in a network namespace of its own (``unshare --net``, gone when it exits), where nothing
    routes anywhere: the DNS query and the SYN cannot leave this machine."""
    _netns_tools()
    cfg = service_config(tmp_path, host, port)
    setup = (
        "ip link set lo up && nft add table inet t && "
        "nft add chain inet t in '{ type filter hook input priority 0; }' && "
        f'nft add rule inet t in tcp dport {port} drop && exec "$@"'
    )
    svc = Service(["unshare", "--net", "sh", "-c", setup, "sh", *run_argv(cfg)])
    try:
        svc.wait_log(expected, 15)
        assert svc.proc.poll() is None
        t0 = time.monotonic()
        assert svc.stop() == 0
        assert time.monotonic() - t0 < 6  # no hang on stop, even with a connection attempt in flight
    finally:
        svc.stop()
    assert "Traceback" not in svc.log
