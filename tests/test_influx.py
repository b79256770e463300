"""The InfluxDB output against real servers: the schema, the write path and every way a write can fail.

* influxd 1.6.7 (the strict line-protocol parser) takes the exact lines the output writes
  (:func:`appliance.outputs.influxdb.output.frame_lines`) for every mode, phase count, contract and producer, for
  several meters and across a restart of the server, with one type per field: the one ``docs/DATA_FORMAT.md`` gives.
* victoria-metrics takes the same writes through ``/api/v2/write`` (what InfluxDB 1.8+, 2.x and 3.x accept),
  read back through its export API.
* Failures: a wrong token, a refused connection, a server that accepts and never answers, https against a
  plain port, and a field type conflict (influxd's real 400, reached through a 30-line ``/api/v2/write`` ->
  ``/write`` shim, since influxd 1.6.7 predates ``/api/v2/write``).  Each must give a clear log line and a
  counted state, never a crash, a hang or a frame retried forever.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import itertools
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Secret
from appliance.lineproto import field_key, frame_time
from appliance.outputs.base import OutputWorker, Rejected
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.outputs.influxdb.output import InfluxError, InfluxOutput, frame_lines
from appliance.outputs.spool import Spool
from appliance.simulator import PARIS, MeterSimulator
from appliance.stats import Stats
from appliance.tic import HISTORIQUE, STANDARD, Decoder, Frame, Kind

from .captures import all_captures
from .mosquitto import TestCA
from .servers import InfluxD, VictoriaMetrics
from .util import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


# --- frames ------------------------------------------------------------------------------------------------
def sim_frames(
    n: int,
    mode: str = "standard",
    *,
    phases: int = 1,
    contract: str = "BASE",
    producer: bool = False,
    seed: int = 1,
    start: datetime | None = None,
) -> list[Frame]:
    """``n`` decoded frames of a simulated meter, one a second from ``start`` (default: ``n`` seconds ago), each
    received when its DATE says, as the service would have stamped them."""
    t0 = start or datetime.now(PARIS).replace(microsecond=0) - timedelta(seconds=n + 5)
    sim = MeterSimulator(
        start=t0,
        mode=mode,
        phases=phases,
        contract=contract,
        producer=producer,
        seed=seed,  # type: ignore[arg-type]
    )
    decoder = Decoder(mode)
    out: list[Frame] = []
    for i, sf in enumerate(itertools.islice(sim.frames(step=1.0), n + 1)):
        out.extend(f.received(t0.timestamp() + i) for f in decoder.feed(sf.data))
    return out[:n]


def int_fields(frame: Frame) -> dict[str, int]:
    """The integer fields of the frame's point (what victoria-metrics keeps: it stores strings as 0)."""
    table = STANDARD if frame.mode == "standard" else HISTORIQUE
    return {
        field_key(label): v
        for label, v in frame.values.items()
        if isinstance(v, int) and label in table and table[label].kind is Kind.INT
    }


def assert_stored(vm: VictoriaMetrics, frames: list[Frame]) -> None:
    """Every integer field of every frame is in victoria-metrics at the frame's time, once."""
    samples = vm.samples()
    for f in frames:
        t = frame_time(f)
        for key, value in int_fields(f).items():
            got = [v for ts, v in samples.get((f"teleinfo_{key}", f.meter or "", f.mode), []) if ts == t]
            assert got == [value], f"{key} of the frame at {t}: {got}, expected [{value}]"


# --- line protocol and timestamps ------------------------------------------------------------------------------
def test_lines_are_whole_seconds_from_date_when_sane_else_reception() -> None:
    f = sim_frames(1, "standard")[0]
    date = datetime.fromisoformat(f.timestamps["DATE"]).timestamp()
    [line] = frame_lines(f)
    assert line.endswith(f" {int(date)}")  # precision=s: no sub-second digits
    assert line.startswith(f"teleinfo,meter={f.meter},mode=standard ")
    f = replace(f, received_at=date + 3600)  # the meter's clock is an hour off: not trusted
    assert frame_lines(f)[0].endswith(f" {int(date) + 3600}")
    f = replace(f, received_at=date + 10.7, clock_degraded=True)  # degraded clock (lowercase season): reception time
    assert frame_lines(f)[0].endswith(f" {int(date) + 10}")
    h = sim_frames(1, "historique")[0]  # no DATE in historique: reception time
    assert h.received_at is not None
    assert frame_lines(h, "linky")[0].startswith("linky,") and frame_lines(h)[0].endswith(f" {int(h.received_at)}")


