"""Nothing is lost while the InfluxDB server is away: the service, its spool and a real victoria-metrics.

``teleinfo run`` runs as its own process on the built-in simulator (a frame every ~1.3 s in historique, ~0.93 s
in standard), with its state directory in the test's tmp directory, its health and control sockets off, and its
multicast output on 127.0.0.1 in line protocol with second precision.  A multicast receiver in the test is the
ground truth: it sees every frame the service produced, live, with the very timestamp the InfluxDB output
writes.  Each test then reads victoria-metrics back (export API) and checks that every integer field of every
frame is there at its original time; a point written twice (a batch resent after a crash) may appear twice,
but only with the same values, which InfluxDB keeps as one point.

Only 127.0.0.1 is used: victoria-metrics, the multicast group (joined and sent on loopback), the service.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lineproto import frame_time, parse_line
from appliance.outputs.base import OutputWorker
from appliance.outputs.influxdb.output import InfluxOutput
from appliance.outputs.multicast.receiver import open_receiver
from appliance.outputs.spool import Spool
from appliance.stats import Stats

from .servers import VictoriaMetrics
from .test_influx import influx_cfg, sim_frames
from .util import free_port, mount_tmpfs, wait_until

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

Key = tuple[str, str, str, int]  # field, meter, mode, time (s)


class Receiver:
    """The multicast group on loopback: every integer field the service published, by field and time."""

    def __init__(self, group: str, port: int) -> None:
        self.sock = open_receiver(group, port, "127.0.0.1")
        self.sock.settimeout(0.1)
        self.lines: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self.lines.extend(self.sock.recv(65535).decode().split("\n"))
            except TimeoutError:
                continue
            except OSError:
                return

    def fields(self) -> dict[Key, list[int]]:
        """``(field, meter, mode, time) -> values`` (a frame split over several lines has each field once)."""
        out: dict[Key, list[int]] = defaultdict(list)
        for line in list(self.lines):
            p = parse_line(line)
            assert p.time is not None
            for k, v in p.fields.items():
                if isinstance(v, int) and not isinstance(v, bool):  # victoria-metrics stores strings as 0
                    out[(k, p.tags["meter"], p.tags["mode"], p.time)].append(v)
        return out

    def times(self) -> list[int]:
        return sorted({k[3] for k in self.fields()})

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


def stored(vm: VictoriaMetrics) -> dict[Key, list[int]]:
    out: dict[Key, list[int]] = defaultdict(list)
    for (name, meter, mode), pairs in vm.samples().items():
        for t, v in pairs:
            out[(name.removeprefix("teleinfo_"), meter, mode, t)].append(int(v))
    return out


def missing(sent: dict[Key, list[int]], got: dict[Key, list[int]]) -> list[Key]:
    """Keys whose values did not all arrive, or arrived with a value never sent (a resend must be identical)."""
    return sorted(k for k, v in sent.items() if set(got.get(k, [])) != set(v) or len(got.get(k, [])) < len(v))


class ServiceProc:
    """``python -m appliance run`` in its own process; its log in a file; stopped by its own PID."""

    def __init__(self, config: Path, log: Path, **extra_env: str) -> None:
        self.log_path = log
        drop = ("NOTIFY_SOCKET", "TELEINFO_CONFIG", "RUNTIME_DIRECTORY")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["PYTHONPATH"] = str(REPO)
        env.update(extra_env)
        with log.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "run", "--config", str(config), "--no-view"],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 6.0) -> tuple[int, float]:
        """Send ``sig``; the exit status and how long it took to exit."""
        t0 = time.monotonic()
        os.kill(self.proc.pid, sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout} s after {sig.name}:\n{self.log()}") from None
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Rig:
    """victoria-metrics, the receiver and the service processes of one test; all stopped after it.

    With a ``password``, victoria-metrics wants HTTP basic authentication and the service gets its token
    (``teleinfo:<password>``) from the environment, as under systemd.
    """

    def __init__(self, tmp: Path, password: str = "") -> None:
        self.tmp = tmp
        self.password = password
        self.vm = VictoriaMetrics("teleinfo" if password else "", password)
        self.vm.start(tmp)
        self.group, self.port = (
            f"239.255.{random.randint(100, 250)}.{random.randint(1, 254)}",
            free_port(socket.SOCK_DGRAM),
        )
        self.receiver = Receiver(self.group, self.port)
        self.state = tmp / "state"
        self.spool_dir = self.state / "spool" / "influxdb"
        self.procs: list[ServiceProc] = []

    def service(
        self, mode: str = "historique", url: str = "", timeout: float = 2.0, influx_extra: str = ""
    ) -> ServiceProc:
        """Start the service (InfluxDB: ``url``, else our victoria-metrics; ``influx_extra``: more lines of its
        section) and wait for its first frame on the multicast group."""
        config = self.tmp / "teleinfo.toml"
        config.write_text(
            '[source]\nkind = "simulator"\n'
            f'[source.simulator]\nmode = "{mode}"\nseed = 3\n'
            f'[outputs.multicast]\ngroup = "{self.group}"\nport = {self.port}\ninterface = "127.0.0.1"\n'
            'format = "influx"\nprecision = "s"\nttl = 1\n'
            f'[outputs.influxdb]\nenabled = true\nurl = "{url or self.vm.url}"\ntimeout = {timeout}\n{influx_extra}'
            + ('token = { env = "TELEINFO_INFLUX_TOKEN" }\n' if self.password else "")
            + "[health]\nenabled = false\n[control]\nenabled = false\n[web]\nenabled = false\n"
            f'[state]\ndirectory = "{self.state}"\n'
        )
        before = len(self.receiver.lines)
        env = {"TELEINFO_INFLUX_TOKEN": f"teleinfo:{self.password}"} if self.password else {}
        p = ServiceProc(config, self.tmp / f"service{len(self.procs)}.log", **env)
        self.procs.append(p)
        wait_until(lambda: len(self.receiver.lines) > before or p.proc.poll() is not None, 15)
        assert p.proc.poll() is None, p.log()
        return p

    def spooled(self) -> int:
        """Records in the spool files right now (read without opening the spool)."""
        return (
            sum(f.read_bytes().count(b"\n") for f in self.spool_dir.glob("*.spool")) if self.spool_dir.exists() else 0
        )

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        self.receiver.close()
        self.vm.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def wait_stored(rig: Rig, timeout: float) -> dict[Key, list[int]]:
    """Wait until everything the receiver saw is in victoria-metrics; return what is stored."""
    got: dict[Key, list[int]] = {}

    def complete() -> bool:
        nonlocal got
        got = stored(rig.vm)
        return not missing(rig.receiver.fields(), got)

    try:
        wait_until(complete, timeout, interval=0.5)
    except AssertionError:
        lost = missing(rig.receiver.fields(), got)
        raise AssertionError(f"{len(lost)} fields missing, e.g. {lost[:5]}\n" + rig.procs[-1].log()) from None
    return got


def assert_clean(p: ServiceProc) -> None:
    log = p.log()
    assert "Traceback" not in log and "ERROR" not in log, log


@pytest.mark.slow
def test_points_written_by_the_service_arrive_and_nothing_touches_the_disk(tmp_path: Path) -> None:
    rig = Rig(tmp_path, password="s3cret")  # the token from the environment, basic authentication
    try:
        svc = rig.service("standard")  # timestamps: the meter's DATE
        wait_until(lambda: len(rig.receiver.times()) >= 6, 15)
        rc, _ = svc.stop()
        assert rc == 0
        wait_stored(rig, 10)
        assert len(rig.receiver.times()) >= 6
        assert not rig.spool_dir.exists() or not any(rig.spool_dir.iterdir())  # healthy: no spool file, ever
        assert "failing" not in svc.log()
        assert_clean(svc)
    finally:
        rig.close()


@pytest.mark.slow
def test_a_60_s_outage_with_a_restart_of_the_service_loses_nothing(rig: Rig) -> None:
    a = rig.service()
    wait_until(lambda: len(rig.receiver.times()) >= 3, 15)
    wait_stored(rig, 10)  # frames before the outage arrived live
    rig.vm.stop()
    down = time.monotonic()
    wait_until(lambda: rig.spooled() >= 3, 15)  # while the server is away, frames go to disk at once
    assert "output influxdb failing" in a.log() and "connection refused" in a.log()
    wait_until(lambda: time.monotonic() - down >= 44, 50)  # late enough that b's backoff is short when it's back
    rc, took = a.stop()  # the server is still dead: stopping must not wait on it
    assert rc == 0 and took < 5.5, took
    assert rig.spooled() >= 15
    b = rig.service()
    assert "frames to replay from a previous run" in b.log()
    wait_until(lambda: time.monotonic() - down >= 60, 20)
    during = len(rig.receiver.times())
    rig.vm.start(rig.tmp)  # same port, same data
    wait_until(lambda: len(rig.receiver.times()) >= during + 3, 15)  # and frames after the outage
    wait_stored(rig, 45)  # the worker's backoff is capped at 30 s
    b.stop()
    wait_stored(rig, 5)
    sent = rig.receiver.fields()
    assert len({k[3] for k in sent}) >= 45
    assert "spool replayed" in b.log()
    assert rig.spooled() == 0 and not any(rig.spool_dir.iterdir())  # replayed spool files are deleted
    assert_clean(a)
    assert_clean(b)


@pytest.mark.slow
def test_sigkill_while_spooling_then_restart_loses_nothing(rig: Rig) -> None:
    a = rig.service()
    wait_until(lambda: len(rig.receiver.times()) >= 2, 15)
    wait_stored(rig, 10)
    rig.vm.stop()
    wait_until(lambda: rig.spooled() >= 4, 20)
    a.stop(signal.SIGKILL)
    # Every frame the service published, except at most the very last (killed between the two outputs), is
    # either in victoria-metrics already or in the spool.
    on_disk = Spool(rig.spool_dir).peek(10_000).frames
    assert len(on_disk) >= 4  # what was spooled before the kill (the loop below checks each one arrives)
    spool_times = {frame_time(f) for f in on_disk}
    published = rig.receiver.times()
    rig.vm.start(rig.tmp)
    before = {k[3] for k in stored(rig.vm)}
    rig.vm.stop()
    assert set(published[:-1]) <= before | spool_times, (published, before, spool_times)
    b = rig.service()  # the server still down: the new process spools behind the old records
    wait_until(lambda: rig.spooled() > len(on_disk), 10)
    rig.vm.start(rig.tmp)
    got = wait_stored(rig, 30)
    for f in on_disk:  # every spooled frame, with its original timestamp
        assert ("papp", f.meter, "historique", frame_time(f)) in got
    b.stop()
    wait_stored(rig, 5)
    assert_clean(b)


@pytest.mark.slow
def test_stop_is_bounded_when_the_server_hangs_and_nothing_queued_is_lost(rig: Rig) -> None:
    # A listening socket nobody accepts on: connections open, requests are never answered.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        svc = rig.service(url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=30)
        wait_until(lambda: len(rig.receiver.times()) >= 3, 15)
        rc, took = svc.stop()  # while the output waits for an answer that would take 30 s
    assert rc == 0 and took < 5.5, took
    assert "abandoning its thread" in svc.log() and "moved to the spool" in svc.log()
    published = set(rig.receiver.times())
    spooled = {frame_time(f) for f in Spool(rig.spool_dir).peek(1000).frames}
    assert published <= spooled, (published, spooled)  # stuck or queued: everything went to the spool
    assert "Traceback" not in svc.log()


@pytest.mark.root
def test_a_full_disk_for_the_spool_is_a_counted_state_then_everything_kept_arrives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = tmp_path / "tiny"
    mount_tmpfs(disk, "16k")
    vm = VictoriaMetrics()
    vm.port = free_port()  # not started yet: the server is down
    try:
        stats = Stats()
        out = InfluxOutput(influx_cfg(vm.url, timeout=1.0))
        w = OutputWorker(out, stats, spool=Spool(disk / "spool"), queue_size=40, backoff_initial=0.05, backoff_max=0.2)
        w.start()
        wait_until(lambda: stats.snapshot().outputs["influxdb"].state == "failing", 10)  # client loaded
        frames = sim_frames(150, "historique")
        for f in frames:
            w.submit(f)
            time.sleep(0.002)  # a fast meter, not one burst: the worker spools as frames come
        wait_until(lambda: "No space left" in (stats.snapshot().outputs["influxdb"].spool_error or ""), 10)
        wait_until(lambda: stats.snapshot().outputs["influxdb"].queued == 40, 10)
        o = stats.snapshot().outputs["influxdb"]
        kept = o.spooled
        assert 10 < kept < 110 and o.dropped == 150 - kept - 40, o  # disk full: memory, bounded, counted
        assert o.state == "failing" and w._thread.is_alive()
        assert any("cannot write the spool" in r.getMessage() for r in caplog.records)
        vm.start(tmp_path)
        wait_until(lambda: stats.snapshot().outputs["influxdb"].sent == kept + 40, 20)
        assert w.stop(3)
        got = vm.samples()
        times = [t for t, _ in got[("teleinfo_papp", frames[0].meter or "", "historique")]]
        expected = [frame_time(f) for f in frames[:kept] + frames[-40:]]  # the oldest spooled, the newest kept
        assert times == expected
        assert not any((disk / "spool").iterdir())  # replayed: the space is given back
    finally:
        vm.stop()
        subprocess.run(["umount", str(disk)], check=False)


def test_an_unreadable_spool_segment_is_logged_and_frames_still_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "spool" / "000000000001.spool").mkdir(parents=True)  # a segment that cannot be read, even by root
    spool = Spool(tmp_path / "spool")  # the service must still start
    assert len(spool) == 0
    assert any("is not a file" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    frames = sim_frames(3, "historique")
    for f in frames:
        spool.append(f)
    spool.close()
    again = Spool(tmp_path / "spool")
    assert [frame_time(f) for f in again.peek(10).frames] == [frame_time(f) for f in frames]


def duplicates(rig: Rig, field: str = "papp") -> int:
    """Samples of ``field`` stored more often than the service published them (victoria-metrics keeps copies)."""
    sent, got = rig.receiver.fields(), stored(rig.vm)
    return sum(max(0, len(got.get(k, [])) - len(v)) for k, v in sent.items() if k[0] == field)


@pytest.mark.slow
def test_a_hung_server_gets_one_write_at_a_time_and_stores_each_frame_once(rig: Rig) -> None:
    """SIGSTOP: the server takes connections and requests into its buffers and answers none; resumed, it executes
    every one.  A write that got no answer is waited for, never sent again beside itself."""
    svc = rig.service(timeout=1.0)
    wait_until(lambda: len(rig.receiver.times()) >= 3, 15)
    wait_stored(rig, 10)
    rig.vm.pause()
    hung = time.monotonic()
    wait_until(lambda: time.monotonic() - hung >= 20, 25)  # about 15 frames, many retries of 1 s
    rig.vm.resume()
    wait_stored(rig, 40)
    rc, _ = svc.stop()
    assert rc == 0
    wait_stored(rig, 5)
    dups = duplicates(rig)
    print(f"frames {len(rig.receiver.times())}, duplicates stored after a 20 s hang: {dups}")
    assert dups == 0, dups
    assert "Traceback" not in svc.log()


@pytest.mark.slow
def test_kill_9_while_a_write_hangs_loses_no_queued_frame(rig: Rig) -> None:
    """Frames that arrive while the worker waits on a hung server are on disk before it waits: kill -9 then
    loses none of them (the write in doubt is resent by the next process: at most that batch twice)."""
    a = rig.service(timeout=30.0)  # a write waits 30 s for its answer
    wait_until(lambda: len(rig.receiver.times()) >= 2, 15)
    wait_stored(rig, 10)
    rig.vm.pause()
    before = len(rig.receiver.times())
    wait_until(lambda: len(rig.receiver.times()) >= before + 4, 15)  # queued behind the hung write
    a.stop(signal.SIGKILL)
    published = rig.receiver.times()
    b = rig.service(timeout=5.0)
    rig.vm.resume()
    wait_until(lambda: len(rig.receiver.times()) >= len(published) + 2, 15)
    got = wait_stored(rig, 40)
    assert set(published) <= {k[3] for k in got}
    b.stop()
    wait_stored(rig, 5)
    dups = duplicates(rig)
    print(f"duplicates after kill -9 during a hang: {dups}")
    assert dups <= 1, dups  # the one frame in the request in doubt when the process died
    assert_clean(b)


@pytest.mark.slow
def test_sigterm_while_the_server_hangs_takes_under_5_s_and_says_what_is_kept(rig: Rig) -> None:
    svc = rig.service(timeout=5.0, influx_extra="health_interval = 1\n")
    wait_until(lambda: len(rig.receiver.times()) >= 2, 15)
    wait_stored(rig, 10)
    rig.vm.pause()
    hung = time.monotonic()
    wait_until(lambda: time.monotonic() - hung >= 5.7, 8)  # a write timed out, the next one hangs too
    rc, took = svc.stop()
    print(f"SIGTERM while InfluxDB hangs: {took:.2f} s")
    assert rc == 0 and took < 5.0, took
    assert "kept on disk: " in svc.log() and " in the influxdb spool" in svc.log(), svc.log()
    published = set(rig.receiver.times())
    rig.vm.resume()
    b = rig.service()
    got = wait_stored(rig, 30)
    assert published <= {k[3] for k in got}
    b.stop()
