"""The live service side by side with its peers: CPU, memory, ETX -> MQTT and ETX -> multicast latency, start-up.

Run from the repository root (needs ``mosquitto``)::

    python bench/footprint.py                  # 3 alternated rounds of 60 s per contender
    python bench/footprint.py --quick          # 1 round of 15 s
    python bench/footprint.py --teleinfo2mqtt ~/src/teleinfo2mqtt    # also the Node.js bridge (or $TELEINFO2MQTT)

This is issue 16's measurement.  Every contender is a separate process reading the same pty, fed the same bytes
at the same pace, publishing to the same local mosquitto, measured by the same code:

* **the feed**: standard-mode frames of the simulated meter (a real capture's meter, values moving as on a real
  evening), 9600 Bd, delivered as a USB adapter delivers them: 16-byte writes at 960 bytes/s, the meter's
  silence between frames (``bench/latency.py``'s ``usb`` schedule);
* **ours**: ``teleinfo run`` as systemd starts it (a ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` from the bench, so
  the READY/STATUS/WATCHDOG traffic of the real unit is counted, and a ``RUNTIME_DIRECTORY`` on a tmpfs, where
  the MQTT spool writes ahead as under the unit's ``RuntimeDirectory=``), MQTT (QoS 1, discovery on: the
  defaults) and multicast (line protocol, TTL 0 on 127.0.0.1) enabled, the health and control sockets and the
  live page on (their defaults) on 127.0.0.1, the tariff engine counting every frame (``--no-page``: page and
  engine off), with the unit's malloc settings (systemd/teleinfo.service).  ``--interpreter deployed`` (the
  default) runs it as the image installs it: Debian's ``python3``, a venv with the appliance's wheel (not an
  editable install, whose import hook alone costs 2.4 MiB) and the two libraries this configuration imports
  (paho-mqtt, pyserial, at image/requirements.txt's versions), started by the ``teleinfo`` console script; the
  venv is built once per committed version of appliance/ under ``~/.cache/teleinfo-bench``.  ``--interpreter
  current`` runs ``python -m appliance`` with this interpreter and checkout instead;
* **the classic script** (always run): ``peers/line_by_line_service.py``, pyserial ``readline()``, each frame
  published as JSON with QoS 1 through paho (``loop_start``) and as a line-protocol datagram, as the Raspberry Pi
  scripts do.  It validates less and publishes less (no discovery, no availability, no state kept), so it is a
  floor, not an equal;
* **teleinfo2mqtt** (Node.js, run when ``node`` and a checkout with its ``node_modules`` are given by
  ``--teleinfo2mqtt DIR`` or ``$TELEINFO2MQTT``: ``git clone`` of the upstream GitHub repository
  fmartinou/teleinfo2mqtt, then ``npm ci --omit=dev`` in its ``app/``; without one it is skipped with a
  message): ``TIC_MODE=standard``, ``EMIT_INTERVAL=0`` (every frame), discovery on, the Tempo lookups
  (an internet API) off, MQTT only.  It publishes a frame as ``{LABEL: {raw, value[, timestamp]}}`` on
  ``teleinfo/<ADSC>``, and in standard mode only when the next frame's ``ADSC`` line arrives (its end of frame
  is the next one's start), so its ETX -> MQTT time includes the meter's silence between frames.

Figures per run: CPU share of one core over the measured window (``/proc/<pid>/task/*/schedstat``, nanoseconds,
every thread), RSS (median of one ``VmRSS`` sample a second) and its peak (``VmHWM``), ETX -> MQTT message and
ETX -> datagram latency (p50, p99: each message matched to its frame by content, after that frame's ETX), and
start-up: exec -> port opened, port opened -> first message (the meter is already talking when the port opens:
the writer starts mid-frame, as a real meter is caught).  Rounds alternate the order of the contenders; the table
gives the median of the rounds and the spread (min-max), then the ratios ours / peer.  On a machine shared with
other work, ``--realtime`` runs the bench and every contender SCHED_FIFO, so that others' processes do not add
their scheduling delays to the latencies (the CPU and memory figures do not depend on it).

Network safety: mosquitto, the subscribers and every socket are on 127.0.0.1 (free ports); datagrams leave
through 127.0.0.1 with TTL 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(BENCH), str(REPO)):  # `python bench/footprint.py` puts only bench/ on the path
    if _p not in sys.path:
        sys.path.insert(0, _p)

import paho.mqtt.client as mqtt  # noqa: E402
from latency import (  # noqa: E402
    GROUP,
    LOOPBACK,
    SYSTEMD_ENV,
    WARMUP_FRAMES,
    Piece,
    Receiver,
    Writer,
    _free_port,
    has_open,
    make_frames,
    percentile,
    schedule,
    signature_of_fields,
    signature_of_values,
    status_kb,
)
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from appliance.config import parse_config  # noqa: E402
from appliance.lineproto import parse_line  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402
from tests.ptyutil import PtyMeter  # noqa: E402
from tests.util import stop_process  # noqa: E402

START_TIMEOUT = 30.0
TARGET_CPU_PCT = 0.3
TARGET_RSS_MIB = 18.0
TARGET_MQTT_P99_MS = 2.0
TARGET_MULTICAST_P99_MS = 1.0
#: ``--realtime``: SCHED_FIFO priority of the processes under test and of the bench (its writer and receivers).
REALTIME_PRIORITY = 20


# --------------------------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """How to start one process, given the pty, the broker's port, the multicast port and a work directory."""

    name: str
    key: str
    command: Callable[[str, int, int, Path], tuple[list[str], dict[str, str], Path]]  # argv, extra env, cwd
    multicast: bool  # publishes datagrams too
    systemd: bool = False  # gets NOTIFY_SOCKET/WATCHDOG_USEC


