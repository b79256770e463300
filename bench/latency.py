"""End-to-end latency, CPU and memory of ``teleinfo run`` on a real-rate meter stream, next to a classic script.

Run from the repository root::

    python bench/latency.py              # 60 s per process (about 2.5 minutes in all)
    python bench/latency.py --quick      # 10 s per process

What is measured is the whole path a frame takes on the appliance, with the service as a separate process, as
systemd runs it (``python -m appliance run --config tmp.toml --no-view``): a simulated Linky meter writes
standard-mode TIC (9600 Bd) into a pty, the service reads the pty's slave with pyserial, decodes, and publishes
each frame as an InfluxDB line-protocol datagram to a multicast group on 127.0.0.1; a receiver thread in this
process gets the datagram.

* **Latency** runs from the moment the frame's ETX byte is written into the pty master (``time.monotonic_ns()``
  just before the ``os.write`` of the ETX alone) to the moment the receiver thread has the datagram (the same
  clock).  A frame is not complete before its ETX, so this is the delay the appliance adds.
* **CPU** is the service's share of one core, from the ``utime + stime`` of ``/proc/<pid>/stat`` (every thread
  of the process), between the first datagram received (start-up excluded) and the end of the measured frames.
* **Memory** is the service's RSS: steady (median of one ``VmRSS`` sample per second over the measured period)
  and peak (``VmHWM`` at the end, start-up included).

The peer is the classic Raspberry Pi "teleinfo.py into InfluxDB" script: ``peers/line_by_line_service.py``, the
decoder of ``peers/line_by_line.py`` in a pyserial ``readline()`` loop that sends each frame as a line-protocol
datagram the same way.  Both processes get the same bytes at the same pace (same frames, same schedule), are
measured by the same receiver code, one after the other so that neither disturbs the other's timing.

Pacing is a real meter's: 10 bits per byte at 9600 Bd (960 bytes/s) and the meter's silence (16.7-33.4 ms)
between frames.  By default (``--feed usb``, issue 16's feed) the bytes arrive as a USB adapter delivers them:
16-byte writes, each when its last byte would have arrived, the write holding the ETX timestamped.  ``--feed
lines`` releases each group after its LF and the ETX on its own (a line reader's best case).

Network safety: every datagram leaves through 127.0.0.1 with TTL 0 (never routed off the host); the health and
control sockets and the live page, when the configuration has them, listen on 127.0.0.1 on free ports.

``--no-page`` runs the service without the live page and the tariff engine, ``--viewers N`` with N pages following
its event stream: the difference is what they cost.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import pstats
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(BENCH), str(REPO)):  # `python bench/latency.py` puts only bench/ on the path
    if _p not in sys.path:
        sys.path.insert(0, _p)

from appliance.config import parse_config  # noqa: E402
from appliance.lineproto import parse_line  # noqa: E402
from appliance.outputs.multicast.receiver import open_receiver  # noqa: E402
from appliance.schema import Config  # noqa: E402
from appliance.simulator import PARIS, MeterSimulator, SimFrame  # noqa: E402
from tests.ptyutil import PtyMeter  # noqa: E402
from tests.util import stop_process  # noqa: E402

GROUP = "239.255.97.13"  # not the appliance's default group: a concurrent test run cannot mix its datagrams in
LOOPBACK = "127.0.0.1"
BAUD = 9600
BITS_PER_BYTE = 10
WARMUP_FRAMES = 3  # written and received, not counted: the decoder's line cache and the output socket warm up
TAIL_FRAMES = 2  # written after the measured ones: a line reader publishes a frame only once the next one starts
START_TIMEOUT = 30.0
TARGET_P99_MS = 5.0
TARGET_CPU_PCT = 1.0
TARGET_RSS_MB = 40.0
#: Labels whose values tell consecutive frames apart (EAST and the indexes move with energy, SINSTS every frame).
SIGNATURE = ("EAST", "EASF01", "EASF02", "SINSTS", "IRMS1", "URMS1", "SMAXSN", "CCASN", "UMOY1")
#: Labels the appliance does not publish as fields (tag, personal data, the point's time).
NOT_FIELDS = frozenset({"ADSC", "PRM", "DATE"})
#: Environment a service would inherit from this shell and must not see (sd_notify socket, journal streams).
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS")


# --------------------------------------------------------------------------------------------------------------
# The stream and its schedule
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Bytes written together, ``due`` seconds after the stream's origin (when their last byte would arrive)."""

    due: float
    data: bytes
    frame: int
    etx: bool = False  # the frame's ETX, written alone and timestamped
    starts_frame: bool = False