# --- influxd 1.6.7: the schema ----------------------------------------------------------------------------------
@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[InfluxD]:
    server = InfluxD()
    server.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def write_v1(server: InfluxD, db: str, lines: list[str]) -> None:
    """POST /write?precision=s (influxd's strict parser); fail with influxd's message on anything but 204."""
    url = f"http://127.0.0.1:{server.http_port}/write?" + urllib.parse.urlencode({"db": db, "precision": "s"})
    try:
        with urllib.request.urlopen(url, data="\n".join(lines).encode(), timeout=10) as r:
            assert r.status == 204
    except urllib.error.HTTPError as e:
        raise AssertionError(f"influxd refused the lines: {e.code} {e.read().decode()}") from None


METERS = [  # every shape of frame the service can produce: modes, phases, contracts, producer
    {"mode": "historique", "contract": "BASE"},
    {"mode": "historique", "contract": "HCHP"},
    {"mode": "historique", "contract": "TEMPO"},
    {"mode": "historique", "contract": "EJP"},
    {"mode": "historique", "phases": 3, "contract": "BASE"},
    {"mode": "standard", "contract": "BASE"},
    {"mode": "standard", "contract": "TEMPO"},
    {"mode": "standard", "phases": 3, "contract": "HCHP"},
    {"mode": "standard", "phases": 3, "producer": True},
]


def capture_frames() -> list[Frame]:
    """The real captures' frames (tests/data/tic)."""
    out: list[Frame] = []
    for c in all_captures():
        for f in Decoder("auto").feed(c.stream()):
            f = f.received(time.time() - 3600)  # a capture's DATE is years old: reception time is used
            if f.meter is not None:  # a frame with no known meter is not written
                out.append(f)
    return out


def test_influxd_accepts_every_line_with_stable_field_types_across_meters_modes_and_restarts(
    influxd: InfluxD, tmp_path: Path
) -> None:
    influxd.execute('CREATE DATABASE "schema"')
    written: list[Frame] = []
    for run in range(2):  # the second run after a restart of the server, with other meters and later values
        start = datetime.now(PARIS).replace(microsecond=0) - timedelta(hours=2 - run)
        for i, spec in enumerate(METERS):
            frames = sim_frames(40, start=start, seed=10 * run + i, **spec)  # type: ignore[arg-type]
            lines = [line for f in frames for line in frame_lines(f)]
            assert len(lines) == len(frames)  # one line per frame over HTTP
            write_v1(influxd, "schema", lines)
            written += frames
        if run == 0:
            frames = capture_frames()
            assert len(frames) == 23  # every frame of the seven captures
            write_v1(influxd, "schema", [line for f in frames for line in frame_lines(f)])
            written += frames
            influxd.stop()
            influxd.start(tmp_path)
    # one type per field, the one of the data contract: integer for integer labels, string for the others
    types: dict[str, set[str]] = {}
    for row in influxd.rows("schema", "SHOW FIELD KEYS FROM teleinfo"):
        types.setdefault(row["fieldKey"], set()).add(row["fieldType"])
    for f in written:
        table = STANDARD if f.mode == "standard" else HISTORIQUE
        for label in f.values:
            if label in ("ADCO", "ADSC", "PRM"):
                continue
            spec = table.get(label)
            want = "integer" if spec is not None and spec.kind is Kind.INT else "string"
            assert types[field_key(label)] == {want}, (label, types[field_key(label)])
    meters = {row["value"] for row in influxd.rows("schema", "SHOW TAG VALUES FROM teleinfo WITH KEY = meter")}
    assert meters == {f.meter for f in written}
    (count,) = influxd.rows("schema", "SELECT count(*) FROM teleinfo WHERE mode = 'standard'")
    assert count["count_ntarf"] > 0


# --- victoria-metrics: the write path ------------------------------------------------------------------------------
@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics()
    server.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def influx_cfg(url: str, **kw: Any) -> InfluxConfig:
    return InfluxConfig(enabled=True, url=url, **kw)