def ours_config(device: str, broker: int, port: int, state: Path, page: bool = True) -> str:
    """``teleinfo run``: the pty in standard mode, MQTT (defaults) and multicast on loopback, sockets on loopback.

    The live page and the tariff engine are on, as by default on the appliance (the page on 127.0.0.1, the engine
    counting every frame as on a Pi whose clock is synchronised); ``page=False`` turns both off."""
    text = f"""
[source]
device = {json.dumps(device)}
mode = "standard"

[outputs.mqtt]
enabled = true
host = "{LOOPBACK}"
port = {broker}
client_id = "teleinfo-bench"

[outputs.multicast]
enabled = true
group = "{GROUP}"
port = {port}
ttl = 0
interface = "{LOOPBACK}"

[health]
bind = "{LOOPBACK}"
port = {_free_port(socket.SOCK_STREAM)}

[control]
bind = "{LOOPBACK}"
port = {_free_port(socket.SOCK_STREAM)}

[state]
directory = {json.dumps(str(state))}
"""
    if page:
        text += f'\n[web]\nbind = "{LOOPBACK}"\nport = {_free_port(socket.SOCK_STREAM)}\n'
        text += "\n[tariff]\nwait_for_clock_sync = false\n"
    else:
        text += "\n[web]\nenabled = false\n\n[tariff]\nenabled = false\n"
    parse_config(text, "benchmark configuration")  # fail here, with the errors, rather than in the child
    return text


def unit_environment() -> dict[str, str]:
    """The memory and interpreter settings of systemd/teleinfo.service (``Environment=MALLOC_...`` and
    ``PYTHON...``): the service runs with them on the appliance (its other variables name the appliance's paths,
    which the bench replaces)."""
    env: dict[str, str] = {}
    for line in (REPO / "systemd" / "teleinfo.service").read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            for word in line.removeprefix("Environment=").split():
                key, _, value = word.partition("=")
                if key.startswith(("MALLOC_", "PYTHON")):
                    env[key] = value.strip('"')
    return env


RUNTIME_DIRS: list[Path] = []  # the runtime directories given to ours, removed at the end


