"""The tariff engine in the service: the clock rule, the record lane sized for a long InfluxDB outage, and
``teleinfo run`` keeping its ledger across a stop, a reload and a restart (appliance/tariff/feed.py).

Frames are hand-made (tests/meterframes.py) so that the energy each index moved by is known exactly, whatever
reception time the service gives them.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import tracemalloc
import urllib.request
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import ClockGate, clock_synchronised
from appliance.config import parse_config
from appliance.records import TARIFF, Record, TariffRecord
from appliance.service import build_workers
from appliance.simulator import PARIS
from appliance.stats import Stats
from appliance.tariff import TariffEngine, TariffPublisher, parse_tariff
from appliance.tariff.feed import TariffFeed
from appliance.tariff.lines import LANE_LINES, MAX_LINES_PER_RECORD, OUTAGE_HOURS, tariff_lines
from appliance.tic import Decoder, Frame

from .meterframes import METER, historique_frame
from .ptyutil import PtyMeter
from .servers import VictoriaMetrics
from .test_service import Proc, clean_env
from .test_tariff_publish import frames
from .util import free_port, wait_until

PRICES = {"since": "2024-01-01", "base": 0.25, "hc": 0.2, "hp": 0.3}


def decoded(data: bytes, at: float) -> Frame:
    (frame,) = Decoder("historique").feed(data, at)
    return frame


class Clock:
    def __init__(self, synced: bool | None) -> None:
        self.synced = synced

    def __call__(self) -> bool | None:
        return self.synced


# --- the feed: the clock rule ----------------------------------------------------------------------------------


def test_nothing_is_counted_before_the_clock_is_synchronised_and_nothing_is_lost(tmp_path: Path) -> None:
    """A Pi booting with the time it stopped at: frames wait; once NTP answers, the first counted frame brings the
    whole increase since the last saved reading, so the energy of the wait is not lost, only placed in time by
    the engine's gap rule (here within the day)."""
    path = tmp_path / "tariff.json"
    cfg = parse_tariff({"prices": [PRICES]})
    t0 = datetime(2026, 3, 2, 12, 0, tzinfo=PARIS).timestamp()
    before = TariffFeed(cfg, path, lambda r: None, gate=ClockGate(False))
    for i in range(5):
        before.on_frame(decoded(historique_frame({"BASE": 1_000 + 10 * i}, 500), t0 + i))
    before.close()  # the last save before the power cut

    clock = Clock(False)
    mono = [0.0]
    got: list[Record] = []
    stats = Stats()
    feed = TariffFeed(cfg, path, got.append, gate=ClockGate(True, clock, lambda: mono[0]), stats=stats)
    for i in range(5):  # stamped with the time the Pi stopped at, hours behind the real one
        feed.on_frame(decoded(historique_frame({"BASE": 1_100 + 10 * i}, 500), t0 + 5 + i))
        mono[0] += 2
    assert (feed.counted, feed.held, got) == (0, 5, [])
    assert stats.snapshot().sections["tariff"]["state"] == "waiting_for_clock"
    clock.synced = True  # synchronised: the clock jumped to the real time
    feed.on_frame(decoded(historique_frame({"BASE": 1_300}, 500), t0 + 3 * 3600))
    assert feed.counted == 1 and feed.held == 5
    assert feed.engine.day_energy(date(2026, 3, 2)) == {"base": 300}  # 40 before the cut, 260 since: none lost
    status = stats.snapshot().sections["tariff"]
    assert status["state"] == "counting" and status["frames_held"] == 5 and status["records"] == len(got) == 1
    assert METER not in json.dumps(status)  # /status is shown to whoever reads the health socket