def test_worker_writes_every_frame_to_victoria_metrics(vm: VictoriaMetrics, tmp_path: Path) -> None:
    stats = Stats()
    out = InfluxOutput(influx_cfg(vm.url, token=Secret("ignored-by-vm")))
    w = OutputWorker(out, stats, spool=Spool(tmp_path / "spool"), batch_size=50)
    frames = sim_frames(120, "standard", phases=3, producer=True) + sim_frames(60, "historique", seed=5)
    for f in frames:  # submitted before the start: the worker sends what piled up in batches
        w.submit(f)
    w.start()
    wait_until(lambda: stats.snapshot().outputs["influxdb"].sent == len(frames), 20)
    assert w.stop(3)
    assert_stored(vm, frames)
    o = stats.snapshot().outputs["influxdb"]
    assert o.failed == 0 and o.spooled == 0 and o.state == "stopped"
    assert not (tmp_path / "spool").exists()  # a healthy output never touches the disk


# --- bad input: a clear log line, a counted state, never a crash or a hang ---------------------------------------
def run_failing(
    out: InfluxOutput, tmp_path: Path, caplog: pytest.LogCaptureFixture, expect: str
) -> tuple[OutputWorker, list[Frame]]:
    """Submit frames to a worker whose server fails; wait for the state, the log line and the spool."""
    stats = Stats()
    w = OutputWorker(out, stats, spool=Spool(tmp_path / "spool"), backoff_initial=0.05, backoff_max=0.2)
    w.start()
    frames = sim_frames(5, "historique")
    for f in frames:
        w.submit(f)
    wait_until(lambda: stats.snapshot().outputs["influxdb"].spooled == 5, 10)
    o = stats.snapshot().outputs["influxdb"]
    assert o.state == "failing" and expect in (o.last_error or ""), o
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(expect in m for m in logged), logged
    assert len([m for m in logged if "failing" in m]) == 1  # one line per state change, not one per retry
    return w, frames


def test_wrong_token_is_a_clear_failing_state_and_frames_are_kept(tmp_path: Path, caplog: Any) -> None:
    vm = VictoriaMetrics(username="teleinfo", password="right")
    vm.start(tmp_path)
    try:
        out = InfluxOutput(influx_cfg(vm.url, token=Secret("teleinfo:wrong")))
        w, frames = run_failing(out, tmp_path, caplog, "rejected the token (401 Unauthorized)")
        t0 = time.monotonic()
        assert w.stop(3) and time.monotonic() - t0 < 3
        good = InfluxOutput(influx_cfg(vm.url, token=Secret("teleinfo:right")))  # fixed: the spool replays
        stats = Stats()
        w = OutputWorker(good, stats, spool=Spool(tmp_path / "spool"))
        w.start()
        wait_until(lambda: stats.snapshot().outputs["influxdb"].sent == 5, 10)
        assert w.stop(3)
        assert_stored(vm, frames)
    finally:
        vm.stop()


def test_refused_connection(tmp_path: Path, caplog: Any) -> None:
    out = InfluxOutput(influx_cfg(f"http://127.0.0.1:{free_port()}"))
    w, _ = run_failing(out, tmp_path, caplog, "unreachable: connection refused")
    assert w.stop(3)


def test_https_against_a_plain_port_is_a_tls_error(vm: VictoriaMetrics, tmp_path: Path, caplog: Any) -> None:
    out = InfluxOutput(influx_cfg(f"https://127.0.0.1:{vm.port}"))
    w, _ = run_failing(out, tmp_path, caplog, "unreachable: TLS error")
    assert w.stop(3)