def ours(teleinfo: Path | None, page: bool = True) -> Contender:
    """``teleinfo run``: the console script ``teleinfo`` of a deployed-like venv, or ``python -m appliance``,
    with the unit's environment."""

    def command(device: str, broker: int, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        cfg = work / "teleinfo.toml"
        cfg.write_text(ours_config(device, broker, port, work / "state", page), encoding="utf-8")
        head = [str(teleinfo)] if teleinfo is not None else [sys.executable, "-m", "appliance"]
        env = unit_environment()
        # systemd's RuntimeDirectory= (/run/teleinfo, a tmpfs): where a healthy output's spool writes ahead.
        # Without it the reader's write-ahead and the worker's truncation hit the disk's journal, which on a machine
        # shared with other work stalls the reader for hundreds of milliseconds now and then.
        runtime = Path(tempfile.mkdtemp(prefix="footprint-run-", dir="/dev/shm"))
        env["RUNTIME_DIRECTORY"] = str(runtime)
        RUNTIME_DIRS.append(runtime)
        env["TELEINFO_CONFIG"] = str(cfg)  # as the unit gives it: a bare `teleinfo run`, as ExecStart= runs it
        return [*head, "run"], env, REPO if teleinfo is None else work

    how = "deployed venv" if teleinfo is not None else "this interpreter"
    how += "" if page else ", no page/tariff"
    return Contender(f"ours (teleinfo run, {how})", "ours", command, multicast=True, systemd=True)


def _pin(name: str) -> str:
    """``name==version`` as image/requirements.txt pins it (what the image installs), else just ``name``."""
    for line in (REPO / "image" / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split(";")[0].strip()
    return name


def deployed_teleinfo(say: Callable[[str], None]) -> Path | None:
    """The ``teleinfo`` script of a venv laid out as the image's (Debian's python3, the wheel, paho-mqtt and
    pyserial only), built once per checkout state under ``~/.cache/teleinfo-bench``; None if it cannot be."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        say("deployed venv: no /usr/bin/python3; running with this interpreter")
        return None
    tree = subprocess.run(
        ["git", "rev-parse", "HEAD:appliance"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "appliance", "setup.cfg"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if not tree or dirty:
        say("deployed venv: appliance/ has uncommitted changes; running with this interpreter")
        return None
    venv = Path.home() / ".cache" / "teleinfo-bench" / f"deployed-{tree[:12]}"
    script = venv / "bin" / "teleinfo"
    if script.exists():
        return script
    say(f"deployed venv: building {venv} (once per version of appliance/)")
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, _pin("paho-mqtt"), _pin("pyserial")], check=True, capture_output=True)
        with tempfile.TemporaryDirectory() as src:  # a wheel of the committed tree, as image/wheels builds it
            subprocess.run(["git", "archive", "HEAD", "-o", f"{src}/tree.tar"], cwd=REPO, check=True)
            subprocess.run(["tar", "-xf", f"{src}/tree.tar", "-C", src], check=True)
            subprocess.run([*pip, "--no-deps", src], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        say(f"deployed venv: cannot build it ({e}; {err.decode(errors='replace')[-300:]}); this interpreter then")
        shutil.rmtree(venv, ignore_errors=True)
        return None
    return script


def classic() -> Contender:
    def command(device: str, broker: int, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        script = BENCH / "peers" / "line_by_line_service.py"
        argv = [
            *(sys.executable, str(script), device, "--mode", "standard", "--close", "etx"),
            *("--group", GROUP, "--port", str(port), "--interface", LOOPBACK, "--ttl", "0"),
            *("--mqtt-host", LOOPBACK, "--mqtt-port", str(broker)),
        ]
        return argv, {}, REPO

    return Contender("classic script (line by line)", "classic", command, multicast=True)


def teleinfo2mqtt(checkout: Path) -> Contender:
    def command(device: str, broker: int, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        # The variables of its app/config/index.js.  TEMPO_ENABLED=false: with it on, it polls an internet API
        # (app/tempo/Tempo.js) at start and every TEMPO_INTERVAL_MINUTE; the bench reaches only 127.0.0.1.
        env = {
            "SERIAL": device,
            "TIC_MODE": "standard",
            "MQTT_URL": f"mqtt://{LOOPBACK}:{broker}",
            "MQTT_BASE_TOPIC": "teleinfo",
            "EMIT_INTERVAL": "0",
            "HASS_DISCOVERY": "true",
            "HASS_DISCOVERY_PREFIX": "homeassistant",
            "TEMPO_ENABLED": "false",
            "LOG_LEVEL": "error",
            "LOG_FORMAT": "text",
            "HASSIO_ADDON": "false",  # not /data/options.json, whatever the calling shell exports
        }
        app = checkout / "app" if (checkout / "app" / "index.js").exists() else checkout
        return ["node", "index.js"], env, app

    return Contender("teleinfo2mqtt (node)", "teleinfo2mqtt", command, multicast=False)


def find_teleinfo2mqtt(option: str | None) -> tuple[Path | None, str]:
    """The checkout to run, or None and why not."""
    where = option or os.environ.get("TELEINFO2MQTT")
    if not where:
        return None, (
            "no checkout given (--teleinfo2mqtt DIR or $TELEINFO2MQTT: git clone of fmartinou/teleinfo2mqtt from "
            "GitHub, then npm ci --omit=dev in its app/)"
        )
    if shutil.which("node") is None:
        return None, "node is not installed"
    root = Path(where).expanduser()
    app = root / "app" if (root / "app" / "index.js").exists() else root
    if not (app / "index.js").exists():
        return None, f"{root}: no index.js (nor app/index.js)"
    if not (app / "node_modules" / "serialport").is_dir():
        return None, f"{app}: no node_modules/serialport (run npm ci --omit=dev there first)"
    return root, ""


# --------------------------------------------------------------------------------------------------------------
# Listeners
# --------------------------------------------------------------------------------------------------------------


class Subscriber:
    """A paho subscriber on every contender's state topic; stamps each message when its callback runs."""

    TOPICS = ("teleinfo/+/state", "teleinfo/+")  # ours; the classic script and teleinfo2mqtt

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[int, bytes]] = []
        self.first = threading.Event()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in self.TOPICS])
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port, 60)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        self.messages.append((time.monotonic_ns(), payload))
        # The first *frame* starts the measured window, not any message on these topics: teleinfo2mqtt also
        # publishes ``teleinfo/status`` (after each frame) and, with Tempo on, ``teleinfo/tempo``.
        if not self.first.is_set() and _mqtt_signature(payload) is not None:
            self.first.set()

    def reset(self) -> None:
        self.messages = []
        self.first.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class NotifySocket(threading.Thread):
    """What systemd gives a ``Type=notify`` unit: a datagram socket; counts the messages (READY, STATUS...)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="notify", daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.count = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                self.sock.recv(4096)
                self.count += 1
        self.sock.close()


def mqtt_values(payload: bytes) -> dict[str, Any] | None:
    """The ``{label: value}`` of a state message, whoever sent it (ours, the classic script, teleinfo2mqtt)."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("values"), dict):  # ours: docs/DATA_FORMAT.md section 4
        return obj["values"]
    return {k: (v.get("raw") if isinstance(v, dict) else v) for k, v in obj.items()}  # teleinfo2mqtt: {raw, value}


