"""Latency from a frame's ETX on the serial line to its MQTT state message at a subscriber, through mosquitto.

Run from the repository root (needs ``mosquitto``: ``apt-get install mosquitto``)::

    python bench/mqtt_latency.py             # 60 s of frames
    python bench/mqtt_latency.py --quick     # 10 s

The path measured is the whole one a Home Assistant user waits for: a simulated Linky writes standard-mode TIC
into a pty (9600 Bd, real pacing: by default 16-byte writes at 960 bytes/s as a USB adapter delivers them,
``--feed lines`` for a group per write; the meter's silence between frames); ``teleinfo run`` (a separate
process, ``python -m appliance run --config tmp.toml --no-view``, as systemd starts it) reads the pty with
pyserial, decodes, and publishes the frame's JSON with QoS 1 to a local mosquitto started for the run; a paho
subscriber in this process receives it.

* **Latency** = the subscriber's ``on_message`` time minus the moment the ETX byte was written into the pty
  master (both ``time.monotonic_ns()``).  The pacing, the write schedule and the ETX stamping are those of
  ``bench/latency.py`` (the multicast benchmark), imported from it, so the two figures compare.
* Each message is matched to its frame by content (the values that change from frame to frame, as in
  ``bench/latency.py``) and only after that frame's ETX was written: a frame cannot be published before it ends.
* Also reported: frames lost or duplicated, the service's CPU share of one core over the measured period.

Network safety: mosquitto and every socket are on 127.0.0.1 with free ports; the service's multicast output and
health/control sockets are disabled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(BENCH), str(REPO)):  # `python bench/mqtt_latency.py` puts only bench/ on the path
    if _p not in sys.path:
        sys.path.insert(0, _p)

import paho.mqtt.client as mqtt  # noqa: E402
from latency import (  # noqa: E402
    FEEDS,
    SYSTEMD_ENV,
    WARMUP_FRAMES,
    Writer,
    cpu_seconds,
    has_open,
    make_frames,
    percentile,
    schedule,
    signature_of_values,
)
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from appliance.config import parse_config  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402
from tests.ptyutil import PtyMeter  # noqa: E402
from tests.util import stop_process  # noqa: E402

LOOPBACK = "127.0.0.1"
TARGET_P99_MS = 10.0
START_TIMEOUT = 30.0


def service_config(device: str, port: int, state: Path) -> str:
    """``teleinfo run`` on the pty, MQTT only (QoS 1, discovery on, the defaults), nothing else listening."""
    text = f"""
[source]
kind = "serial"
device = {json.dumps(device)}
mode = "standard"

[outputs.multicast]
enabled = false

[outputs.mqtt]
enabled = true
host = "{LOOPBACK}"
port = {port}
client_id = "teleinfo-bench"

[health]
enabled = false

[control]
enabled = false

[web]
enabled = false

[state]
directory = {json.dumps(str(state))}
"""
    parse_config(text, "benchmark configuration")  # fail here, with the errors, rather than in the child
    return text


class Subscriber:
    """A paho subscriber on the state topics; stamps each message when its callback runs."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[int, bytes]] = []
        self.first = threading.Event()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
        self.client.on_connect = lambda c, *_: c.subscribe("teleinfo/+/state", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port, 60)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((time.monotonic_ns(), bytes(msg.payload)))
        self.first.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def match(
    messages: list[tuple[int, bytes]], frames: Sequence[Any], etx_ns: dict[int, int], measured: int
) -> dict[str, Any]:
    """Latency per measured frame (after the warm-up ones, before the tail), plus duplicated and unmatched
    messages (see the module docstring)."""
    sigs = [signature_of_values(f.values) for f in frames]
    latencies: dict[int, float] = {}
    duplicates = unmatched = 0
    nxt = 0
    for t_recv, payload in messages:
        try:
            values = json.loads(payload)["values"]
        except (ValueError, KeyError, TypeError):
            unmatched += 1
            continue
        sig = signature_of_values(values)
        j = next(
            (k for k in range(nxt, len(frames)) if sigs[k] == sig and etx_ns.get(k, t_recv + 1) <= t_recv),
            None,
        )
        if j is None:
            if any(sigs[k] == sig for k in range(max(0, nxt - 3), nxt)):
                duplicates += 1
            elif nxt >= WARMUP_FRAMES:
                unmatched += 1
            continue
        nxt = j + 1
        if WARMUP_FRAMES <= j < WARMUP_FRAMES + measured:
            latencies[j] = (t_recv - etx_ns[j]) / 1e6
    return {"latencies": latencies, "duplicates": duplicates, "unmatched": unmatched}