def test_https_with_a_ca_file_without_it_and_unverified(tmp_path: Path, caplog: Any, recwarn: Any) -> None:
    ca = TestCA(tmp_path / "ca")
    vm = VictoriaMetrics(tls=(ca.server_cert, ca.server_key))
    vm.start(tmp_path)
    try:
        frames = sim_frames(3, "historique")
        trusted = InfluxOutput(influx_cfg(vm.url, ca_file=str(ca.ca_cert)))
        trusted.open()
        trusted.send_batch(frames[:2])
        trusted.close()
        untrusted = InfluxOutput(influx_cfg(vm.url))  # the system's CAs do not know the test CA
        with pytest.raises(InfluxError, match=r"TLS error.*certificate verify failed"):
            untrusted.open()
        insecure = InfluxOutput(influx_cfg(vm.url, verify_tls=False))
        insecure.open()
        insecure.send(frames[2])
        insecure.close()
        assert_stored(vm, frames)
        # verify_tls = false is said once in the log, not warned by urllib3 on every request
        assert [r.getMessage() for r in caplog.records if "not verified" in r.getMessage()] == [
            f"InfluxDB {vm.url}: the server's TLS certificate is not verified (verify_tls = false)"
        ]
        assert not [w for w in recwarn if "Unverified HTTPS" in str(w.message)]
    finally:
        vm.stop()


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_and_stop_is_bounded(tmp_path: Path, caplog: Any) -> None:
    # A listening socket nobody accepts on: the kernel completes the handshake, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        out = InfluxOutput(influx_cfg(url, timeout=0.5))
        w, _ = run_failing(out, tmp_path, caplog, "no answer within 0.5 s")
        assert w.stop(3)
        # Now with a long timeout and frames queued while a request hangs: stop() returns on time anyway,
        # and the abandoned worker's queue is in the spool for the next start.
        stats = Stats()
        out = InfluxOutput(influx_cfg(url, timeout=3.0))
        w = OutputWorker(out, stats, spool=Spool(tmp_path / "spool2"))
        w.start()
        frames = sim_frames(8, "standard")
        for f in frames:
            w.submit(f)
        time.sleep(0.3)  # the worker is now waiting for /ping's answer
        t0 = time.monotonic()
        assert not w.stop(1.0)
        assert time.monotonic() - t0 < 2.0
        assert any(
            "abandoning its thread (8 queued frames moved to the spool)" in r.getMessage() for r in caplog.records
        )
        wait_until(lambda: stats.snapshot().outputs["influxdb"].state == "stopped", 10)
        spool = Spool(tmp_path / "spool2")
        assert [frame_time(f) for f in spool.peek(100).frames] == [frame_time(f) for f in frames]