def datagram_fields(data: bytes) -> dict[str, Any] | None:
    fields: dict[str, Any] = {}
    try:
        for line in data.decode().split("\n"):
            if line:
                fields.update(parse_line(line).fields)
    except (UnicodeDecodeError, ValueError):
        return None
    return fields


def latencies(
    received: list[tuple[int, bytes]],
    sigs: list[tuple[Any, ...]],
    etx_ns: dict[int, int],
    measured: range,
    signature: Callable[[bytes], tuple[Any, ...] | None],
    first_whole: int = 1,
) -> tuple[dict[int, float], dict[int, int]]:
    """Per frame: ms from its ETX to its message, and the receive time of its message (every frame, warm-up too).

    A message belongs to the first frame not yet matched whose signature it carries and whose ETX was already
    written; messages that match nothing (discovery, availability) are ignored.  Frames before ``first_whole``
    were not written whole (the feed starts in the middle of frame 0), so no message is theirs: two consecutive
    frames of a quiet simulated meter can carry the same signature, and frame 1's message must not be taken for
    frame 0's.
    """
    out: dict[int, float] = {}
    first_seen: dict[int, int] = {}
    nxt = first_whole
    for t_recv, data in received:
        sig = signature(data)
        if sig is None:
            continue
        j = next((k for k in range(nxt, len(sigs)) if sigs[k] == sig and etx_ns.get(k, t_recv + 1) <= t_recv), None)
        if j is None:
            continue
        nxt = j + 1
        first_seen[j] = t_recv
        if j in measured:
            out[j] = (t_recv - etx_ns[j]) / 1e6
    return out, first_seen


