"""End to end: ``teleinfo run`` as a separate process, a pty for the meter, real multicast receivers.

The unit tests check each piece (decoder, serial source, outputs) in isolation; these check what a user and
systemd see of the whole: every frame the meter sends reaches every listener once, in order and decoded
right; the service survives an unplugged adapter, garbage, the wrong speed and a meter changing mode; it speaks
sd_notify (READY once started, adapter or not; WATCHDOG from the read loop; STATUS, STOPPING) and reloads on
SIGHUP; it refuses bad configurations with the key path of every error; and under systemd it logs one line per
state change, each with its syslog priority.

* The meter is a :class:`~tests.ptyutil.PtyMeter` fed by the simulator at the real baud rate (standard 9600 Bd,
  about a frame a second; historique 1200 Bd), with the silence between frames, so the reader sees bytes
  trickle in as from a Linky.  The expected readings are the simulator's own (:attr:`SimFrame.values`).
* The service is ``python -m appliance run --config FILE --no-view`` in its own process, read through its
  standard error (the log) and an sd_notify socket the test binds; it is stopped by its own PID.
* Network safety: every configuration written here sets ``[outputs.multicast] interface`` (127.0.0.1, or the
  test namespace's veth address when the service runs inside that namespace), and disables the health and
  control sockets, so nothing is sent or bound anywhere but loopback or a namespace the test created and deletes.
  Each test uses its own random group in 239.255.0.0/16 and a free port.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from appliance.commands.listen import POINT_QUIET
from appliance.lineproto import Point, parse_line
from appliance.outputs.multicast.parts import JsonReassembler
from appliance.outputs.multicast.receiver import open_receiver
from appliance.simulator import BAUDRATES, PARIS, MeterSimulator, SimFrame
from appliance.tic import HISTORIQUE, STANDARD, Kind

from .netns import VethPair
from .ptyutil import PtyMeter
from .util import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
METER_NAME = "usb-Teleinfo_TIC_adapter-if00-port0"
STATUS_RE = re.compile(
    r"(starting|open|no_data|lost|closed)( historique| standard)?; (\d+) frames, (\d+) rejected"
    r"(, last \d+ s ago)?; (multicast \w+|no outputs)"
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


# --- the meter ---------------------------------------------------------------------------------------------
def meter(mode: Literal["historique", "standard"], seed: int = 7) -> MeterSimulator:
    """A simulated Linky whose clock (the standard frames' DATE) starts now, as a real meter's would."""
    return MeterSimulator(start=datetime.now(PARIS).replace(microsecond=0), mode=mode, seed=seed)


class Feeder:
    """The simulated meter on the pty, in a thread: each frame at its baud rate, then the silence before the next.

    :attr:`written` lists the frames completely written so far, so a test knows exactly what the service was
    given, even when it stops the meter at an arbitrary moment.
    """

    def __init__(self, pty: PtyMeter, frames: Iterable[SimFrame]) -> None:
        self.pty = pty
        self.frames = iter(frames)
        self.written: list[SimFrame] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for frame in self.frames:
                if self._stop.is_set():
                    return
                baud = BAUDRATES[frame.mode]
                self.pty.write_paced(frame.data, baud)
                self.written.append(frame)
                self._stop.wait(max(0.0, frame.duration - len(frame.data) * 10 / baud))
        except BaseException as e:  # reported by join(): a full pty means the service stopped reading
            self.error = e

    def join(self, timeout: float = 30.0) -> list[SimFrame]:
        """Wait until every frame is written (finite feeds only); return them."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the meter did not finish writing"
        if self.error is not None:
            raise self.error
        return self.written

    def halt(self) -> None:
        """Ask the thread to stop after the frame being written (teardown: nobody waits for it)."""
        self._stop.set()

    def stop(self) -> list[SimFrame]:
        """Stop after the frame being written (at most one frame's time); return the frames written."""
        self.halt()
        return self.join(5.0)


def feed(pty: PtyMeter, frames: Iterable[SimFrame]) -> list[SimFrame]:
    """Write frames at the meter's pace and return them once all are written."""
    return Feeder(pty, frames).start().join()


def unread(pty: PtyMeter) -> int:
    """Bytes written to the pty that the service has not read yet (TIOCINQ on the test's end of the slave)."""
    return int(struct.unpack("i", fcntl.ioctl(pty.slave, termios.TIOCINQ, b"\0" * 4))[0])


def stop_meter(pty: PtyMeter, feeder: Feeder) -> list[SimFrame]:
    """Stop the meter and wait until the service has read every byte of it; return the frames written.

    From then on, stopping the service loses nothing: a frame it has read is handled before the reader loop
    looks at the stop flag, and SIGTERM lets the outputs deliver what they hold.  So a test can compare what
    arrived with what was written exactly, without guessing when the last frame is through.
    """
    frames = feeder.stop()
    wait_until(lambda: unread(pty) == 0, 5)
    return frames


# --- processes ---------------------------------------------------------------------------------------------
class Proc:
    """A subprocess whose output is read line by line by threads (a full pipe can never block it).

    Always stopped by its own PID: :meth:`stop` with a signal the test chooses, :meth:`kill` in teardown.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        into.extend(line.rstrip("\n") for line in stream)  # one append at a time: safe to read meanwhile

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def lines(self, text: str) -> list[str]:
        """The standard-error lines containing ``text``."""
        return [line for line in list(self.err) if text in line]

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> None:
        """Wait for ``count`` standard-error lines containing ``text``; fail early if the process died."""
        wait_until(lambda: len(self.lines(text)) >= count or not self.alive, timeout)
        assert len(self.lines(text)) >= count, f"{text!r} not logged {count} time(s); stderr:\n" + self.log()

    def log(self) -> str:
        return "\n".join(self.err)

    def send(self, sig: signal.Signals) -> None:
        assert self.alive, "process already exited; stderr:\n" + self.log()
        os.kill(self.proc.pid, sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` and return the exit status; fail if the process is not gone within ``timeout`` s."""
        self.send(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout} s after {sig.name}; stderr:\n{self.log()}") from None
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(5)
        for t in self._threads:
            t.join(5)


class NotifySocket:
    """The end of sd_notify that systemd holds: a unix datagram socket, every message kept in order.

    It lives in a short directory under /tmp (a socket path is limited to 108 bytes) that every network
    namespace sees, since the service may run in one.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tsn-", dir="/tmp"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def count(self, message: str) -> int:
        return sum(m == message for m in list(self.messages))

    def statuses(self) -> list[str]:
        return [m.removeprefix("STATUS=") for m in list(self.messages) if m.startswith("STATUS=")]

    def status(self) -> re.Match[str] | None:
        """The latest STATUS= summary, parsed (None before the first one)."""
        statuses = self.statuses()
        return STATUS_RE.fullmatch(statuses[-1]) if statuses else None

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would change how the service runs (systemd's variables, a config path)."""
    drop = {"INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "TELEINFO_CONFIG"}
    drop |= {"RUNTIME_DIRECTORY", "STATE_DIRECTORY"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


# --- receivers ---------------------------------------------------------------------------------------------
def unique_group() -> tuple[str, int]:
    """A group and port of our own (239.255.0.0/16, the IPv4 local scope): parallel runs never mix."""
    return f"239.255.{random.randint(100, 250)}.{random.randint(1, 254)}", free_port(socket.SOCK_DGRAM)


def points(datagrams: Iterable[tuple[float, bytes]]) -> list[Point]:
    """Line-protocol datagrams (arrival time, payload) as points, the lines of one split frame merged.

    Lines of one frame share series and time and leave back to back; two frames can share them too (a
    standard frame lasts under a second and its time is the meter's DATE, in whole seconds), but they are a
    frame's time apart.  So, as ``teleinfo listen`` does, lines merge only when they arrive together.
    """
    out: list[Point] = []
    last = -1.0
    for arrived, payload in datagrams:
        together = arrived - last < POINT_QUIET
        last = arrived
        for line in payload.decode().split("\n"):
            p = parse_line(line)
            if together and out and out[-1].key == p.key:
                out[-1] = Point(p.measurement, p.tags, {**out[-1].fields, **p.fields}, p.time)
            else:
                out.append(p)
            together = True  # lines of one datagram are always one frame's
    return out


class Receiver:
    """A real multicast listener on loopback (open_receiver), its datagrams read by a thread."""

    def __init__(self, group: str, port: int, fmt: str, interface: str = LOOPBACK) -> None:
        self.fmt = fmt
        self.sock = open_receiver(group, port, interface)
        self.sock.settimeout(0.1)
        self.datagrams: list[tuple[float, bytes]] = []  # (arrival time, payload)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self.datagrams.append((time.monotonic(), self.sock.recv(65535)))
            except TimeoutError:
                continue
            except OSError:
                return

    def records(self) -> list[Any]:
        """What arrived, decoded as a consumer would: whole JSON frames, or merged line-protocol points."""
        data = list(self.datagrams)
        if self.fmt == "json":
            r = JsonReassembler()
            return [obj for _, d in data for obj in r.feed(d)]
        return points(data)

    def close(self) -> None:
        """Stop reading, after taking what is already queued (so a late duplicate would still be seen)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(2)
        self.sock.setblocking(False)
        try:
            while True:
                self.datagrams.append((time.monotonic(), self.sock.recv(65535)))
        except (BlockingIOError, OSError):
            pass
        self.sock.close()


# --- what must arrive --------------------------------------------------------------------------------------
def expected_fields(sf: SimFrame) -> dict[str, int | str]:
    """The fields DATA_FORMAT.md promises for a frame: integer labels as integers, everything else as strings."""
    table = STANDARD if sf.mode == "standard" else HISTORIQUE
    out: dict[str, int | str] = {}
    for label, value in sf.values.items():
        if label in ("ADCO", "ADSC", "PRM", "DATE"):
            continue
        spec = table.get(label)
        key = label.lower().replace("-", "_").replace("+", "_p")
        out[key] = value if spec is not None and spec.kind is Kind.INT else str(value)
    return out


def date_ns(sf: SimFrame) -> int | None:
    """The point time a standard frame must carry: its DATE, in nanoseconds (historique has no DATE)."""
    date = sf.timestamps.get("DATE")
    return None if date is None else int(datetime.fromisoformat(date).timestamp()) * 1_000_000_000


def expected(sf: SimFrame, fmt: str, meter_id: str) -> dict[str, Any]:
    """What a consumer must get for one simulated frame (the simulator knows what the meter sent)."""
    if fmt == "json":
        return {"mode": sf.mode, "meter": meter_id, "values": sf.values, "timestamps": sf.timestamps, "invalid": []}
    return {"tags": {"meter": meter_id, "mode": sf.mode}, "fields": expected_fields(sf), "time": date_ns(sf)}


def received(record: Any, fmt: str) -> dict[str, Any]:
    """The comparable part of what arrived (a historique point's time is the reception time: checked apart)."""
    if fmt == "json":
        return {k: record.get(k) for k in ("mode", "meter", "values", "timestamps", "invalid")}
    assert isinstance(record, Point) and record.measurement == "teleinfo"
    historique = record.tags.get("mode") == "historique"
    return {"tags": record.tags, "fields": record.fields, "time": None if historique else record.time}


def assert_frames(records: list[Any], frames: list[SimFrame], fmt: str, meter_id: str) -> None:
    """Every frame exactly once, in order, each with exactly the simulator's readings."""
    got = [received(r, fmt) for r in records]
    want = [expected(sf, fmt, meter_id) for sf in frames]
    assert len(got) == len(want), f"{len(got)} frames received, {len(want)} sent"
    assert got == want


def assert_tail(records: list[Any], frames: list[SimFrame], fmt: str, meter_id: str, at_least: int) -> None:
    """The records are the last frames written, each once and in order, with none missing in between.

    For a receiver that could only start receiving part-way (it joined late, or the service was reconfigured).
    """
    assert len(records) >= at_least, f"only {len(records)} frames received"
    assert_frames(records, frames[len(frames) - len(records) :], fmt, meter_id)


# --- the rig -----------------------------------------------------------------------------------------------
class Rig:
    """One test's world: a pty meter, a configuration file, the service, receivers; all torn down after."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "dev").mkdir()
        self.device = tmp / "dev" / METER_NAME
        self.pty: PtyMeter | None = None
        self.group, self.port = unique_group()
        self.notify = NotifySocket()
        self.config_path = tmp / "teleinfo.toml"
        self._procs: list[Proc] = []
        self._receivers: list[Receiver] = []
        self._feeders: list[Feeder] = []

    def plug(self) -> PtyMeter:
        """The adapter appears (a pty behind the by-id style link the configuration names)."""
        self.pty = PtyMeter(self.device.parent, self.device.name)
        return self.pty

    @property
    def meter(self) -> PtyMeter:
        assert self.pty is not None, "no meter plugged"
        return self.pty

    def config_text(
        self,
        *,
        mode: str = "standard",
        fmt: str = "json",
        port: int | None = None,
        interface: str = LOOPBACK,
        level: str = "info",
        no_data_timeout: float = 30.0,
    ) -> str:
        """A configuration for the test: the pty, this test's group, and never a packet off loopback."""
        assert interface, "a test must always name the multicast interface (never the system's route)"
        return (
            "[source]\n"
            'kind = "serial"\n'
            f'device = "{self.device}"\n'
            f'mode = "{mode}"\n'
            f"no_data_timeout = {no_data_timeout}\n"
            "reconnect_max_backoff = 1.0\n"
            "\n[outputs.multicast]\n"
            f'group = "{self.group}"\n'
            f"port = {self.port if port is None else port}\n"
            f'interface = "{interface}"\n'
            f'format = "{fmt}"\n'
            "ttl = 1\n"
            "\n[health]\nenabled = false\n"
            "\n[control]\nenabled = false\n"
            "\n[web]\nenabled = false\n"
            f'\n[logging]\nlevel = "{level}"\n'
            f'\n[state]\ndirectory = "{self.tmp / "state"}"\n'  # the tariff's ledger, never the system's
        )

    def write_config(self, **kw: Any) -> Path:
        self.config_path.write_text(self.config_text(**kw))
        return self.config_path

    def service(self, *, prefix: Sequence[str] = (), **env: str) -> Proc:
        """``teleinfo run`` on the configuration, with $NOTIFY_SOCKET pointing at :attr:`notify`."""
        argv = [*prefix, sys.executable, "-m", "appliance", "run", "--config", str(self.config_path), "--no-view"]
        p = Proc(argv, clean_env(NOTIFY_SOCKET=str(self.notify.path), **env))
        self._procs.append(p)
        return p

    def process(self, argv: Sequence[str]) -> Proc:
        p = Proc(argv, clean_env())
        self._procs.append(p)
        return p

    def receiver(self, fmt: str, port: int | None = None) -> Receiver:
        r = Receiver(self.group, self.port if port is None else port, fmt)
        self._receivers.append(r)
        return r

    def feeder(self, frames: Iterable[SimFrame]) -> Feeder:
        assert self.pty is not None
        f = Feeder(self.pty, frames).start()
        self._feeders.append(f)
        return f

    def close(self) -> None:
        """Undo everything, each step even if an earlier one failed: nothing may outlive the test."""
        steps: list[Callable[[], object]] = [f.halt for f in self._feeders]
        steps += [p.kill for p in self._procs]
        steps += [r.close for r in self._receivers]
        steps += [self.pty.close] if self.pty is not None else []
        steps.append(self.notify.close)
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def started(rig: Rig, **env: str) -> Proc:
    """The service running on a plugged meter, its port open (bytes written from now on are read)."""
    if rig.pty is None:
        rig.plug()
    svc = rig.service(**env)
    svc.wait_log("opened at")
    return svc


def assert_clean_log(svc: Proc) -> None:
    assert not svc.lines("Traceback"), svc.log()
    assert not svc.lines("ERROR"), svc.log()


# --- 1. every frame, once, to every receiver ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("mode", "fmt", "n"), [("standard", "json", 6), ("standard", "influx", 6),
                                                ("historique", "json", 5), ("historique", "influx", 5)])  # fmt: skip
def test_every_frame_reaches_two_receivers_exactly_once(
    rig: Rig, mode: Literal["historique", "standard"], fmt: str, n: int
) -> None:
    rig.write_config(mode=mode, fmt=fmt)
    sim = meter(mode)
    receivers = [rig.receiver(fmt), rig.receiver(fmt)]
    svc = started(rig)
    t0 = time.time()
    frames = feed(rig.meter, itertools.islice(sim.frames(), n))
    wait_until(lambda: all(len(r.records()) >= n for r in receivers), 10)
    assert svc.stop() == 0, svc.log()  # nothing can be sent after this: a late duplicate would be seen below
    for r in receivers:
        r.close()
        assert_frames(r.records(), frames, fmt, sim.address)
        if fmt == "influx" and mode == "historique":  # no DATE: stamped with the reception time
            assert all(t0 - 1 <= p.time / 1e9 <= time.time() + 1 for p in r.records())
    assert_clean_log(svc)


# --- 2. from one network namespace to another ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.root
def test_service_in_one_namespace_reaches_two_receivers_in_another(veth_pair: VethPair, rig: Rig) -> None:
    pair = veth_pair
    n = 5
    rig.write_config(mode="standard", fmt="json", interface=pair.addr_a)  # the service runs inside namespace a
    listen = [sys.executable, "-m", "appliance", "listen", "--group", rig.group, "--port", str(rig.port)]
    listen += ["--interface", pair.addr_b, "--format", "json", "--timeout", "50"]
    receivers = [rig.process(["ip", "netns", "exec", pair.b, *listen]) for _ in range(2)]
    for r in receivers:
        r.wait_log("listening on")
    rig.plug()
    svc = rig.service(prefix=("ip", "netns", "exec", pair.a))
    svc.wait_log("opened at")
    sim = meter("standard")
    frames = feed(rig.meter, itertools.islice(sim.frames(), n))
    wait_until(lambda: all(len(r.out) >= n for r in receivers), 10)
    assert svc.stop() == 0, svc.log()
    for r in receivers:
        assert r.stop(signal.SIGINT) == 0, r.log()  # Ctrl-C ends a watch normally, printing what it holds
        assert_frames([json.loads(line) for line in r.out], frames, "json", sim.address)
    assert_clean_log(svc)


# --- 3. the adapter is unplugged and plugged back -------------------------------------------------------------
@pytest.mark.slow
def test_unplugged_adapter_is_reopened_and_no_frame_after_replug_is_lost(rig: Rig) -> None:
    rig.write_config(mode="standard", fmt="influx")
    sim = meter("standard")
    frames = sim.frames()
    rx = rig.receiver("influx")
    svc = started(rig)
    before = feed(rig.meter, itertools.islice(frames, 3))
    wait_until(lambda: len(rx.records()) >= 3, 10)

    rig.meter.unplug()
    svc.wait_log("serial device lost")
    svc.wait_log("cannot open")  # the first attempt failed, logged once
    # The scenario itself, not a synchronisation: the adapter stays out long enough for several more attempts
    # (every 1 s at reconnect_max_backoff = 1), which must not log anything more.
    time.sleep(1.5)
    rig.meter.replug()
    after = feed(rig.meter, itertools.islice(frames, 5))  # written at once: the service reopens meanwhile
    wait_until(lambda: len(rx.records()) >= 8, 10)
    assert svc.stop() == 0, svc.log()
    rx.close()

    assert_frames(rx.records(), before + after, "influx", sim.address)
    log = svc.log()
    assert len(svc.lines("serial device lost")) == 1, log
    assert len(svc.lines("cannot open")) == 1, log
    reopened = svc.lines("reopened after")
    assert len(reopened) == 1, log
    attempts = re.search(r"reopened after (\d+) attempts", reopened[0])
    assert attempts is not None and int(attempts.group(1)) >= 3, reopened  # it retried, quietly
    assert_clean_log(svc)


# --- 4. bad input ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_garbage_flood_then_valid_frames(rig: Rig) -> None:
    rig.write_config(mode="standard", fmt="json")
    sim = meter("standard")
    rx = rig.receiver("json")
    svc = started(rig)
    rng = random.Random(20240115)
    rig.meter.write_paced(rng.randbytes(3 * 960), 9600)  # three seconds of noise at line rate
    frames = feed(rig.meter, itertools.islice(sim.frames(), 4))
    wait_until(lambda: len(rx.records()) >= 4, 10)
    # The noise was counted as rejects (STATUS= carries the counters, refreshed every 2 s).
    wait_until(lambda: (s := rig.notify.status()) is not None and int(s.group(4)) > 0, 5)
    assert svc.alive, svc.log()
    assert svc.stop() == 0, svc.log()
    rx.close()
    assert_frames(rx.records(), frames, "json", sim.address)  # the noise published nothing
    assert_clean_log(svc)


@pytest.mark.slow
def test_wrong_speed_publishes_nothing_until_reload_to_auto(rig: Rig) -> None:
    """``mode = "standard"`` on a historique meter: what a meter read at the wrong speed looks like to the service.

    (A pty has no speed; forcing the other mode's rules gives the same symptom: frames that never verify.)
    """
    rig.write_config(mode="standard", fmt="json", no_data_timeout=3, level="debug")
    sim = meter("historique")
    rx = rig.receiver("json")
    svc = started(rig)
    meter_feed = rig.feeder(sim.frames())
    svc.wait_log("no valid frame for 3 s", timeout=10)
    svc.wait_log("still no valid frame", timeout=10)  # a second timeout, a second reopen: debug only
    assert len(svc.lines("no valid frame for")) == 1, svc.log()
    assert svc.lines("reopened at"), svc.log()
    wait_until(lambda: (s := rig.notify.status()) is not None and int(s.group(4)) > 0, 5)
    status = rig.notify.status()
    assert status is not None and status.group(1) == "no_data" and status.group(3) != "0", rig.notify.statuses()
    assert rx.records() == []  # frames decoded, none verified, none published

    rig.write_config(mode="auto", fmt="json", no_data_timeout=3, level="debug")
    svc.send(signal.SIGHUP)
    svc.wait_log("configuration reloaded")
    wait_until(lambda: len(rx.records()) >= 2, 10)
    frames = stop_meter(rig.meter, meter_feed)
    assert svc.stop() == 0, svc.log()
    rx.close()
    assert_tail(rx.records(), frames, "json", sim.address, at_least=2)
    assert_clean_log(svc)


@pytest.mark.slow
def test_meter_switching_mode_is_followed_in_auto(rig: Rig) -> None:
    rig.write_config(mode="auto", fmt="json")
    hist, std = meter("historique", seed=3), meter("standard", seed=3)
    assert hist.address == std.address  # one meter, reconfigured by Enedis
    rx = rig.receiver("json")
    svc = started(rig)
    frames = feed(rig.meter, itertools.chain(itertools.islice(hist.frames(), 3), itertools.islice(std.frames(), 4)))
    wait_until(lambda: len(rx.records()) >= 7, 10)
    assert svc.stop() == 0, svc.log()
    rx.close()
    assert_frames(rx.records(), frames, "json", std.address)
    assert [r["mode"] for r in rx.records()] == ["historique"] * 3 + ["standard"] * 4
    assert len(svc.lines("TIC mode historique detected")) == 1, svc.log()
    assert len(svc.lines("TIC mode changed from historique to standard")) == 1, svc.log()
    assert_clean_log(svc)


INVALID_CONFIGS = {
    "range": (
        '[outputs.multicast]\ninterface = "127.0.0.1"\nttl = 300\n',
        ["outputs.multicast.ttl: must be at most 255 (got 300)"],
    ),
    "not-multicast": (
        '[outputs.multicast]\ninterface = "127.0.0.1"\ngroup = "10.0.0.1"\n',
        ["outputs.multicast.group: 10.0.0.1 is not a multicast address (224.0.0.0/4)"],
    ),
    "choice": (
        '[source]\nmode = "turbo"\n[outputs.multicast]\ninterface = "127.0.0.1"\n',
        ["source.mode: must be 'auto' or 'historique' or 'standard' (got 'turbo')"],
    ),
    "typo": (
        '[logging]\nlevle = "debug"\n[outputs.multicast]\ninterface = "127.0.0.1"\n',
        ["logging.levle: unknown key (expected one of: level)"],
    ),
    "type": (
        '[outputs.multicast]\ninterface = "127.0.0.1"\nport = "4242"\n',
        ["outputs.multicast.port: must be an integer (got str '4242')"],
    ),
    "syntax": (
        '[source\nmode = "auto"\n',
        ["TOML syntax error: Expected ']' at the end of a table declaration (at line 1, column 8)"],
    ),
    "cross-field": (
        '[source.simulator]\nproducer = true\n[outputs.multicast]\ninterface = "127.0.0.1"\n',
        ["source.simulator.producer: a producer needs standard mode: historique TIC carries no production data"],
    ),
    "several": (
        '[source]\nno_data_timeout = 1\n[outputs.multicast]\ninterface = "127.0.0.1"\nport = 70000\nformat = "xml"\n',
        [
            "source.no_data_timeout: must be at least 3 (got 1.0)",
            "outputs.multicast.port: must be at most 65535 (got 70000)",
            "outputs.multicast.format: must be 'influx' or 'json' (got 'xml')",
        ],
    ),
}


@pytest.mark.parametrize("case", list(INVALID_CONFIGS))
def test_invalid_configuration_is_refused_with_every_error(tmp_path: Path, case: str) -> None:
    text, errors = INVALID_CONFIGS[case]
    path = tmp_path / "teleinfo.toml"
    path.write_text(text + "[health]\nenabled = false\n[control]\nenabled = false\n")
    head = f"{path}: {len(errors)} error(s):"
    for command in ("run", "check-config"):
        argv = [sys.executable, "-m", "appliance", command, "--config", str(path)]
        argv += ["--no-view"] if command == "run" else []
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO, env=clean_env())
        assert p.returncode == 2, (command, p.stderr)
        lines = p.stderr.splitlines()
        if command == "run":
            assert lines[0] == "teleinfo run: invalid configuration, not starting.", p.stderr
            lines = lines[1:]
        assert lines == [head, *(f"  - {e}" for e in errors)], p.stderr  # every error, exactly, nothing else
        assert p.stdout == ""


def test_missing_configuration_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    p = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--config", str(path), "--no-view"],
        capture_output=True, text=True, timeout=20, cwd=REPO, env=clean_env(),
    )  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.splitlines()[1:] == [f"{path}: 1 error(s):", f"  - file not found: {path}"], p.stderr


