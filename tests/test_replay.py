"""``teleinfo replay``: a simulated day journaled by the live service, replayed into VictoriaMetrics, gives the same
points; replaying again sends nothing twice; a growing segment is replayed from where the last run stopped."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from appliance.journal import Journal, JournalConfig, segment_files
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.schema import Config
from appliance.service import Service
from appliance.simulator import PARIS, MeterSimulator

from .servers import VictoriaMetrics
from .util import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = datetime(2025, 1, 15, tzinfo=PARIS)
STEP = 60.0  # one frame a simulated minute: a day is 1440 frames, a few seconds of work


@pytest.fixture
def two_vms(tmp_path: Path) -> Iterator[tuple[VictoriaMetrics, VictoriaMetrics]]:
    live, replayed = VictoriaMetrics(), VictoriaMetrics()
    live.start(tmp_path / "live")
    try:
        replayed.start(tmp_path / "replayed")
        try:
            yield live, replayed
        finally:
            replayed.stop()
    finally:
        live.stop()


class DaySource:
    """A meter replaying a simulated day as fast as it is read, in odd-sized chunks (frames straddle reads and
    the journal's hourly segments).  ``now`` is the simulated time of the chunk just read: the service's clock."""

    def __init__(self, data: list[tuple[float, bytes]], stop: threading.Event) -> None:
        self.data = data
        self.stop = stop
        self.now = data[0][0]

    def read(self) -> bytes:
        if not self.data:
            self.stop.set()
            return b""
        self.now, chunk = self.data.pop(0)
        return chunk

    def frame_ok(self, mode: str) -> None:
        """Nothing to lock."""

    def frame_bad(self) -> None:
        """Nothing to reopen."""

    def close(self) -> None:
        """Nothing to close."""


def simulated_day(mode: str, contract: str) -> tuple[list[tuple[float, bytes]], int]:
    """A day of chunks ``(reception time, bytes)`` and how many frames they hold."""
    sim = MeterSimulator(start=DAY, mode=mode, contract=contract, seed=7)  # type: ignore[arg-type]
    out: list[tuple[float, bytes]] = []
    n = int(86400 / STEP)
    for i, f in zip(range(n), sim.frames(step=STEP), strict=False):
        t = f.at.timestamp()
        cut = 50 + (i * 37) % 120  # a chunk boundary inside every frame
        out.append((t + 0.4, f.data[:cut]))
        out.append((t + 0.9, f.data[cut:]))
    return out, n


def write_journal(directory: Path, chunks: int) -> None:
    """A journal in ``directory`` of the first ``chunks`` chunks of :func:`simulated_day` in historique mode (two
    chunks a frame)."""
    j = Journal(JournalConfig(enabled=True), directory, "auto")
    data, _ = simulated_day("historique", "BASE")
    for t, d in data[:chunks]:
        j.append(d, t)
    j.start()
    j.close()


def teleinfo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60, check=False
    )


def live_config(tmp_path: Path, url: str) -> Config:
    cfg = Config()
    return replace(
        cfg,
        source=replace(cfg.source, mode="auto"),
        outputs=replace(
            cfg.outputs,
            multicast=replace(cfg.outputs.multicast, enabled=False),
            influxdb=InfluxConfig(enabled=True, url=url, queue_size=100_000, batch_size=500),
        ),
        health=replace(cfg.health, enabled=False),
        web=replace(cfg.web, enabled=False),
        control=replace(cfg.control, enabled=False),
        state=replace(cfg.state, directory=str(tmp_path / "state")),
        journal=JournalConfig(enabled=True, flush_interval=0.2, flush_kb=16),
        tariff=replace(cfg.tariff, enabled=False),  # replay backfills the frames' points, not the tariff's
    )


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "contract"), [("historique", "HCHP"), ("standard", "TEMPO")])
def test_a_replayed_day_gives_the_live_points_and_a_second_replay_adds_none(
    two_vms: tuple[VictoriaMetrics, VictoriaMetrics],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    contract: str,
) -> None:
    from appliance import service as service_module

    live_vm, replay_vm = two_vms
    data, frames = simulated_day(mode, contract)
    cfg = live_config(tmp_path, live_vm.url)
    source = DaySource(list(data), threading.Event())

    def build(_cfg: Config, _stats: object, stop: threading.Event) -> DaySource:
        source.stop = stop
        return source

    monkeypatch.setattr(service_module, "build_source", build)
    svc = Service(cfg, clock=lambda: source.now)
    runner = threading.Thread(target=svc.run)
    runner.start()
    wait_until(lambda: getattr(svc.stats.snapshot().outputs.get("influxdb"), "sent", None) == frames, 60)
    runner.join(10)
    assert not runner.is_alive()
    live = live_vm.samples()
    assert sum(len(v) for v in live.values()) > frames * 5  # every frame's integer fields are there

    journal = tmp_path / "state" / "journal"
    assert len(segment_files(journal)) in (24, 25)  # hourly segments (a frame's tail may open the 25th)
    toml = tmp_path / "replay.toml"
    toml.write_text(f'[outputs.influxdb]\nurl = "{replay_vm.url}"\n[state]\ndirectory = "{tmp_path / "state"}"\n')
    first = teleinfo("replay", "--config", str(toml), str(journal))
    assert first.returncode == 0, first.stderr
    assert f"{frames} frame(s) decoded, {frames} sent" in first.stderr
    assert replay_vm.samples() == live  # same series, same timestamps, same values, same count

    second = teleinfo("replay", "--config", str(toml), *map(str, segment_files(journal)))
    assert second.returncode == 0, second.stderr
    assert f"0 sent to {replay_vm.url}" in second.stderr and f"{frames} already replayed" in second.stderr
    assert replay_vm.samples() == live  # nothing twice, although VictoriaMetrics keeps duplicates


@pytest.mark.slow
def test_a_growing_segment_is_replayed_from_where_the_last_run_stopped(tmp_path: Path) -> None:
    vm = VictoriaMetrics()
    vm.start(tmp_path)
    try:
        data, _ = simulated_day("historique", "BASE")
        part = data[:100]  # 50 frames, all in the first hour's segment
        j = Journal(JournalConfig(enabled=True, flush_kb=4096, flush_interval=3600), tmp_path / "j", "auto")
        j.start()
        for t, d in part[:60]:
            j.append(d, t)
        j.flush()  # the service's periodic write: the open segment is readable as it is
        ledger = tmp_path / "ledger.json"
        args = ("replay", "--url", vm.url, "--ledger", str(ledger), str(tmp_path / "j"))
        r = teleinfo(*args)
        assert r.returncode == 0 and "30 sent" in r.stderr, r.stderr
        for t, d in part[60:]:
            j.append(d, t)
        j.close()
        r = teleinfo(*args)
        assert r.returncode == 0 and "50 frame(s) decoded, 20 sent" in r.stderr, r.stderr
        samples = vm.samples()
        assert samples and all(len(v) == 50 == len({t for t, _ in v}) for v in samples.values())
        forced = teleinfo(*args, "--force")  # --force resends everything: VictoriaMetrics then holds duplicates
        assert forced.returncode == 0 and "50 sent" in forced.stderr
        resent = vm.samples()
        assert resent.keys() == samples.keys() and all(len(v) == 100 for v in resent.values())
    finally:
        vm.stop()


def test_bad_segments_and_a_dead_server_are_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    r = teleinfo("replay", "--dry-run", str(garbage), str(tmp_path / "missing.gz"))
    assert r.returncode == 1
    assert "skipped" in r.stderr and "no such file or directory" in r.stderr and "1 unreadable" in r.stderr
    write_journal(tmp_path / "j", 20)
    r = teleinfo("replay", "--dry-run", str(tmp_path / "j"))
    assert r.returncode == 0 and "10 frame(s) decoded, 0 sent to nowhere (dry run)" in r.stderr
    from .util import free_port

    # Credentials in the URL (user:password, a token in the query) are never printed nor written to the ledger.
    dead = f"http://admin:hunter2@127.0.0.1:{free_port()}/?token=s3cret"
    r = teleinfo("replay", "--url", dead, "--ledger", str(tmp_path / "l.json"), str(tmp_path / "j"))
    assert r.returncode == 1 and "unreachable" in r.stderr and "Traceback" not in r.stderr
    assert "hunter2" not in r.stderr and "s3cret" not in r.stderr and "admin" not in r.stderr, r.stderr
    ledger = tmp_path / "l.json"
    assert not ledger.exists() or "hunter2" not in ledger.read_text()
    r = teleinfo("replay", "--url", "ftp://admin:hunter2@x", str(tmp_path / "j"))
    assert r.returncode == 2 and "hunter2" not in r.stderr, r.stderr


@contextlib.contextmanager
def influx_answering(status_of: Callable[[bytes], int]) -> Iterator[str]:
    """A stand-in InfluxDB on 127.0.0.1 (its URL): ``/ping`` answers 204, each write the status ``status_of``
    gives for its body."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_GET(self) -> None:  # /ping
            self.send_response(204)
            self.end_headers()

        def do_POST(self) -> None:
            status = status_of(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_keeps_failing_ends_the_replay_through_the_outputs_worker(tmp_path: Path) -> None:
    """The replay delivers through the live OutputWorker (its backoff and retries); a server that answers /ping
    but keeps refusing writes with 503 ends it after ``give_up`` seconds, and the ledger records nothing."""

    from appliance.commands.replay import _Delivery, _Ledger, _Totals, replay
    from appliance.journal import read_segment
    from appliance.outputs.influxdb.output import InfluxError, InfluxOutput

    writes: list[int] = []

    def refuse(_body: bytes) -> int:
        writes.append(1)
        return 503

    with influx_answering(refuse) as url:
        write_journal(tmp_path / "j", 20)
        segments = [read_segment(f) for f in segment_files(tmp_path / "j")]
        out = InfluxOutput(InfluxConfig(enabled=True, url=url))
        out.open()
        delivery = _Delivery(out, 500, give_up=1.0)
        ledger = _Ledger(tmp_path / "ledger.json", "target")
        totals = _Totals()
        with pytest.raises(InfluxError, match=r"gave up after 1 s of failures: .*503"):
            replay(segments, delivery, ledger, mode=None, batch_size=500, totals=totals)
        delivery.close()
        assert len(writes) >= 2  # retried by the worker before giving up
        assert totals.sent == 0 and not (tmp_path / "ledger.json").exists()


def test_a_server_that_fails_mid_way_leaves_exactly_the_delivered_segments_in_the_ledger(tmp_path: Path) -> None:
    """Segments are decoded while earlier ones are still being written (the pipeline does not drain at each
    segment), yet the ledger records a segment only once all its frames are delivered: when the server starts
    failing mid-way, it holds exactly the segments the server took in full, and ``sent`` counts their frames."""
    import json

    from appliance.commands.replay import _Delivery, _Ledger, _Totals, replay
    from appliance.journal import read_segment
    from appliance.outputs.influxdb.output import InfluxError, InfluxOutput

    accepted: list[int] = []  # lines of each write the server took

    def ten_writes(body: bytes) -> int:
        if len(accepted) >= 10:
            return 503
        accepted.append(body.count(b"\n") + 1)
        return 204

    with influx_answering(ten_writes) as url:
        write_journal(tmp_path / "j", 2 * 60 * 6)  # six hourly segments of 60 frames
        segments = sorted((read_segment(f) for f in segment_files(tmp_path / "j")), key=lambda s: s.seq)
        assert len(segments) == 6
        out = InfluxOutput(InfluxConfig(enabled=True, url=url))
        out.open()
        delivery = _Delivery(out, 20, give_up=1.0)  # 3 writes a segment, 4 writes in flight
        ledger = _Ledger(tmp_path / "ledger.json", "target")
        totals = _Totals()
        with pytest.raises(InfluxError, match="gave up"):
            replay(segments, delivery, ledger, mode=None, batch_size=20, totals=totals)
        delivery.close()
        assert sum(accepted) == 200  # ten writes of 20 frames: three segments and a third of the fourth
        recorded = json.loads((tmp_path / "ledger.json").read_text())["targets"]["target"]
        assert recorded.keys() == {f"{s.session}-{s.seq}" for s in segments[:3]}
        assert all(recorded[f"{s.session}-{s.seq}"]["chunks"] == len(s.chunks) for s in segments[:3])
        assert totals.sent == 180 and totals.segments == 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("tty", [True, False])
def test_the_progress_is_a_bar_on_a_terminal_and_a_count_in_a_log(tty: bool) -> None:
    """Issue 16: a long replay shows how far it is; a terminal gets a bar redrawn in place, a log (journald, a
    pipe) a line now and then, never a flood of redraws."""
    import io

    from appliance.commands.replay import BAR_EVERY, PROGRESS_EVERY, _Progress

    out = io.StringIO()
    clock = FakeClock()
    progress = _Progress(1000, out, tty=tty, clock=clock)
    every = BAR_EVERY if tty else PROGRESS_EVERY
    clock.now += every / 2
    progress.update(5_000, 100)
    assert out.getvalue() == ""  # not yet due
    clock.now += every
    progress.update(20_000, 400)  # 40 % of the bytes, 20,000 frames in 1.5 periods
    first = out.getvalue()
    rate = f"{20_000 / (1.5 * every):,.0f} frames/s"
    if tty:
        assert first.startswith("\rreplay [############..................]  40%  20,000 frames  ") and rate in first
        assert "\n" not in first
    else:
        assert first == f"teleinfo replay: 20,000 frames (40%), {rate}, 0m{int(1.5 * every * 1.5):02d}s left\n"
    for _ in range(3):  # called for every batch: shown at most once per period
        progress.update(20_500, 410)
    assert out.getvalue() == first
    clock.now += every
    progress.update(40_000, 900)
    progress.finish()
    lines = out.getvalue()[len(first) :]
    if tty:
        assert lines.count("\r") == 2 and lines.endswith("\n") and "[" + "#" * 30 + "] 100%  40,000 frames" in lines
    else:
        assert lines.splitlines()[-1].startswith("teleinfo replay: 40,000 frames (100%), ")
        assert len(lines.splitlines()) == 2


def test_a_replay_in_a_log_ends_with_its_count(tmp_path: Path) -> None:
    write_journal(tmp_path / "j", 40)
    r = teleinfo("replay", "--dry-run", str(tmp_path / "j"))  # stderr is a pipe here: lines, no bar
    assert r.returncode == 0 and "\r" not in r.stderr
    assert "teleinfo replay: 20 frames (100%), " in r.stderr and "frames/s" in r.stderr