def _mqtt_signature(data: bytes) -> tuple[Any, ...] | None:
    """The frame signature a state message carries; None for anything else (status, availability, Tempo)."""
    values = mqtt_values(data)
    if values is None:
        return None
    sig = signature_of_values(values)
    return None if all(v is None for v in sig) else sig


def _datagram_signature(data: bytes) -> tuple[Any, ...] | None:
    fields = datagram_fields(data)
    return None if fields is None else signature_of_fields(fields)


# --------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    contender: Contender
    cpu_pct: float = float("nan")
    cpu_main_pct: float = float("nan")
    rss_kb: list[int] = field(default_factory=list)
    hwm_kb: int = 0
    threads: int = 0
    mqtt_ms: dict[int, float] = field(default_factory=dict)
    multicast_ms: dict[int, float] = field(default_factory=dict)
    measured: int = 0
    exec_to_open_s: float = float("nan")
    open_to_first_s: float = float("nan")
    first_frame_published: bool = False
    frame_time_s: float = float("nan")
    notify_messages: int = 0
    late_writes: int = 0
    threads_ms: list[tuple[int, float, float]] = field(default_factory=list)  # (tid, CPU ms per frame, wakes/frame)
    log: str = ""
    returncode: int | None = None

    @property
    def rss_mib(self) -> float:
        return statistics.median(self.rss_kb) / 1024 if self.rss_kb else float("nan")

    @property
    def hwm_mib(self) -> float:
        return self.hwm_kb / 1024