#: The feed of issue 16, what a USB TIC adapter hands the kernel: an FTDI-style adapter flushes its receive buffer
#: every 16 ms (its latency timer), so at 960 bytes/s (9600 Bd, 10 bits a byte) the port gets 16-byte writes.
USB_WRITE = 16
FEEDS = ("usb", "lines")


def schedule(frames: Sequence[SimFrame], feed: str = "usb") -> list[Piece]:
    """The write schedule of ``frames``: frame n starts when frames 0..n-1 have used their
    :attr:`SimFrame.duration` (bytes at 10 bits each at 9600 Bd, plus the inter-frame silence the simulator draws),
    as in :mod:`appliance.simulator.output`.  Each piece is due when its last byte would have arrived.

    * ``usb`` (the default, issue 16's feed): the frame's bytes in writes of :data:`USB_WRITE` bytes (the last one
      of a frame shorter), as a USB adapter delivers them; the write that holds the ETX is the one timestamped.
    * ``lines``: every group cut after its LF, then the ETX alone: the best case of a line reader.
    """
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, not {feed!r}")
    byte_time = BITS_PER_BYTE / BAUD
    pieces: list[Piece] = []
    begin = 0.0
    for n, frame in enumerate(frames):
        if not frame.data.endswith(b"\x03"):
            raise ValueError(f"frame {n} does not end with ETX")
        if feed == "usb":
            data = frame.data
            for i in range(0, len(data), USB_WRITE):
                chunk = data[i : i + USB_WRITE]
                due = begin + (i + len(chunk)) * byte_time
                pieces.append(Piece(due, chunk, n, etx=i + len(chunk) == len(data), starts_frame=i == 0))
            begin += frame.duration
            continue
        body = frame.data[:-1]
        sent = 0
        lines = body.split(b"\n")
        for i, part in enumerate(lines):
            chunk = part + b"\n" if i < len(lines) - 1 else part
            if not chunk:
                continue
            sent += len(chunk)
            pieces.append(Piece(begin + sent * byte_time, chunk, n, starts_frame=sent == len(chunk)))
        pieces.append(Piece(begin + (sent + 1) * byte_time, b"\x03", n, etx=True))
        begin += frame.duration
    return pieces


def make_frames(seconds: float, phases: int, contract: str) -> tuple[list[SimFrame], int]:
    """Warm-up, measured and tail frames from one simulated meter starting now; and the measured count."""
    start = datetime.now(PARIS).replace(microsecond=0)  # DATE near the clock, so the service uses it as the time
    sim = MeterSimulator(start=start, mode="standard", phases=phases, contract=contract, seed=1)  # type: ignore[arg-type]
    it = sim.frames()
    frames = [next(it) for _ in range(WARMUP_FRAMES)]
    measured = 0.0
    while measured < seconds:
        f = next(it)
        frames.append(f)
        measured += f.duration
    count = len(frames) - WARMUP_FRAMES
    frames.extend(next(it) for _ in range(TAIL_FRAMES))
    return frames, count


def _norm(value: Any) -> Any:
    """A value as compared between sent and received: ints as ints, digit strings as ints, text stripped."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    text = str(value).strip(" ")
    return int(text) if text.isdigit() else text


def _key(label: str) -> str:
    return label.lower().replace("-", "_").replace("+", "_p")


def signature_of_values(values: dict[str, Any]) -> tuple[Any, ...]:
    """The signature of a frame from its ``{LABEL: value}``."""
    return tuple(_norm(values[label]) if label in values else None for label in SIGNATURE)


def signature_of_fields(fields: dict[str, Any]) -> tuple[Any, ...]:
    """The signature of a received point from its line-protocol fields."""
    return tuple(_norm(fields[_key(label)]) if _key(label) in fields else None for label in SIGNATURE)


# --------------------------------------------------------------------------------------------------------------
# The processes under test
# --------------------------------------------------------------------------------------------------------------


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def service_config(device: str, port: int, sockets: bool, state: Path, page: bool = True) -> str:
    """The TOML of ``teleinfo run``: the pty in standard mode, multicast on loopback with TTL 0, influx format.

    Health and control sockets and the live page are kept if this configuration schema has them (they do
    per-frame work that the appliance really does), on 127.0.0.1 and free ports; ``sockets=False`` turns them off.
    The tariff engine counts every frame (as on a Pi whose clock is synchronised) with its ledger under ``state``;
    ``page=False`` turns it and the live page off, to measure what they cost.
    """
    text = f"""