@pytest.mark.slow
def test_no_receiver_yet_then_a_late_one_gets_the_frames(rig: Rig) -> None:
    rig.write_config(mode="standard", fmt="influx")
    sim = meter("standard")
    svc = started(rig)
    meter_feed = rig.feeder(sim.frames())
    # Nobody listens: sending still works (multicast needs no receiver), the output stays up.
    wait_until(lambda: (s := rig.notify.status()) is not None and int(s.group(3)) >= 3, 15)
    status = rig.notify.status()
    assert status is not None and status.group(6) == "multicast up", rig.notify.statuses()
    assert svc.alive and not svc.lines("failing"), svc.log()

    rx = rig.receiver("influx")
    wait_until(lambda: len(rx.records()) >= 2, 10)
    frames = stop_meter(rig.meter, meter_feed)
    assert svc.stop() == 0, svc.log()
    rx.close()
    assert_tail(rx.records(), frames, "influx", sim.address, at_least=2)
    assert_clean_log(svc)


# --- 5. systemd ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_systemd_ready_watchdog_status_and_stop(rig: Rig, sig: signal.Signals) -> None:
    rig.write_config(mode="standard", fmt="json")
    notify = rig.notify
    svc = rig.service(WATCHDOG_USEC="1000000")  # WATCHDOG_PID unset: the pings are ours to send
    svc.wait_log("cannot open")  # no adapter yet...
    wait_until(lambda: notify.count("WATCHDOG=1") >= 2, 5)  # ...alive, pinging every 0.5 s...
    assert notify.count("READY=1") == 1, notify.messages  # ...and started: systemd must not time the start out

    rig.plug()
    svc.wait_log("opened at")
    sim = meter("standard")
    feed(rig.meter, itertools.islice(sim.frames(), 3))
    wait_until(lambda: (s := notify.status()) is not None and s.group(3) == "3", 5)
    pings = notify.count("WATCHDOG=1")
    wait_until(lambda: notify.count("WATCHDOG=1") >= pings + 2, 5)  # still pinging while frames flow

    statuses = notify.statuses()
    assert statuses and all(STATUS_RE.fullmatch(s) for s in statuses), statuses  # one line each
    last = notify.status()
    assert last is not None and last.group(1, 2, 6) == ("open", " standard", "multicast up"), statuses

    assert svc.stop(sig, timeout=5.0) == 0, svc.log()
    assert notify.count("STOPPING=1") == 1, notify.messages
    msgs = list(notify.messages)
    assert msgs.index("READY=1") < msgs.index("STOPPING=1")
    assert "WATCHDOG=1" not in msgs[msgs.index("STOPPING=1") :]
    assert svc.lines(f"received {sig.name}, stopping"), svc.log()
    assert svc.lines("stopped: closed standard; 3 frames, 0 rejected"), svc.log()
    assert_clean_log(svc)