def _tasks(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread: (nanoseconds on a CPU, times it was scheduled in) from ``schedstat``."""
    out: dict[int, tuple[int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
            ns, _wait, slices = f.read().split()[:3]
            out[int(tid)] = (int(ns), int(slices))
    return out


#: The threads of ``teleinfo run`` with this benchmark's configuration, in the order it starts them (the ids grow
#: with it): the reader, the health and control sockets, the live page's server (not with ``--no-page``), the
#: multicast and MQTT workers, the MQTT spool's syncer, then (in either order) the update reporter and paho's
#: network thread (the MQTT connect helper ends at once).
OUR_THREADS = (
    "main: read+decode+fan-out",
    "health",
    "control",
    "web",
    "multicast worker",
    "MQTT worker",
    "MQTT spool syncer",
    "reporter/paho",
    "paho/reporter",
)


def thread_names(count: int) -> tuple[str, ...]:
    """:data:`OUR_THREADS` for ``count`` threads that worked (without the page's when there is one fewer)."""
    if count == len(OUR_THREADS):
        return OUR_THREADS
    if count == len(OUR_THREADS) - 1:
        return tuple(n for n in OUR_THREADS if n != "web")
    return ()


def run_one(
    c: Contender,
    frames: list[Any],
    measured: int,
    pieces: list[Piece],
    broker: Mosquitto,
    sub: Subscriber,
    work: Path,
    say: Callable[[str], None],
    realtime: bool = False,
) -> Result:
    from latency import cpu_seconds as _cpu
    from latency import main_thread_cpu_seconds

    res = Result(c, measured=measured)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{c.key}-", dir=work))
    port = _free_port(socket.SOCK_DGRAM)
    receiver = Receiver(port)
    receiver.start()
    sub.reset()
    notify: NotifySocket | None = None
    with PtyMeter(run_dir) as meter:
        argv, extra, cwd = c.command(str(meter.path), broker.port, port, run_dir)
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        if cwd == REPO:  # this checkout (python -m appliance); a deployed venv imports its own installed copy
            env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        else:
            env.pop("PYTHONPATH", None)
        env.update(extra)
        if c.systemd:
            notify = NotifySocket(run_dir / "notify.sock")
            notify.start()
            env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="30000000")
        log_path = run_dir / "stderr.log"
        if realtime:
            argv = ["chrt", "--fifo", str(REALTIME_PRIORITY), *argv]
        with open(log_path, "wb") as log:
            t_exec = time.monotonic()
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        writer: Writer | None = None
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not has_open(proc.pid, meter.slave_name):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{c.name} did not open the pty: {log_path.read_text(errors='replace')}")
                time.sleep(0.001)
            t_open = time.monotonic()
            res.exec_to_open_s = t_open - t_exec
            writer = Writer(meter.master, pieces, end_frame=WARMUP_FRAMES + measured)
            writer.start()
            if not sub.first.wait(START_TIMEOUT):
                raise RuntimeError(f"{c.name}: no MQTT message within {START_TIMEOUT:.0f} s")
            time.sleep(0.2)  # the first message's burst (discovery...) out of the window
            t0, cpu0, main0 = time.monotonic(), _cpu(proc.pid), main_thread_cpu_seconds(proc.pid)
            tasks0 = _tasks(proc.pid)
            while not writer.window_over.wait(1.0):
                res.rss_kb.append(status_kb(proc.pid, "VmRSS"))
            t1, cpu1, main1 = time.monotonic(), _cpu(proc.pid), main_thread_cpu_seconds(proc.pid)
            res.cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
            res.cpu_main_pct = 100 * (main1 - main0) / (t1 - t0)
            frames_in_window = (t1 - t0) / frames[1].duration
            tasks1 = _tasks(proc.pid)
            res.threads_ms = [
                (
                    tid,
                    (ns - tasks0.get(tid, (0, 0))[0]) / 1e6 / frames_in_window,
                    (n - tasks0.get(tid, (0, 0))[1]) / frames_in_window,
                )
                for tid, (ns, n) in sorted(tasks1.items())
            ]
            writer.join()
            if writer.error is not None:
                raise RuntimeError(f"writing the pty failed: {writer.error!r}")
            res.late_writes = writer.late
            time.sleep(0.5)  # the tail frames' messages
            res.hwm_kb = status_kb(proc.pid, "VmHWM")
            res.rss_kb.append(status_kb(proc.pid, "VmRSS"))
            res.threads = status_kb(proc.pid, "Threads")
        finally:
            stop_process(proc)
            res.returncode = proc.returncode
            receiver.stopping.set()
            receiver.join()
            if notify is not None:
                notify.stopping.set()
                notify.join()
                res.notify_messages = notify.count
            res.log = log_path.read_text(encoding="utf-8", errors="replace")
    assert writer is not None
    sigs = [signature_of_values(f.values) for f in frames]
    window = range(WARMUP_FRAMES, WARMUP_FRAMES + measured)
    res.mqtt_ms, seen = latencies(list(sub.messages), sigs, writer.etx_ns, window, _mqtt_signature)
    if c.multicast:
        res.multicast_ms, _ = latencies(receiver.datagrams, sigs, writer.etx_ns, window, _datagram_signature)
    # Start-up: the writer began mid-frame 0 (the meter was already talking); frame 1 is the first whole one.
    first = min(seen) if seen else None
    res.first_frame_published = first == 1
    res.frame_time_s = frames[1].duration
    if first is not None:
        res.open_to_first_s = (seen[first] / 1e9) - t_open
    shutil.rmtree(run_dir, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def _spread(values: list[float], fmt: str) -> str:
    vals = [v for v in values if v == v]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(vals), fmt)}-{format(max(vals), fmt)})"


def _pct(ms: dict[int, float], q: float) -> float:
    return percentile(list(ms.values()), q) if ms else float("nan")


FIGURES: list[tuple[str, Callable[[Result], float], str]] = [
    ("CPU (% of one core)", lambda r: r.cpu_pct, ".3f"),
    ("  of which the main thread", lambda r: r.cpu_main_pct, ".3f"),
    ("CPU per frame (ms)", lambda r: 10 * r.cpu_pct * r.frame_time_s, ".3f"),
    ("RSS median (MiB)", lambda r: r.rss_mib, ".1f"),
    ("RSS peak, VmHWM (MiB)", lambda r: r.hwm_mib, ".1f"),
    ("ETX -> MQTT p50 (ms)", lambda r: _pct(r.mqtt_ms, 50), ".3f"),
    ("ETX -> MQTT p99 (ms)", lambda r: _pct(r.mqtt_ms, 99), ".3f"),
    ("ETX -> multicast p50 (ms)", lambda r: _pct(r.multicast_ms, 50), ".3f"),
    ("ETX -> multicast p99 (ms)", lambda r: _pct(r.multicast_ms, 99), ".3f"),
    ("exec -> port open (s)", lambda r: r.exec_to_open_s, ".3f"),
    ("port open -> 1st message (s)", lambda r: r.open_to_first_s, ".3f"),
    ("frames lost to MQTT", lambda r: r.measured - len(r.mqtt_ms), ".0f"),
    ("threads", lambda r: r.threads, ".0f"),
]