[source]
kind = "serial"
device = {json.dumps(device)}
mode = "standard"

[outputs.multicast]
enabled = true
group = "{GROUP}"
port = {port}
ttl = 0
interface = "{LOOPBACK}"
format = "influx"

[state]
directory = {json.dumps(str(state))}
"""
    sections = {f.name for f in dataclasses.fields(Config)}
    for name in ("health", "control", "web"):
        if name in sections:
            if sockets and (page or name != "web"):
                tcp = _free_port(socket.SOCK_STREAM)
                text += f'\n[{name}]\nenabled = true\nbind = "{LOOPBACK}"\nport = {tcp}\n'
            else:
                text += f"\n[{name}]\nenabled = false\n"
    if "tariff" in sections:
        text += "\n[tariff]\nwait_for_clock_sync = false\n" if page else "\n[tariff]\nenabled = false\n"
    cfg = parse_config(text, "benchmark configuration")  # fail here, with the errors, rather than in the child
    assert cfg.outputs.multicast.interface == LOOPBACK and cfg.outputs.multicast.ttl == 0
    return text


#: ``python -c`` bootstrap for ``--profile``: ``teleinfo run`` under cProfile timed by the main thread's *CPU* clock
#: (``-m cProfile`` times with the wall clock, where a service that mostly waits shows only its waits), enabled
#: by SIGUSR1 and disabled by SIGUSR2, which the benchmark sends at the ends of the CPU window: start-up and
#: shutdown stay out.  cProfile sees the main thread (the reader); the "CPU by thread" row covers the others.
PROFILE_BOOT = """
import cProfile, signal, sys, time
out, argv = sys.argv[1], sys.argv[2:]
prof = cProfile.Profile(time.thread_time_ns, 1e-9)
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
signal.signal(signal.SIGUSR2, lambda *_: prof.disable())
try:
    from appliance.cli import main
    status = main(argv)
finally:
    prof.disable()
    prof.dump_stats(out)