@pytest.mark.slow
def test_sighup_with_a_valid_configuration_moves_to_the_new_port(rig: Rig) -> None:
    rig.write_config(mode="standard", fmt="influx")
    new_port = free_port(socket.SOCK_DGRAM)
    old_rx, new_rx = rig.receiver("influx"), rig.receiver("influx", port=new_port)
    sim = meter("standard")
    svc = started(rig)
    meter_feed = rig.feeder(sim.frames())
    wait_until(lambda: len(old_rx.records()) >= 2, 10)

    rig.write_config(mode="standard", fmt="influx", port=new_port)
    svc.send(signal.SIGHUP)
    svc.wait_log("configuration reloaded")
    wait_until(lambda: len(new_rx.records()) >= 2, 10)
    frames = stop_meter(rig.meter, meter_feed)
    assert svc.stop() == 0, svc.log()
    old_rx.close()
    new_rx.close()
    # Frames queued at the reload were delivered to the old port; everything after went to the new one.
    assert len(old_rx.records()) >= 2
    assert_frames(old_rx.records() + new_rx.records(), frames, "influx", sim.address)
    msgs = list(rig.notify.messages)
    reloading = next(i for i, m in enumerate(msgs) if m.startswith("RELOADING=1\nMONOTONIC_USEC="))
    assert "READY=1" in msgs[reloading + 1 :], msgs  # systemd hears the reload is over
    assert_clean_log(svc)