def report(results: dict[str, list[Result]]) -> tuple[str, bool]:
    keys = list(results)
    names = [results[k][0].contender.name for k in keys]
    rows = [["", *names]]
    for label, get, fmt in FIGURES:
        rows.append([label, *(_spread([get(r) for r in results[k]], fmt) for k in keys)])
    rows.append(
        [
            "1st whole frame published",
            *(" ".join("yes" if r.first_frame_published else "NO" for r in results[k]) for k in keys),
        ]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    ours_runs = results.get("ours", [])

    def med(runs: list[Result], get: Callable[[Result], float]) -> float:
        vals = [get(r) for r in runs if get(r) == get(r)]
        return statistics.median(vals) if vals else float("nan")

    ratios = ["", "Ratios, ours / peer (medians of the rounds; below 1 is better for us):"]
    for k in keys:
        if k == "ours":
            continue
        for label, get, _fmt in FIGURES[:7]:
            a, b = med(ours_runs, get), med(results[k], get)
            if a == a and b == b and b > 0:
                ratios.append(
                    f"  {label:<28} vs {results[k][0].contender.name}: {a / b:.3f} ({b / a:.1f}x less)"
                    if a > 0
                    else f"  {label}: -"
                )
    met = True
    verdicts = ["", "Targets (issue 16, medians of the rounds):"]
    if ours_runs:
        one_frame = med(ours_runs, lambda r: r.frame_time_s)
        checks = [
            (med(ours_runs, lambda r: r.cpu_pct) <= TARGET_CPU_PCT, f"CPU <= {TARGET_CPU_PCT} % of one core"),
            (max(r.hwm_mib for r in ours_runs) <= TARGET_RSS_MIB, f"RSS (peak) <= {TARGET_RSS_MIB:g} MiB"),
            (
                med(ours_runs, lambda r: _pct(r.mqtt_ms, 99)) <= TARGET_MQTT_P99_MS,
                f"ETX -> MQTT p99 <= {TARGET_MQTT_P99_MS:g} ms",
            ),
            (
                med(ours_runs, lambda r: _pct(r.multicast_ms, 99)) <= TARGET_MULTICAST_P99_MS,
                f"ETX -> multicast p99 <= {TARGET_MULTICAST_P99_MS:g} ms",
            ),
            (
                all(r.first_frame_published for r in ours_runs),
                "start: the first whole frame after the port opens is published",
            ),
            (
                med(ours_runs, lambda r: r.open_to_first_s) <= 2 * one_frame,
                f"start: port open -> 1st message within the partial frame + one frame time ({2 * one_frame:.2f} s)",
            ),
            (all(r.measured == len(r.mqtt_ms) for r in ours_runs), "no frame lost"),
        ]
        for ok, what in checks:
            met &= ok
            verdicts.append(f"  {'met   ' if ok else 'MISSED'}  {what}")
    return text + "\n".join(ratios) + "\n" + "\n".join(verdicts), met


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, help="measured seconds per run (default 60; --quick 15)")
    ap.add_argument("--rounds", type=int, help="alternated rounds (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="one round of 15 s")
    ap.add_argument("--only", action="append", choices=("ours", "classic", "teleinfo2mqtt"), help="repeatable")
    ap.add_argument("--teleinfo2mqtt", metavar="DIR", help="a teleinfo2mqtt checkout (default: $TELEINFO2MQTT)")
    ap.add_argument(
        "--interpreter",
        choices=("deployed", "current"),
        default="deployed",
        help="deployed: Debian's python3 and a wheel install, as on the image (default); current: python -m appliance",
    )
    ap.add_argument("--teleinfo", metavar="SCRIPT", help="run this teleinfo console script as ours (another build)")
    ap.add_argument(
        "--realtime",
        action="store_true",
        help="run the bench and every contender SCHED_FIFO (root): on a machine shared with other work, their "
        "scheduling delays otherwise dominate the latency percentiles; an appliance runs nothing else",
    )
    ap.add_argument("--no-page", action="store_true", help="ours without the live page and the tariff engine")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    if args.realtime:
        try:
            # threads started later (writer, receivers) inherit it
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        except (PermissionError, OSError) as e:
            print(f"--realtime: {e} (root needed)", file=sys.stderr)
            return 2
    rounds = args.rounds or (1 if args.quick else 3)
    if shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    sys.setswitchinterval(0.0005)  # the receiving threads must get the GIL at once

    def say(msg: str) -> None:
        print(msg, flush=True)

    say(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    if args.teleinfo:
        teleinfo: Path | None = Path(args.teleinfo)
    else:
        teleinfo = deployed_teleinfo(say) if args.interpreter == "deployed" else None
    contenders = [ours(teleinfo, not args.no_page), classic()]
    checkout, why = find_teleinfo2mqtt(args.teleinfo2mqtt)
    if checkout is None:
        say(f"teleinfo2mqtt skipped: {why}")
    else:
        contenders.append(teleinfo2mqtt(checkout))
    if args.only:
        contenders = [c for c in contenders if c.key in args.only]
    if not contenders:
        print(f"nothing to run: --only {' '.join(args.only)} and that contender was skipped", file=sys.stderr)
        return 2
    frames, measured = make_frames(seconds, 1, "HCHP")
    # The meter is already talking when the port opens: the feed starts in the middle of frame 0.
    pieces = schedule(frames, "usb")
    half = pieces[0].frame, len([p for p in pieces if p.frame == 0]) // 2
    shift = pieces[half[1]].due
    pieces = [Piece(p.due - shift, p.data, p.frame, p.etx, p.starts_frame) for p in pieces[half[1] :]]
    say(
        f"feed: standard, 1-phase, HCHP, 9600 Bd, 16-byte writes at 960 B/s; {WARMUP_FRAMES} warm-up + {measured} "
        f"measured frames per run, {statistics.mean(f.duration for f in frames):.3f} s per frame; {rounds} round(s)"
    )
    results: dict[str, list[Result]] = {c.key: [] for c in contenders}
    work = Path(tempfile.mkdtemp(prefix="teleinfo-footprint-"))
    broker = Mosquitto(work / "broker").start()
    sub = Subscriber(broker.port)
    try:
        for n in range(rounds):
            order = contenders[n % len(contenders) :] + contenders[: n % len(contenders)]
            for c in order:
                say(f"round {n + 1}: {c.name}")
                r = run_one(c, frames, measured, pieces, broker, sub, work, say, args.realtime)
                results[c.key].append(r)
                say(f"  RSS samples (MiB): {' '.join(f'{k / 1024:.1f}' for k in r.rss_kb)}")
                live = [(t, ms, n) for t, ms, n in r.threads_ms if ms > 0.0005]
                names = thread_names(len(live)) if c.key == "ours" else ()
                say(
                    "  CPU per frame by thread (ms; wake-ups): "
                    + ", ".join(f"{names[i] if names else t}: {ms:.3f} ({n:.1f})" for i, (t, ms, n) in enumerate(live))
                )
                worst = sorted(r.mqtt_ms.items(), key=lambda kv: -kv[1])[:3]
                say(f"  slowest to MQTT (frame: ms): {', '.join(f'{k}: {v:.2f}' for k, v in worst)}")
                say(
                    f"  CPU {r.cpu_pct:.3f} %, RSS {r.rss_mib:.1f} MiB (peak {r.hwm_mib:.1f}), MQTT p99 "
                    f"{_pct(r.mqtt_ms, 99):.2f} ms, multicast p99 {_pct(r.multicast_ms, 99):.2f} ms, "
                    f"{len(r.mqtt_ms)}/{r.measured} frames; the bench's writer was late by > 2 ms "
                    f"{r.late_writes} times (a loaded machine)"
                )
                for line in r.log.splitlines():
                    if any(w in line for w in ("WARNING", "ERROR", "Traceback")):
                        say(f"  log: {line[:160]}")
    finally:
        sub.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
        for runtime in RUNTIME_DIRS:
            shutil.rmtree(runtime, ignore_errors=True)
    text, met = report(results)
    say("\n" + text)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
