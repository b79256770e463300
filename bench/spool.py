"""Spool replay rate after a one-hour outage of the InfluxDB server.

Run from the repository root (needs ``victoria-metrics``: ``apt-get install victoria-metrics``)::

    python bench/spool.py                    # 3600 standard frames (one hour at one a second), batch 500
    python bench/spool.py --batch-size 100 --batch-size 500 --batch-size 2000
    python bench/spool.py --mode historique --phases 3 --frames 7200

What is measured:

1. **The outage.**  A simulated Linky (``appliance.simulator``, standard mode by default) produces ``--frames``
   frames, one a second over the last hour; they are decoded by the real decoder and appended to an on-disk
   :class:`~appliance.outputs.spool.Spool`, as the worker does while the server is unreachable (generated fast:
   the append rate is printed too, it is the cost of one frame during an outage).
2. **The replay.**  A local victoria-metrics (127.0.0.1, free port, throwaway data directory) takes the frames
   back through the real path: a new :class:`~appliance.outputs.base.OutputWorker` opens the spool left on disk
   (as after a restart), and replays it with :class:`~appliance.outputs.influxdb.output.InfluxOutput`, ``--batch-size``
   frames per ``POST /api/v2/write``.  The time runs from the worker's start to the moment every frame is
   counted as sent (the spool files are then deleted); the client library is imported before.
3. **The check.**  victoria-metrics is read back (export API): every frame must be there, once, at its original
   timestamp, or the run fails.

Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:  # `python bench/spool.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO))

from appliance.lineproto import frame_time  # noqa: E402
from appliance.outputs.base import OutputWorker  # noqa: E402
from appliance.outputs.influxdb.config import InfluxConfig  # noqa: E402
from appliance.outputs.influxdb.output import InfluxOutput  # noqa: E402
from appliance.outputs.spool import Spool  # noqa: E402
from appliance.simulator import PARIS, MeterSimulator  # noqa: E402
from appliance.stats import Stats  # noqa: E402
from appliance.tic import Decoder, Frame  # noqa: E402
from tests.servers import VictoriaMetrics  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu ?"


def outage_frames(n: int, mode: str, phases: int) -> list[Frame]:
    """``n`` decoded frames, one a second, the last one a few seconds ago (as the reader would have stamped)."""
    t0 = datetime.now(PARIS).replace(microsecond=0) - timedelta(seconds=n + 5)
    sim = MeterSimulator(start=t0, mode=mode, phases=phases, seed=42)  # type: ignore[arg-type]
    decoder = Decoder(mode)
    out: list[Frame] = []
    for i, sf in enumerate(itertools.islice(sim.frames(step=1.0), n + 1)):
        out.extend(f.received(t0.timestamp() + i) for f in decoder.feed(sf.data))  # frames are immutable
    return out[:n]


def run(frames: list[Frame], batch_size: int, root: Path) -> dict[str, float]:
    spool_dir = root / f"spool-{batch_size}"
    spool = Spool(spool_dir)
    t = time.perf_counter()
    for f in frames:
        spool.append(f)
    spool.close()
    append_s = time.perf_counter() - t
    disk = sum(p.stat().st_size for p in spool_dir.iterdir())

    vm = VictoriaMetrics()
    vm.start(root / f"vm-{batch_size}")
    try:
        stats = Stats()
        out = InfluxOutput(InfluxConfig(enabled=True, url=vm.url, batch_size=batch_size))
        worker = OutputWorker(out, stats, spool=Spool(spool_dir), batch_size=batch_size)  # as after a restart
        n = len(frames)
        t = time.perf_counter()
        worker.start()
        while stats.snapshot().outputs["influxdb"].sent < n:
            if time.perf_counter() - t > 600:
                raise SystemExit(f"replay stuck: {stats.snapshot().outputs['influxdb']}")
            time.sleep(0.001)
        replay_s = time.perf_counter() - t
        worker.stop(5)
        samples = vm.samples('{__name__="teleinfo_east"}')
        stored = sorted(t for pairs in samples.values() for t, _ in pairs)
        expected = sorted(frame_time(f) for f in frames)
        if stored != expected:
            raise SystemExit(f"victoria-metrics holds {len(stored)} points, expected {len(expected)}")
        left = list(spool_dir.iterdir()) if spool_dir.exists() else []
        if left:
            raise SystemExit(f"spool files left after the replay: {left}")
    finally:
        vm.stop()
    return {"append_s": append_s, "disk": disk, "replay_s": replay_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3600, help="frames spooled (default 3600: one hour at 1/s)")
    ap.add_argument("--mode", choices=("standard", "historique"), default="standard")
    ap.add_argument("--phases", type=int, choices=(1, 3), default=1)
    ap.add_argument("--batch-size", type=int, action="append", help="points per write (repeatable; default 500)")
    args = ap.parse_args(argv)
    sizes = args.batch_size or [500]
    import influxdb_client  # noqa: F401 - imported before the timed region, as in a running service

    frames = outage_frames(args.frames, args.mode, args.phases)
    print(f"python {platform.python_version()} on {platform.machine()}, {cpu_model()}, {os.cpu_count()} cores")
    print(
        f"{len(frames)} {args.mode} {args.phases}-phase frames (one a second, the last {len(frames)} s), spooled,"
        " then replayed into victoria-metrics on 127.0.0.1"
    )
    print()
    print(
        f"{'batch':>6} {'spool MB':>9} {'B/frame':>8} {'append frames/s':>16} {'replay s':>9} {'replay frames/s':>16}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        for size in sizes:
            r = run(frames, size, Path(tmp))
            print(
                f"{size:>6} {r['disk'] / 1e6:>9.2f} {r['disk'] / len(frames):>8,.0f}"
                f" {len(frames) / r['append_s']:>16,.0f} {r['replay_s']:>9.2f}"
                f" {len(frames) / r['replay_s']:>16,.0f}"
            )
    print()
    print("every frame checked in victoria-metrics at its original timestamp; spool files deleted after replay")
    return 0


if __name__ == "__main__":
    sys.exit(main())