@pytest.mark.slow
def test_sighup_with_an_invalid_configuration_keeps_the_running_one(rig: Rig) -> None:
    rig.write_config(mode="standard", fmt="influx")
    rx = rig.receiver("influx")
    sim = meter("standard")
    svc = started(rig)
    meter_feed = rig.feeder(sim.frames())
    wait_until(lambda: len(rx.records()) >= 2, 10)

    rig.write_config(mode="standard", fmt="influx", port=70000)
    svc.send(signal.SIGHUP)
    svc.wait_log("reload refused")
    svc.wait_log("  - outputs.multicast.port: must be at most 65535 (got 70000)")
    assert svc.lines(f"reload refused, keeping the running configuration: {rig.config_path}: 1 error(s):")
    n = len(rx.records())
    wait_until(lambda: len(rx.records()) >= n + 2, 10)  # still publishing on the old port
    frames = stop_meter(rig.meter, meter_feed)
    assert svc.stop() == 0, svc.log()
    rx.close()
    assert_frames(rx.records(), frames, "influx", sim.address)
    assert not svc.lines("configuration reloaded"), svc.log()


# --- 6. logging under systemd --------------------------------------------------------------------------------
@pytest.mark.slow
def test_journal_priorities_and_one_line_per_state_change(rig: Rig) -> None:
    rig.write_config(mode="standard", fmt="json")
    rx = rig.receiver("json")
    sim = meter("standard")
    frames = sim.frames()
    svc = started(rig, INVOCATION_ID=secrets.token_hex(16))
    written = feed(rig.meter, itertools.islice(frames, 2))
    wait_until(lambda: len(rx.records()) >= 2, 10)
    svc.wait_log("output multicast up")
    settled = len(svc.err)
    written += feed(rig.meter, itertools.islice(frames, 10))
    wait_until(lambda: len(rx.records()) >= 12, 10)
    assert len(svc.err) == settled, svc.log()  # ten more frames, not one more log line
    assert svc.stop() == 0, svc.log()
    rx.close()
    assert_frames(rx.records(), written, "json", sim.address)

    assert svc.err, "nothing logged"
    bad = [line for line in svc.err if not re.match(r"<[0-7]>\S", line)]
    assert bad == [], svc.log()  # journald reads <N> as the priority: every line, continuation lines too
    assert svc.lines("<6>appliance.sources.serial.source: serial "), svc.log()
    assert svc.lines("<6>appliance.service: received SIGTERM, stopping"), svc.log()
    assert not any(re.match(r"<\d>\d\d:\d\d:\d\d", line) for line in svc.err)  # the journal adds its own time