def test_a_frame_the_engine_cannot_count_costs_nothing_else() -> None:
    feed = TariffFeed(parse_tariff({}), None, lambda r: None, gate=ClockGate(False))

    def broken(frame: Frame) -> None:
        raise RuntimeError("a bug")

    feed.publisher.on_frame = broken  # type: ignore[method-assign,assignment]
    feed.on_frame(decoded(historique_frame({"BASE": 1}, 1), 1_750_000_000.0))
    feed.on_frame(decoded(historique_frame({"BASE": 2}, 1), 1_750_000_001.0))
    assert feed.errors == 2 and feed.status()["errors"] == 2


# --- the record lane: an InfluxDB outage across midnight ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_influxdb_outage_of_a_day_loses_no_tariff_point(tmp_path: Path) -> None:
    """The service's InfluxDB worker (build_workers: the plugin's lane size) with VictoriaMetrics down from 23:00
    to 00:30 the day after next (25.5 h, two midnights): once it is back, every record of the outage is written,
    the closing point of each day among them, nothing dropped.  The default lane (1,000 lines) held 2.4 hours of
    a Tempo meter's records."""
    stream = frames("historique", "TEMPO", datetime(2024, 1, 16, 23, 0, tzinfo=PARIS), 60, int(25.5 * 60) + 1)
    got: list[Record] = []
    publisher = TariffPublisher(TariffEngine(parse_tariff({"prices": [PRICES | {"tempo_blue_hp": 0.15}]})), got.append)
    for f in stream:
        publisher.on_frame(f)
    records = [r for r in got if isinstance(r, TariffRecord)]
    closing = [r for r in records if datetime.fromtimestamp(r.at, PARIS).strftime("%H:%M:%S") == "23:59:59"]
    assert [datetime.fromtimestamp(r.at, PARIS).date() for r in closing] == [date(2024, 1, 16), date(2024, 1, 17)]
    lines = sum(len(tariff_lines(r)) for r in records)
    assert lines > 10 * 1000  # ten times the default lane

    vm = VictoriaMetrics()
    vm.start(tmp_path)
    vm.stop()  # the outage: same port, nothing listening
    stats = Stats()
    cfg = parse_config(
        f'[outputs.multicast]\nenabled = false\n[outputs.influxdb]\nenabled = true\nurl = "{vm.url}"\ntimeout = 1\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
    )
    (worker,) = build_workers(cfg, stats)
    worker.start()
    try:
        for record in records:
            worker.submit_record(record)
        lane = stats.snapshot().outputs["influxdb"].records[TARIFF]
        assert lane["backlog"] == lines and lane["dropped"] == 0
        vm.start(tmp_path)
        wait_until(lambda: stats.snapshot().outputs["influxdb"].records[TARIFF]["written"] == lines, 60)
        assert stats.snapshot().outputs["influxdb"].records[TARIFF]["dropped"] == 0
        series = {
            s["metric"]["__name__"]: {t // 1000: v for t, v in zip(s["timestamps"], s["values"], strict=True)}
            for s in vm.export('{__name__="teleinfo_tariff_today_wh"}')
        }
    finally:
        worker.stop(5)
        vm.stop()
    today_wh = series["teleinfo_tariff_today_wh"]
    for r in closing:
        assert today_wh[int(r.at)] == r.snapshot["today"]["wh"] > 0
    assert len(today_wh) == len(records)


def test_the_lane_holds_the_outage_it_is_sized_for_in_a_few_megabytes() -> None:
    """The figure behind appliance.tariff.lines.LANE_LINES: a full lane of the longest lines a record makes."""
    record = TariffRecord(
        1_768_600_000.0,
        METER,
        "standard",
        {
            "currency": "EUR",
            "contract": "TEMPO",
            "period": "tempo_white_hp",
            "price": {"value": 0.173, "origin": "default"},
            "tempo": {"today": "white", "tomorrow": "red"},
            "today": {
                "wh": 123456,
                "cost": 12.345678,
                "subscription": 0.6543,
                "total": 13.0,
                "unpriced_wh": 0,
                "periods": {
                    p: {"wh": 12345, "cost": 1.234567} for p in ["base", "hc", "hp", "ejp_normal", "unattributed"]
                },
            },
            "month": {"wh": 1234567, "cost": 123.456789, "subscription": 19.6, "total": 143.0, "unpriced_wh": 0},
        },
    )
    lines = tariff_lines(record)
    assert 6 <= len(lines) <= MAX_LINES_PER_RECORD
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    lane = [line for _ in range(LANE_LINES // len(lines)) for line in tariff_lines(record)]
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_line = size / len(lane)
    full = per_line * LANE_LINES
    print(
        f"\n  tariff lane: {LANE_LINES} lines for {OUTAGE_HOURS} h, {per_line:.0f} B a line, {full / 1e6:.1f} MB full"
    )
    assert full < 8e6


# --- teleinfo run: the ledger across stops, reloads and restarts ----------------------------------------------


class Appliance:
    """``teleinfo run`` on a pty meter with [tariff] and its state directory; /status through the health socket
    on 127.0.0.1 (web server off: the browser tests have theirs)."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.tmp = tmp
        (tmp / "dev").mkdir(exist_ok=True)
        self.pty = PtyMeter(tmp / "dev")
        self.health = free_port()
        self.config = tmp / "teleinfo.toml"
        self.state = tmp / "state"
        self.write_config(extra)
        self.proc: Proc | None = None

    def write_config(self, extra: str = "", price: float = 0.25) -> None:
        self.config.write_text(
            f'[source]\ndevice = "{self.pty.path}"\nmode = "historique"\n'
            "[outputs.multicast]\nenabled = false\n"
            f'[health]\nbind = "127.0.0.1"\nport = {self.health}\n[control]\nenabled = false\n'
            "[web]\nenabled = false\n"
            f'[state]\ndirectory = "{self.state}"\n'
            f"[tariff]\nsave_interval = 60\n{extra}\n"
            f"[[tariff.prices]]\nsince = 2024-01-01\nbase = {price}\n"
        )

    def start(self) -> Proc:
        argv = [sys.executable, "-m", "appliance", "run", "--config", str(self.config), "--no-view"]
        self.proc = Proc(argv, clean_env())
        self.proc.wait_log("opened at")
        return self.proc

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/status", timeout=5) as r:
            return dict(json.load(r))

    def send(self, base: int, papp: int = 800) -> None:
        self.pty.write(historique_frame({"BASE": base}, papp))
        time.sleep(0.05)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        self.pty.close()


@pytest.fixture
def appliance(tmp_path: Path) -> Any:
    a = Appliance(tmp_path, "wait_for_clock_sync = false")
    try:
        yield a
    finally:
        a.close()


def ledger(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_the_ledger_survives_a_stop_a_reload_and_a_restart(appliance: Appliance) -> None:
    svc = appliance.start()
    for i in range(6):
        appliance.send(100_000 + 7 * i)
    wait_until(lambda: appliance.status()["frames"] == 6, 10)
    status = appliance.status()["tariff"]
    assert status["state"] == "counting" and status["contract"] == "BASE" and status["records"] >= 1
    assert status["state_file"] == str(appliance.state / "tariff.json") and METER not in json.dumps(status)
    assert svc.stop() == 0  # SIGTERM: the keeper's last save
    today = datetime.now(PARIS).date().isoformat()
    state = ledger(appliance.state / "tariff.json")
    days = state["days"]
    assert sum(days.get(today, {}).values()) + sum(v for d, p in days.items() if d != today for v in p.values()) == 35
    assert state["registers"]["BASE"]["wh"] == 100_035

    svc = appliance.start()  # a restart (or a power cut after a save): counting goes on from the saved indexes
    appliance.send(100_050)  # 15 Wh while the service was away: counted once
    appliance.write_config("wait_for_clock_sync = false", price=0.3)  # a new price, by SIGHUP
    svc.send(signal.SIGHUP)
    svc.wait_log("configuration reloaded")
    appliance.send(100_060)
    wait_until(lambda: appliance.status()["frames"] == 2, 10)
    assert svc.stop() == 0
    state = ledger(appliance.state / "tariff.json")
    assert sum(v for p in state["days"].values() for v in p.values()) == 60
    assert not svc.lines("Traceback") and not svc.lines("ERROR"), svc.log()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_by_default_the_service_waits_for_a_synchronised_clock(tmp_path: Path) -> None:
    """The default rule on this machine: counting if its kernel says synchronised, waiting (and saying so in
    /status and once in the log) if not; either way the meter's data flows."""
    app = Appliance(tmp_path)
    try:
        svc = app.start()
        sent = [0]

        def reported(key: str) -> bool:  # a meter sends all the time; /status is refreshed every 5 s
            app.send(5_000 + sent[0])
            sent[0] += 1
            return int(app.status()["tariff"][key]) >= 3

        if clock_synchronised() is not True:
            wait_until(lambda: reported("frames_held"), 15, 0.2)
            status = app.status()["tariff"]
            assert status["state"] == "waiting_for_clock" and status["frames_counted"] == 0
            assert len(svc.lines("energy and costs are counted once it is")) == 1
        else:
            wait_until(lambda: reported("frames_counted"), 15, 0.2)
            assert app.status()["tariff"]["state"] == "counting"
        assert svc.stop() == 0
    finally:
        app.close()


def test_a_ledger_with_nothing_new_is_not_written_again(tmp_path: Path) -> None:
    """The SD card is written only when the state changed: not at the stop of a service that counted nothing, not
    twice for the same state."""
    path = tmp_path / "tariff.json"
    feed = TariffFeed(parse_tariff({}), path, lambda r: None, gate=ClockGate(False))
    feed.close()
    assert not path.exists()
    feed = TariffFeed(parse_tariff({}), path, lambda r: None, gate=ClockGate(False))
    feed.on_frame(decoded(historique_frame({"BASE": 10}, 5), 1_750_000_000.0))
    feed.close()
    assert feed.keeper is not None and feed.keeper.store.writes == 1 and path.exists()
    again = TariffFeed(parse_tariff({}), path, lambda r: None, gate=ClockGate(False))
    again.close()
    assert again.keeper is not None and again.keeper.store.writes == 0


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_service_publishes_its_records_through_the_fan_out(tmp_path: Path) -> None:
    """``teleinfo run --simulate`` with the InfluxDB output: the tariff records reach VictoriaMetrics through
    Service.publish and the output's record lane, with the simulated meter's tag and the day's energy."""
    vm = VictoriaMetrics()
    vm.start(tmp_path)
    config = tmp_path / "teleinfo.toml"
    config.write_text(
        "[outputs.multicast]\nenabled = false\n"
        f'[outputs.influxdb]\nenabled = true\nurl = "{vm.url}"\nhealth_interval = 0\n'
        "[health]\nenabled = false\n[control]\nenabled = false\n[web]\nenabled = false\n"
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
    )
    argv = [sys.executable, "-m", "appliance", "run", "--simulate", "--config", str(config), "--no-view"]
    svc = Proc(argv, clean_env())
    try:
        svc.wait_log("output influxdb up", 20)

        def points() -> dict[str, Any]:
            return {s["metric"]["__name__"]: s for s in vm.export('{__name__=~"teleinfo_tariff_.*"}')}

        wait_until(lambda: "teleinfo_tariff_today_wh" in points(), 30, 0.5)
        series = points()
        assert series["teleinfo_tariff_today_wh"]["metric"]["meter"].isdigit()  # the simulated meter's address
        assert "teleinfo_tariff_price" in series  # the built-in regulated BASE price
        assert svc.stop() == 0
    finally:
        svc.kill()
        vm.stop()
    assert not (tmp_path / "state" / "tariff.json").exists()  # the simulator's ledger is not a household's
    assert not svc.lines("Traceback"), svc.log()