def run(seconds: float, work: Path, say: Any, feed: str = "usb") -> dict[str, Any]:
    """Start mosquitto, the subscriber and the service; stream the frames; return what was measured."""
    frames, measured = make_frames(seconds, 1, "HCHP")
    say(f"stream: standard, 1-phase, HCHP, 9600 Bd, feed {feed}; {WARMUP_FRAMES} warm-up + {measured} measured frames")
    pieces = schedule(frames, feed)
    broker = Mosquitto(work / "broker").start()
    sub = Subscriber(broker.port)
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        with PtyMeter(work) as meter:
            cfg = work / "teleinfo.toml"
            cfg.write_text(service_config(str(meter.path), broker.port, work / "state"), encoding="utf-8")
            argv = [sys.executable, "-m", "appliance", "run", "--config", str(cfg), "--no-view"]
            log_path = work / "service.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                deadline = time.monotonic() + START_TIMEOUT
                while not has_open(proc.pid, meter.slave_name):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the service did not open the pty: {log_path.read_text()}")
                    time.sleep(0.01)
                writer = Writer(meter.master, pieces, end_frame=WARMUP_FRAMES + measured)
                writer.start()
                if not sub.first.wait(START_TIMEOUT):
                    raise RuntimeError(f"no MQTT message within {START_TIMEOUT:.0f} s: {log_path.read_text()}")
                t0, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
                say("  first message received; measuring...")
                writer.window_over.wait()
                t1, cpu1 = time.monotonic(), cpu_seconds(proc.pid)
                writer.join()
                if writer.error is not None:
                    raise RuntimeError(f"writing the pty failed: {writer.error!r}")
                time.sleep(0.5)  # the last frames' messages
            finally:
                stop_process(proc)
            log_text = log_path.read_text(encoding="utf-8", errors="replace")
    finally:
        sub.close()
        broker.stop()
    result = match(sub.messages, frames, writer.etx_ns, measured)
    result.update(
        measured=measured,
        cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
        late_writes=writer.late,
        returncode=proc.returncode,
        log=[ln for ln in log_text.splitlines() if "WARNING" in ln or "ERROR" in ln or "Traceback" in ln],
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, help="measured seconds (default 60; --quick 10)")
    ap.add_argument("--quick", action="store_true", help="10 s")
    ap.add_argument(
        "--feed",
        choices=FEEDS,
        default="usb",
        help="usb: 16-byte writes at 960 B/s, as a USB adapter delivers (default, issue 16); lines: a group per write",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configuration, logs)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if the p99 target is missed or a frame is lost")
    args = ap.parse_args(argv)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    if shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    sys.setswitchinterval(0.0005)  # the subscriber's thread must get the GIL at once when a message arrives

    def say(msg: str) -> None:
        print(msg, flush=True)

    say(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="teleinfo-mqtt-latency-"))
    try:
        r = run(seconds, work, say, args.feed)
    finally:
        if args.keep:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    lat = list(r["latencies"].values())
    lost = r["measured"] - len(lat)
    ms = "{:.3f}".format
    rows = [
        ("frames measured", str(r["measured"])),
        ("messages matched", str(len(lat))),
        ("lost frames", str(lost)),
        ("duplicated messages", str(r["duplicates"])),
        ("unmatched messages", str(r["unmatched"])),
        ("latency p50 (ms)", ms(percentile(lat, 50))),
        ("latency p90 (ms)", ms(percentile(lat, 90))),
        ("latency p99 (ms)", ms(percentile(lat, 99))),
        ("latency max (ms)", ms(max(lat) if lat else float("nan"))),
        ("service CPU (% of one core)", f"{r['cpu_pct']:.2f}"),
        ("writer late by > 2 ms (writes)", str(r["late_writes"])),
        ("exit status after SIGTERM", str(r["returncode"])),
    ]
    width = max(len(k) for k, _ in rows)
    say("\n" + "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    for line in r["log"][:6]:
        say(f"  service log: {line}")
    p99 = percentile(lat, 99)
    met = lost == 0 and p99 < TARGET_P99_MS
    say(f"\ntarget: p99 < {TARGET_P99_MS:g} ms and no frame lost: {'met' if met else 'MISSED'}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