sys.exit(status)
"""


@dataclass
class Contender:
    """One process under test: how to start it, given the pty path and the multicast port."""

    name: str
    command: Callable[[str, int, Path], list[str]]  # (device, port, work dir) -> argv
    ours: bool
    profiled: bool = False


def ours(sockets: bool, profile: bool, page: bool = True) -> Contender:
    """``teleinfo run`` as the systemd unit starts it (``python -m appliance run``), optionally under cProfile."""

    def command(device: str, port: int, work: Path) -> list[str]:
        cfg = work / "teleinfo.toml"
        cfg.write_text(service_config(device, port, sockets, work / "state", page), encoding="utf-8")
        run = ["run", "--config", str(cfg), "--no-view"]
        if profile:
            return [sys.executable, "-c", PROFILE_BOOT, str(work / "ours.prof"), *run]
        return [sys.executable, "-m", "appliance", *run]

    return Contender("appliance (teleinfo run)", command, ours=True, profiled=profile)


def peer(close: str) -> Contender:
    """The classic script: ``peers/line_by_line_service.py``."""

    def command(device: str, port: int, work: Path) -> list[str]:
        script = BENCH / "peers" / "line_by_line_service.py"
        return [
            *(sys.executable, str(script), device, "--mode", "standard", "--close", close),
            *("--group", GROUP, "--port", str(port), "--interface", LOOPBACK, "--ttl", "0"),
        ]

    return Contender(f"line-by-line script ({close})", command, ours=False)


def check_peer_is_line_by_line(frames: Sequence[SimFrame]) -> str:
    """Prove that the peer process decodes as ``peers/line_by_line.read_frames`` does, on these very bytes."""
    from peers import line_by_line as ref
    from peers import line_by_line_service as svc
    from peers.fake_io import FakeSerial

    if (svc.NUMERIC_STANDARD, svc.NUMERIC_HISTORIQUE) != (ref._NUMERIC_STANDARD, ref._NUMERIC_HISTORIQUE):
        raise SystemExit("peers/line_by_line_service.py: numeric label lists differ from peers/line_by_line.py")
    data = b"".join(f.data for f in frames)
    want = ref.read_frames(FakeSerial([data[i : i + 4096] for i in range(0, len(data), 4096)]), "standard")
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]] + [parts[-1]]
    for close in ("address", "etx"):
        reader = svc.LineByLine("standard", close)  # type: ignore[arg-type]
        got = [f for f in map(reader.feed, lines) if f is not None]
        if close == "address" and reader.frame:
            got.append(reader.frame)  # read_frames keeps the last frame at end of stream
        if got != want:
            raise SystemExit(f"peers/line_by_line_service.py --close {close} decodes differently from read_frames")
    return f"{len(want)} frames, identical to peers/line_by_line.read_frames (both frame rules)"


# --------------------------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------------------------


def _schedstat_ns(path: str) -> int:
    """Nanoseconds a task ran on a CPU (first field of ``schedstat``: exact, unlike the 10 ms ticks of ``stat``)."""
    with open(path, encoding="ascii") as f:
        return int(f.read().split()[0])


def cpu_seconds(pid: int) -> float:
    """CPU time of the whole process (every live thread), seconds, from ``/proc/<pid>/task/*/schedstat``.

    ``utime + stime`` of ``/proc/<pid>/stat`` counts in 10 ms ticks: at 0.3 % of a core, a minute is 18 ticks, too
    coarse.  A thread that ended during the window takes its time with it; the services under test keep theirs.
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += _schedstat_ns(f"/proc/{pid}/task/{tid}/schedstat")
    return total / 1e9


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of the main thread alone (the service's reader; other threads are the outputs, sockets)."""
    return _schedstat_ns(f"/proc/{pid}/task/{pid}/schedstat") / 1e9


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (VmRSS, VmHWM...)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def has_open(pid: int, target: str) -> bool:
    """Whether the process holds ``target`` open (the pty slave: it has opened the port)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
    return False


# --------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one process did with the stream."""

    contender: Contender
    argv: list[str]
    measured: range  # frame indexes counted
    etx_ns: dict[int, int] = field(default_factory=dict)
    datagrams: list[tuple[int, bytes]] = field(default_factory=list)
    cpu: float = math.nan  # seconds over the window
    cpu_main: float = math.nan  # of which the main thread
    window: float = math.nan  # wall seconds of the CPU window
    startup_cpu: float = math.nan
    startup_s: float = math.nan  # from exec to the first datagram
    rss_kb: list[int] = field(default_factory=list)
    hwm_kb: int = 0
    threads: int = 0
    late_writes: int = 0  # pieces written more than 2 ms after their due time (the writer fell behind)
    log: str = ""
    returncode: int | None = None
    profile: str = ""
    # Filled by match():
    latencies_ms: dict[int, float] = field(default_factory=dict)
    unmatched: int = 0
    values_ok: int = 0
    values_sent: int = 0


class Receiver(threading.Thread):
    """Receives the datagrams and timestamps each the moment ``recvfrom`` returns; parsing happens later."""

    def __init__(self, port: int) -> None:
        super().__init__(name="receiver", daemon=True)
        self.sock = open_receiver(GROUP, port, LOOPBACK)
        self.sock.settimeout(0.2)
        self.datagrams: list[tuple[int, bytes]] = []
        self.first = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        recv, now, keep = self.sock.recv, time.monotonic_ns, self.datagrams.append
        while not self.stopping.is_set():
            try:
                data = recv(65536)
            except TimeoutError:
                continue
            keep((now(), data))
            self.first.set()
        self.sock.close()


class Writer(threading.Thread):
    """Writes the schedule into the pty master in real time; timestamps each frame's ETX."""

    def __init__(self, master: int, pieces: list[Piece], end_frame: int) -> None:
        super().__init__(name="writer", daemon=True)
        self.master = master
        self.pieces = pieces
        self.end_frame = end_frame  # the first tail frame: when it starts, the measured period is over
        self.etx_ns: dict[int, int] = {}
        self.window_over = threading.Event()
        self.late = 0
        self.error: BaseException | None = None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                select.select([], [self.master], [], 1.0)
                continue
            view = view[n:]

    def run(self) -> None:
        try:
            origin = time.monotonic()
            for p in self.pieces:
                delay = origin + p.due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.002:
                    self.late += 1
                if p.starts_frame and p.frame == self.end_frame:
                    self.window_over.set()
                if p.etx:
                    # Stamped just before the write: stamped after it, a writer thread preempted between the
                    # write and the stamp (2 cores, the service busy) would date the ETX after the datagram.
                    self.etx_ns[p.frame] = time.monotonic_ns()
                self._write(p.data)
        except BaseException as e:  # reported by the main thread
            self.error = e
        finally:
            self.window_over.set()


class Viewer(threading.Thread):
    """A live page left open: follows ``/api/events`` of the service and counts the events it reads."""

    def __init__(self, config: Path) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.events = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        from appliance.config import load_config

        web = load_config(self.config).web
        while not self.stopping.is_set():
            try:
                with socket.create_connection((LOOPBACK, web.port), timeout=1) as s:
                    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")
                    while not self.stopping.is_set():
                        try:
                            data = s.recv(65536)
                        except TimeoutError:
                            continue
                        if not data:
                            break
                        self.events += data.count(b"event: ")
            except OSError:
                time.sleep(0.2)  # not listening yet


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_one(
    contender: Contender,
    frames: list[SimFrame],
    measured: int,
    work: Path,
    say: Callable[[str], None],
    feed: str = "usb",
    viewers: int = 0,
) -> Run:
    """Start the process, stream every frame to it (with ``viewers`` pages on its event stream), measure, stop it."""
    pieces = schedule(frames, feed)
    port = _free_port(socket.SOCK_DGRAM)
    run_dir = work / ("ours" if contender.ours else "peer")
    run_dir.mkdir()
    with PtyMeter(run_dir) as meter:
        argv = contender.command(str(meter.path), port, run_dir)
        result = Run(contender, argv, range(WARMUP_FRAMES, WARMUP_FRAMES + measured))
        receiver = Receiver(port)
        receiver.start()
        log_path = run_dir / "stderr.log"
        with open(log_path, "wb") as log:
            t_exec = time.monotonic()
            proc = subprocess.Popen(argv, cwd=REPO, env=_child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        pages = [Viewer(run_dir / "teleinfo.toml") for _ in range(viewers)]
        for v in pages:
            v.start()
        try:
            _measure(proc, meter, pieces, result, receiver, t_exec, say, contender.profiled)
        finally:
            for v in pages:
                v.stopping.set()
            if pages:
                say(f"  viewers: {', '.join(f'{v.events} events' for v in pages)}")
            stop_process(proc)
            result.returncode = proc.returncode
            receiver.stopping.set()
            receiver.join()
            result.datagrams = receiver.datagrams
            result.log = log_path.read_text(encoding="utf-8", errors="replace")
    prof = run_dir / "ours.prof"
    if prof.exists():
        out = io.StringIO()
        pstats.Stats(str(prof), stream=out).sort_stats("tottime").print_stats(25)
        result.profile = out.getvalue()
    return result


def _measure(
    proc: subprocess.Popen[bytes],
    meter: PtyMeter,
    pieces: list[Piece],
    result: Run,
    receiver: Receiver,
    t_exec: float,
    say: Callable[[str], None],
    profile: bool,
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not has_open(proc.pid, meter.slave_name):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{result.contender.name} did not open {meter.path} (exit status {proc.poll()})")
        time.sleep(0.01)
    writer = Writer(meter.master, pieces, end_frame=result.measured.stop)
    writer.start()
    if not receiver.first.wait(START_TIMEOUT):
        raise RuntimeError(f"{result.contender.name}: no datagram within {START_TIMEOUT:.0f} s")
    t0 = time.monotonic()
    cpu0, main0 = cpu_seconds(proc.pid), main_thread_cpu_seconds(proc.pid)
    if profile:
        os.kill(proc.pid, signal.SIGUSR1)
    result.startup_cpu = cpu0
    result.startup_s = receiver.datagrams[0][0] / 1e9 - t_exec
    say(f"  {result.contender.name}: first datagram {result.startup_s:.2f} s after start; measuring...")
    while not writer.window_over.wait(1.0):
        result.rss_kb.append(status_kb(proc.pid, "VmRSS"))
    t1 = time.monotonic()
    result.cpu = cpu_seconds(proc.pid) - cpu0
    result.cpu_main = main_thread_cpu_seconds(proc.pid) - main0
    if profile:
        os.kill(proc.pid, signal.SIGUSR2)
    result.window = t1 - t0
    writer.join()
    if writer.error is not None:
        raise RuntimeError(f"writing the pty failed: {writer.error!r}")
    time.sleep(0.5)  # the tail frames' datagrams
    result.hwm_kb = status_kb(proc.pid, "VmHWM")
    result.rss_kb.append(status_kb(proc.pid, "VmRSS"))
    result.threads = status_kb(proc.pid, "Threads")
    result.etx_ns = writer.etx_ns
    result.late_writes = writer.late


# --------------------------------------------------------------------------------------------------------------
# Matching and statistics
# --------------------------------------------------------------------------------------------------------------


def match(run: Run, frames: list[SimFrame]) -> None:
    """Attribute each datagram to a frame, in order, by content; latency = receive time - ETX time.

    A datagram belongs to the first frame not yet matched whose signature (``SIGNATURE`` values) it carries and
    whose ETX was already written (a frame cannot be published before it ends).  Frames it skips are lost.
    Every frame here fits in one datagram (the appliance splits only above 1472 bytes; one standard
    three-phase frame is about 800).
    """
    sigs = [signature_of_values(f.values) for f in frames]
    nxt = 0
    for t_recv, data in run.datagrams:
        fields: dict[str, Any] = {}
        try:
            for line in data.decode().split("\n"):
                if line:
                    fields.update(parse_line(line).fields)
        except (UnicodeDecodeError, ValueError):
            run.unmatched += 1
            continue
        sig = signature_of_fields(fields)
        j = next(
            (k for k in range(nxt, len(frames)) if sigs[k] == sig and run.etx_ns.get(k, t_recv + 1) <= t_recv),
            None,
        )
        if j is None:
            run.unmatched += 1 if nxt >= WARMUP_FRAMES else 0  # a partial first frame is start-up noise
            continue
        nxt = j + 1
        if j in run.measured:
            run.latencies_ms[j] = (t_recv - run.etx_ns[j]) / 1e6
            sent = {_key(k): _norm(v) for k, v in frames[j].values.items() if k not in NOT_FIELDS}
            run.values_sent += len(sent)
            run.values_ok += sum(1 for k, v in sent.items() if k in fields and _norm(fields[k]) == v)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with ~60 samples, p99 is the largest one: no interpolation flatters it)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)] if s else math.nan


@dataclass
class Summary:
    """The numbers of one run, as printed."""

    sent: int
    received: int
    lost: int
    unmatched: int
    values_ok: float
    p50: float
    p90: float
    p99: float
    max: float
    worst_frame: int | None
    cpu_pct: float
    cpu_ms_per_frame: float
    rss_mb: float
    hwm_mb: float

    @classmethod
    def of(cls, run: Run) -> Summary:
        lat = list(run.latencies_ms.values())
        frames_in_window = len(run.measured) + WARMUP_FRAMES - 1  # frames processed between the CPU samples
        return cls(
            sent=len(run.measured),
            received=len(lat),
            lost=len(run.measured) - len(lat),
            unmatched=run.unmatched,
            values_ok=run.values_ok / run.values_sent if run.values_sent else math.nan,
            p50=percentile(lat, 50),
            p90=percentile(lat, 90),
            p99=percentile(lat, 99),
            max=max(lat) if lat else math.nan,
            worst_frame=max(run.latencies_ms, key=run.latencies_ms.__getitem__) if lat else None,
            cpu_pct=100 * run.cpu / run.window,
            cpu_ms_per_frame=1000 * run.cpu / frames_in_window,
            rss_mb=statistics.median(run.rss_kb) / 1024 if run.rss_kb else math.nan,
            hwm_mb=run.hwm_kb / 1024,
        )


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _ratio(a: float, b: float) -> str:
    """ours / theirs, and in words."""
    if not (a > 0 and b > 0) or math.isnan(a) or math.isnan(b):
        return ""
    r = a / b
    words = f"{1 / r:.1f}x lower" if r < 1 else f"{r:.1f}x higher"
    return f"{r:.3f} ({words})"


def report(runs: list[Run]) -> tuple[str, bool]:
    """The side-by-side table, the ratios and the verdict on the targets."""
    sums = [Summary.of(r) for r in runs]
    mine = next((s for s, r in zip(sums, runs, strict=True) if r.contender.ours), None)
    theirs = next((s for s, r in zip(sums, runs, strict=True) if not r.contender.ours), None)
    both = mine is not None and theirs is not None
    head = ["", *(r.contender.name for r in runs)] + (["ours / theirs"] if both else [])

    def row(label: str, cells: Callable[[Summary], str], ratio: Callable[[Summary], float] | None = None) -> list[str]:
        out = [label, *(cells(s) for s in sums)]
        if both:
            assert mine is not None and theirs is not None
            out.append(_ratio(ratio(mine), ratio(theirs)) if ratio else "")
        return out

    ms = "{:.3f}".format
    rows = [
        head,
        row("frames sent (measured)", lambda s: str(s.sent)),
        row("frames received", lambda s: str(s.received)),
        row("lost frames", lambda s: str(s.lost)),
        row("unmatched datagrams", lambda s: str(s.unmatched)),
        row("values correct", lambda s: f"{s.values_ok:.1%}"),
        row("latency p50 (ms)", lambda s: ms(s.p50), lambda s: s.p50),
        row("latency p90 (ms)", lambda s: ms(s.p90), lambda s: s.p90),
        row("latency p99 (ms)", lambda s: ms(s.p99), lambda s: s.p99),
        row("latency max (ms)", lambda s: ms(s.max), lambda s: s.max),
        row("CPU (% of one core)", lambda s: f"{s.cpu_pct:.3f}", lambda s: s.cpu_pct),
        row("CPU per frame (ms)", lambda s: f"{s.cpu_ms_per_frame:.2f}", lambda s: s.cpu_ms_per_frame),
        row("RSS steady (MB)", lambda s: f"{s.rss_mb:.1f}", lambda s: s.rss_mb),
        row("RSS peak, VmHWM (MB)", lambda s: f"{s.hwm_mb:.1f}", lambda s: s.hwm_mb),
    ]
    details = [
        ["start-up: exec to 1st datagram (s)", *(f"{r.startup_s:.2f}" for r in runs)],
        ["start-up CPU (s)", *(f"{r.startup_cpu:.2f}" for r in runs)],
        ["CPU window (s)", *(f"{r.window:.1f}" for r in runs)],
        [
            "CPU by thread: main / others (%)",
            *(f"{100 * r.cpu_main / r.window:.3f} / {100 * (r.cpu - r.cpu_main) / r.window:.3f}" for r in runs),
        ],
        ["threads", *(str(r.threads) for r in runs)],
        ["writer late by > 2 ms (writes)", *(str(r.late_writes) for r in runs)],
        ["exit status after SIGTERM", *(str(r.returncode) for r in runs)],
    ]
    text = (
        _table(rows, right=set(range(1, len(head))))
        + "\n\n"
        + _table([["", *head[1 : len(runs) + 1]], *details], right=set(range(1, len(runs) + 1)))
    )
    verdicts: list[str] = []
    met = True
    if mine is not None:
        checks = [
            (mine.lost == 0, f"lost frames {mine.lost} (target 0)"),
            (mine.p99 < TARGET_P99_MS, f"latency p99 {mine.p99:.3f} ms (target < {TARGET_P99_MS:g} ms)"),
            (mine.cpu_pct < TARGET_CPU_PCT, f"CPU {mine.cpu_pct:.3f} % of one core (target < {TARGET_CPU_PCT:g} %)"),
            (mine.hwm_mb < TARGET_RSS_MB, f"peak RSS {mine.hwm_mb:.1f} MB (target < {TARGET_RSS_MB:g} MB)"),
        ]
        for ok, what in checks:
            met &= ok
            verdicts.append(f"  {'met   ' if ok else 'MISSED'}  {what}")
    return text + "\n\nTargets (the appliance):\n" + "\n".join(verdicts), met


def notable_log_lines(log: str, limit: int = 6) -> list[str]:
    """Warnings and errors a process logged (e.g. 7E1 refused by the pty, so 8N1)."""
    keep = [line for line in log.splitlines() if any(w in line for w in ("WARNING", "ERROR", "Traceback", "refused"))]
    return keep[:limit] + ([f"... and {len(keep) - limit} more"] if len(keep) > limit else [])


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run each process on the same stream, print the table; exit 1 on a missed target if strict."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, help="measured seconds per process (default 60; --quick 10)")
    ap.add_argument("--quick", action="store_true", help="10 s per process")
    ap.add_argument("--phases", type=int, choices=(1, 3), default=1, help="single- or three-phase meter (default 1)")
    ap.add_argument("--contract", choices=("BASE", "HCHP", "TEMPO", "EJP"), default="HCHP", help="default HCHP")
    ap.add_argument(
        "--peer-close",
        choices=("etx", "address"),
        default="etx",
        help="where the peer ends a frame: etx (the original script's rule, its best case; default) or address "
        "(peers/line_by_line.py's rule: at the next frame's ADSC line)",
    )
    ap.add_argument(
        "--feed",
        choices=FEEDS,
        default="usb",
        help="usb: 16-byte writes at 960 B/s, as a USB adapter delivers (default, issue 16); lines: a group per write",
    )
    ap.add_argument("--only", choices=("ours", "peer"), help="run one process only")
    ap.add_argument("--no-sockets", action="store_true", help="disable the health and control sockets, the page")
    ap.add_argument("--no-page", action="store_true", help="disable the live page and the tariff engine")
    ap.add_argument("--viewers", type=int, default=0, help="pages following the live page's event stream")
    ap.add_argument("--profile", action="store_true", help="run ours under cProfile (main thread) and print it")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configuration, logs, profile)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    sys.setswitchinterval(0.0005)  # the receiver thread must get the GIL at once when a datagram arrives

    def say(msg: str) -> None:
        print(msg, flush=True)

    say(
        f"Python {platform.python_version()} on {platform.system()} {platform.release()} {platform.machine()}, "
        f"{_cpu_model()}, {os.cpu_count()} CPUs"
    )
    frames, measured = make_frames(seconds, args.phases, args.contract)
    sizes = [len(f.data) for f in frames]
    say(
        f"stream: standard, {args.phases}-phase, {args.contract}, {BAUD} Bd x {BITS_PER_BYTE} bits/byte, "
        f"feed {args.feed}; "
        f"{WARMUP_FRAMES} warm-up + {measured} measured + {TAIL_FRAMES} tail frames, "
        f"{min(sizes)}-{max(sizes)} bytes, {statistics.mean(f.duration for f in frames):.3f} s per frame"
    )
    say(f"peer check: {check_peer_is_line_by_line(frames)}")

    contenders = []
    if args.only != "peer":
        contenders.append(ours(not args.no_sockets, args.profile, not args.no_page))
    if args.only != "ours":
        contenders.append(peer(args.peer_close))
    runs: list[Run] = []
    work = Path(tempfile.mkdtemp(prefix="teleinfo-latency-"))
    try:
        for c in contenders:
            say(f"\nrunning {c.name} for {seconds:g} s of frames")
            run = run_one(c, frames, measured, work, say, args.feed, args.viewers if c.ours else 0)
            say("  command: " + " ".join(run.argv))
            for line in notable_log_lines(run.log):
                say(f"  log: {line}")
            match(run, frames)
            runs.append(run)
    finally:
        if args.keep:
            say(f"\nwork directory kept: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)

    text, met = report(runs)
    say("\n" + text)
    for r in runs:
        if r.profile:
            say(f"\n--- cProfile of {r.contender.name}: main thread CPU time over the CPU window (inflated) ---")
            say(r.profile)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