def _agent_line(port: int) -> str:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(200).decode(errors="replace").strip()
    except OSError:
        return ""


def test_missing_adapter_is_ready_and_down_with_its_reason_never_a_start_timeout(rig: Rig) -> None:
    """No adapter at boot: READY at once, the health socket says why nothing comes, the watchdog keeps being fed;
    when the adapter appears, frames flow and health comes up, without a restart."""
    port = free_port()
    text = rig.config_text(mode="standard", fmt="json").replace(
        "[health]\nenabled = false\n", f'[health]\nbind = "{LOOPBACK}"\nport = {port}\n'
    )
    rig.config_path.write_text(text)
    notify = rig.notify
    svc = rig.service(WATCHDOG_USEC="1000000")
    wait_until(lambda: notify.count("READY=1") == 1, 10)
    wait_until(lambda: _agent_line(port).startswith("down 0% #no meter: cannot open"), 10)
    comment = f"no meter: cannot open {rig.device}: No such file or directory"
    assert _agent_line(port) == f"down 0% #{comment[:100]}"  # the health line's comment is cut at 100 characters
    pings = notify.count("WATCHDOG=1")
    wait_until(lambda: notify.count("WATCHDOG=1") >= pings + 3, 5)  # the read loop runs: systemd leaves it be
    assert svc.alive

    rig.plug()
    feed = rig.feeder(meter("standard").frames())
    wait_until(lambda: _agent_line(port).startswith("up ready 100% #ok"), 20)
    feed.halt()
    assert notify.count("READY=1") == 1 and svc.alive
    assert svc.stop() == 0, svc.log()