# --- a write in doubt: at most one outstanding request -------------------------------------------------------------
class Stalling:
    """A server whose ``/ping`` and write answers the test holds back and releases: each POST's body is recorded
    as it arrives, then answered 204 once :attr:`writes_go` is set (``/ping`` likewise with :attr:`pings_go`)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.writes_go = threading.Event()
        self.pings_go = threading.Event()
        stalling = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, go: threading.Event) -> None:
                go.wait(30)
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                self._answer(stalling.pings_go)

            def do_POST(self) -> None:
                stalling.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self._answer(stalling.writes_go)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def frames_in(self, i: int) -> int:
        return len(self.bodies[i].splitlines())

    def close(self) -> None:
        self.writes_go.set()
        self.pings_go.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stalling() -> Iterator[Stalling]:
    s = Stalling()
    try:
        yield s
    finally:
        s.close()


def test_a_write_in_doubt_is_waited_for_and_its_frames_are_not_sent_twice(stalling: Stalling) -> None:
    out = InfluxOutput(influx_cfg(stalling.url, timeout=0.3))
    frames = sim_frames(4, "historique")
    with pytest.raises(InfluxError, match=r"no answer within 0\.3 s"):
        out.send_batch(frames[:2])
    # The server is hung (no /ping either): the retry sends nothing, the first write is still in doubt.
    with pytest.raises(InfluxError, match="still unanswered"):
        out.send_batch(frames[:3])
    assert len(stalling.bodies) == 1
    stalling.writes_go.set()  # resumed: it executes the write it holds
    stalling.pings_go.set()
    out.send_batch(frames)  # the first two are in the database: only the two others are sent
    assert [stalling.frames_in(i) for i in range(len(stalling.bodies))] == [2, 2]
    assert stalling.bodies[1] == "\n".join(line for f in frames[2:] for line in frame_lines(f)).encode()
    out.close()


def test_a_write_lost_by_a_server_that_answers_ping_is_sent_again(stalling: Stalling, caplog: Any) -> None:
    out = InfluxOutput(influx_cfg(stalling.url, timeout=0.3))
    frames = sim_frames(3, "historique")
    stalling.pings_go.set()  # the server is up, but this write never gets an answer
    with pytest.raises(InfluxError, match=r"no answer within 0\.3 s"):
        out.send_batch(frames[:2])
    with pytest.raises(InfluxError):  # the resend gets no answer either (still the same server)
        out.send_batch(frames)
    assert [stalling.frames_in(i) for i in range(len(stalling.bodies))] == [2, 3]
    assert any("answers /ping but not a write" in r.getMessage() for r in caplog.records)
    assert out.probe()
    out.close()


# --- a field type conflict: influxd's real 400 --------------------------------------------------------------------
class V2Shim:
    """``/api/v2/write?bucket=B&precision=P`` -> influxd 1.6.7's ``/write?db=B&precision=P``; ``/ping`` as is.

    Status and body are passed through unchanged, so the output sees influxd's own 400 "field type conflict".
    """

    def __init__(self, influxd: InfluxD) -> None:
        upstream = f"http://127.0.0.1:{influxd.http_port}"
        self.writes = 0

        shim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self, url: str, body: bytes | None) -> None:
                try:
                    with urllib.request.urlopen(url, data=body, timeout=10) as r:  # noqa: S310 - http:// above
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward(upstream + "/ping", None)

            def do_POST(self) -> None:
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                shim.writes += 1
                params = urllib.parse.urlencode({"db": q["bucket"][0], "precision": q["precision"][0]})
                self._forward(f"{upstream}/write?{params}", body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.mark.slow
def test_type_conflict_is_rejected_counted_and_never_retried(influxd: InfluxD, tmp_path: Path, caplog: Any) -> None:
    influxd.execute('CREATE DATABASE "conflict"')
    write_v1(influxd, "conflict", [f"teleinfo,meter=000000000000,mode=historique ptec=1i {int(time.time()) - 7200}"])
    shim = V2Shim(influxd)
    try:
        out = InfluxOutput(influx_cfg(shim.url, bucket="conflict"))
        hist, std = sim_frames(6, "historique"), sim_frames(6, "standard")
        out.open()
        with pytest.raises(Rejected) as e:  # ptec is a string field: influxd's 400 "field type conflict"
            out.send(hist[0])
        assert e.value.count == 1
        out.send(std[0])  # other points still go
        # A spooled mixed batch: bisected until the refused frames are isolated, the others delivered.
        spool = Spool(tmp_path / "spool")
        for f in itertools.chain.from_iterable(zip(hist[1:], std[1:], strict=True)):
            spool.append(f)
        stats = Stats()
        w = OutputWorker(out, stats, spool=spool, batch_size=10)
        w.start()
        wait_until(lambda: stats.snapshot().outputs["influxdb"].spooled == 0, 10)
        for f in sim_frames(3, "historique", seed=9):  # refused, counted, dropped
            w.submit(f)
        wait_until(lambda: stats.snapshot().outputs["influxdb"].failed == 5 + 3, 10)
        writes = shim.writes
        time.sleep(0.5)
        assert shim.writes == writes  # never retried
        o = stats.snapshot().outputs["influxdb"]
        assert o.sent == 5 and o.spooled == 0 and o.queued == 0 and o.state == "up", o
        assert "refused" in (o.last_error or "")
        assert w.stop(3)
    finally:
        shim.close()
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("field type conflict" in m and "not retried" in m for m in logged), logged
    std_times = {row["time"] for row in influxd.rows("conflict", "SELECT east FROM teleinfo WHERE mode='standard'")}
    assert std_times == {frame_time(f) * 10**9 for f in std}
    assert influxd.rows("conflict", "SELECT count(ptec) FROM teleinfo WHERE mode='historique'")[0]["count"] == 1


def test_errors_are_influx_errors_with_the_status(tmp_path: Path) -> None:
    """influxd 1.6.7 has no /api/v2/write: a 404 that says what may be wrong, retried (the user can fix it)."""
    server = InfluxD()
    server.start(tmp_path)
    try:
        out = InfluxOutput(influx_cfg(f"http://127.0.0.1:{server.http_port}"))
        out.open()  # /ping works
        with pytest.raises(InfluxError) as e:
            out.send(sim_frames(1)[0])
        assert e.value.status == 404 and "without /api/v2/write" in str(e.value)
        out.close()
    finally:
        server.stop()
