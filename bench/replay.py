"""``teleinfo replay`` of a month of raw journal into VictoriaMetrics, end to end: frames per second, both modes.

Run from the repository root (needs ``victoria-metrics``: ``apt-get install victoria-metrics``)::

    python bench/replay.py                 # a month (30 days) of each mode; the journals are built once
    python bench/replay.py --days 2        # quicker

1. **The journal.**  The meter simulator (:mod:`appliance.simulator`) plays ``--days`` days of a standard and of a
   historique meter at their real pace (every frame's wire time), and :class:`appliance.journal.Journal` writes
   them as the service would: each frame in two chunks (the service reads a frame in two or three pieces), each
   stamped with the time its last byte arrived, in hourly gzip segments.  Building a month takes a quarter of an
   hour on two cores (the simulator models the household: about 40 s per standard day), so the days are built in
   parallel, one journal session per process, and kept under ``~/.cache/teleinfo-bench`` for the next runs.
2. **The replay.**  A local VictoriaMetrics (127.0.0.1, free port, throwaway data) and the whole command, as a
   user runs it: ``teleinfo replay DIR --url ... --ledger ...`` (a separate process: start-up, reading and
   decompressing the segments, decoding, line protocol, HTTP writes through the output worker, the ledger).
   Frames per second = frames the command reports sent / wall time of the process.  Its progress lines (stderr
   is a pipe here) are counted and the last one shown.
3. **The check.**  VictoriaMetrics is asked how many points one field of the month holds: one per frame.

Also printed: the CPU time of the replay process and of VictoriaMetrics, and the load average: on a machine
shared with other work the wall-clock rate falls with the load, the CPU figures do not.

Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:  # `python bench/replay.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO))

from appliance.journal import Journal, JournalConfig, segment_files  # noqa: E402
from appliance.simulator import PARIS, MeterSimulator  # noqa: E402
from tests.servers import VictoriaMetrics  # noqa: E402

TARGET_FPS = 20_000
START = datetime(2025, 1, 1, tzinfo=PARIS)
#: The field counted in VictoriaMetrics: present in every frame of its mode.
COUNTED = {"standard": "teleinfo_sinsts", "historique": "teleinfo_papp"}


def build_journal(mode: str, first_day: int, days: int, directory: Path) -> int:
    """Days ``first_day`` .. ``first_day + days`` of simulated frames of ``mode`` as journal segments in
    ``directory`` (one journal session: the service ran through them); returns the frame count."""
    start = START + timedelta(days=first_day)
    sim = MeterSimulator(start=start, mode=mode, seed=16 + first_day)  # type: ignore[arg-type]
    journal = Journal(JournalConfig(enabled=True, max_total_mb=1_000_000, keep_days=0), directory, mode)
    journal.start()
    end = start.timestamp() + days * 86400
    t = start.timestamp()
    frames = 0
    pending = 0
    for f in sim.frames():
        if t >= end:
            break
        data = f.data
        half = len(data) // 2
        wire = len(data) * 10 / (9600 if mode == "standard" else 1200)
        journal.append(data[:half], t + wire / 2)
        journal.append(data[half:], t + wire)
        t += f.duration
        frames += 1
        pending += len(data)
        if pending >= 200_000:  # written here, in this thread: the writer thread would fall behind and drop
            journal.flush()
            pending = 0
    journal.close(30.0)
    return frames


def journal_for(mode: str, days: int) -> tuple[Path, int]:
    """The cached journal of ``mode`` for ``days`` days (built if missing, a few days per process: the
    simulator models the household and takes about 40 s per standard day)."""
    root = Path.home() / ".cache" / "teleinfo-bench" / f"journal-{mode}-{days}d-v1"
    meta = root / "frames.json"
    if meta.exists():
        return root, int(json.loads(meta.read_text(encoding="utf-8"))["frames"])
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        for p in tmp.iterdir():
            p.unlink()
    tmp.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(days, os.cpu_count() or 1))
    spans = [(d, min(days, d + -(-days // workers)) - d) for d in range(0, days, -(-days // workers))]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        counts = list(pool.map(build_journal, [mode] * len(spans), *zip(*spans, strict=True), [tmp] * len(spans)))
    frames = sum(counts)
    meta = tmp / "frames.json"
    meta.write_text(json.dumps({"frames": frames, "days": days}), encoding="utf-8")
    tmp.rename(root)
    return root, frames


def _cpu(vm: VictoriaMetrics) -> float:
    """CPU seconds the VictoriaMetrics process used so far."""
    assert vm.proc is not None
    with open(f"/proc/{vm.proc.pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_points(vm: VictoriaMetrics, metric: str, days: int) -> int:
    """Points VictoriaMetrics holds for ``metric`` over the replayed period."""
    start = int(START.timestamp()) - 3600
    end = int((START + timedelta(days=days)).timestamp()) + 3600
    url = f"{vm.url}/api/v1/export?match[]={metric}&start={start}&end={end}"
    total = 0
    with urllib.request.urlopen(url, timeout=120) as r:  # noqa: S310 - loopback server started here
        for line in r:
            if line.strip():
                total += len(json.loads(line)["values"])
    return total


def replay(mode: str, directory: Path, frames: int, work: Path, days: int) -> dict[str, object]:
    vm = VictoriaMetrics()
    vm.start(work / f"vm-{mode}")
    try:
        cfg = work / f"{mode}.toml"
        cfg.write_text(f'[outputs.influxdb]\nurl = "{vm.url}"\n[state]\ndirectory = "{work}/state-{mode}"\n')
        argv = [
            *(sys.executable, "-m", "appliance", "replay", str(directory)),
            *("--config", str(cfg), "--ledger", str(work / f"ledger-{mode}.json")),
        ]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # compiled modules cached
        env["PYTHONPATH"] = str(REPO)
        load = os.getloadavg()[0]
        before, vm_before = resource.getrusage(resource.RUSAGE_CHILDREN), _cpu(vm)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        after, vm_cpu = resource.getrusage(resource.RUSAGE_CHILDREN), _cpu(vm) - vm_before
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if proc.returncode != 0:
            raise SystemExit(f"teleinfo replay failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        summary = proc.stderr.strip().splitlines()[-1]
        m = re.search(r"(\d+) sent", summary)
        sent = int(m.group(1)) if m else 0
        urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=60).read()  # noqa: S310
        stored = count_points(vm, COUNTED[mode], days)
        progress = [ln for ln in proc.stderr.splitlines() if "frames/s" in ln]
        return {
            "frames": frames,
            "sent": sent,
            "stored": stored,
            "wall": wall,
            "fps": sent / wall if wall else 0.0,
            "cpu": cpu,
            "vm_cpu": vm_cpu,
            "load": load,
            "progress_lines": len(progress),
            "last_progress": progress[-1] if progress else "",
        }
    finally:
        vm.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30, help="journal length per mode (default 30: a month)")
    ap.add_argument("--mode", action="append", choices=("standard", "historique"), help="repeatable (default both)")
    ap.add_argument("--strict", action="store_true", help=f"exit 1 below {TARGET_FPS:,} frames/s")
    args = ap.parse_args(argv)
    modes = args.mode or ["standard", "historique"]
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs", flush=True)
    t0 = time.perf_counter()
    built = {mode: journal_for(mode, args.days) for mode in modes}
    print(f"journals ready in {time.perf_counter() - t0:.0f} s", flush=True)
    met = True
    with tempfile.TemporaryDirectory(prefix="teleinfo-replay-bench-") as tmp:
        for mode in modes:
            directory, frames = built[mode]
            size = sum(p.stat().st_size for p in segment_files(directory))
            print(
                f"{mode}: {frames:,} frames, {len(segment_files(directory))} segments, {size / 1e6:.0f} MB", flush=True
            )
            r = replay(mode, directory, frames, Path(tmp), args.days)
            ok = r["fps"] >= TARGET_FPS and r["sent"] == frames and r["stored"] == frames
            met &= ok
            print(
                f"  replayed {r['sent']:,} of {frames:,} frames in {r['wall']:.1f} s: {r['fps']:,.0f} frames/s "
                f"(target >= {TARGET_FPS:,}); VictoriaMetrics holds {r['stored']:,} points of {COUNTED[mode]}; "
                f"{r['progress_lines']} progress lines, the last: {r['last_progress']!s}"
            )
            print(
                f"  CPU: the replay {r['cpu']:.1f} s ({r['sent'] / r['cpu']:,.0f} frames per CPU second), "  # type: ignore[operator]
                f"VictoriaMetrics {r['vm_cpu']:.1f} s; load average {r['load']:.1f} on {os.cpu_count()} CPUs "
                "(other work on this machine slows the wall clock figure, not the CPU ones)"
            )
            print(f"  {'met' if ok else 'MISSED'}", flush=True)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