def test_watchdog_is_fed_by_the_read_loop_only(tmp_path: Path) -> None:
    """In process, with a real sd_notify socket and a missing device: READY comes without the device, and the
    WATCHDOG pings stop as soon as the read loop stops coming back (a wedged driver), then resume with it."""
    from appliance.config import load_config
    from appliance.service import Service
    from appliance.systemd import Notifier

    config = tmp_path / "teleinfo.toml"
    config.write_text(
        f'[source]\ndevice = "{tmp_path / "absent"}"\n[outputs.multicast]\nenabled = false\n'
        "[health]\nenabled = false\n[control]\nenabled = false\n[journal]\nenabled = false\n"
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
    )
    notify = NotifySocket()
    service = Service(
        load_config(config), notifier=Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    )
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: notify.count("READY=1") == 1 and notify.count("WATCHDOG=1") >= 3, 10)
        assert service.stats.snapshot().source.state == "lost"
        assert service.source is not None
        wedged, release = threading.Event(), threading.Event()
        real_read = service.source.read

        def stuck() -> bytes:
            wedged.set()
            release.wait(30)
            return real_read()

        service.source.read = stuck  # type: ignore[method-assign]
        wedged.wait(5)
        time.sleep(0.3)
        before = notify.count("WATCHDOG=1")
        time.sleep(1.2)  # six ping intervals
        assert notify.count("WATCHDOG=1") == before, "pinged while the read loop was stuck"
        service.source.read = real_read  # type: ignore[method-assign]
        release.set()
        wait_until(lambda: notify.count("WATCHDOG=1") >= before + 2, 5)
    finally:
        service.stop()
        runner.join(10)
        notify.close()
    assert not runner.is_alive()
