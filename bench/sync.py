"""Journal cost on the reader, and sync upload throughput and resumption over loopback.

Run from the repository root::

    python bench/sync.py                 # 200 000 appends, a 200 MB file
    python bench/sync.py --size-mb 50 --appends 50000

What is measured (nothing leaves 127.0.0.1):

1. **Journal append.**  :meth:`appliance.journal.Journal.append` is what the service's reader thread pays per
   serial read; the flush thread runs meanwhile (flush every 256 kB, gzip).  Printed: nanoseconds per append, and
   the bytes written to disk per MB of raw TIC (the gzip ratio on simulated standard frames).
2. **Upload.**  An in-process :class:`~appliance.sync.server.SyncServer` and a ``SyncClient.run(once=True)`` over
   127.0.0.1 send a file of random bytes (incompressible, like gzip segments): MB/s including both sha256 passes
   and the server's fsync.
3. **Resumption.**  The file grows by 1 MB (a journal segment that got a new flush) and is synced again: the time
   and the bytes that crossed, which should be the 1 MB only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.journal import Journal, JournalConfig, segment_files
from appliance.sync.client import SyncClient
from appliance.sync.config import SyncServerConfig
from appliance.sync.server import SyncServer


def bench_journal(tmp: Path, appends: int) -> None:
    from datetime import datetime

    from appliance.simulator import PARIS, MeterSimulator

    sim = MeterSimulator(start=datetime(2025, 1, 15, tzinfo=PARIS), mode="standard", phases=3)
    stream = b"".join(f.data for f, _ in zip(sim.frames(step=1.0), range(200), strict=False))
    chunks = [stream[i : i + 64] for i in range(0, len(stream), 64)]  # a 9600 Bd read returns ~64 bytes
    j = Journal(JournalConfig(enabled=True), tmp / "journal", "standard")
    j.start()
    raw = 0
    t0 = time.perf_counter_ns()
    for i in range(appends):
        c = chunks[i % len(chunks)]
        j.append(c, 1_736_900_000.0 + i * 0.05)
        raw += len(c)
    elapsed = time.perf_counter_ns() - t0
    j.close(30)
    disk = sum(p.stat().st_size for p in segment_files(tmp / "journal"))
    print(f"journal append: {elapsed / appends:.0f} ns per append ({appends} appends of ~64 bytes)")
    print(f"journal size: {disk / raw * 1e6 / 1e3:.0f} kB on disk per MB of raw TIC ({raw / 1e6:.1f} MB raw)")


def bench_sync(tmp: Path, size_mb: int) -> None:
    tokens = tmp / "tokens"
    tokens.write_text("bench 0123456789abcdef0123\n")
    server = SyncServer(SyncServerConfig(port=0, root=str(tmp / "srv"), tokens_file=str(tokens)))
    server.start()
    src = tmp / "src"
    src.mkdir()
    big = src / "segment.gz"
    big.write_bytes(os.urandom(size_mb * 1_000_000))
    try:
        client = SyncClient(src, "127.0.0.1", server.port, "bench", "0123456789abcdef0123")
        t0 = time.perf_counter()
        assert client.run(once=True) == 0
        dt = time.perf_counter() - t0
        print(f"upload: {size_mb} MB in {dt:.2f} s = {size_mb / dt:.0f} MB/s (sha256 on both ends, fsync)")
        with big.open("ab") as f:
            f.write(os.urandom(1_000_000))
        staged_before = client.resumed
        t0 = time.perf_counter()
        assert client.run(once=True) == 0
        dt = time.perf_counter() - t0
        same = (tmp / "srv" / "bench" / "segment.gz").read_bytes() == big.read_bytes()
        print(
            f"grown by 1 MB: synced in {dt:.2f} s, resumed: {client.resumed > staged_before}, identical: {same}"
            f" (the prefix is hashed on both ends, only the new MB crosses)"
        )
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=200_000)
    parser.add_argument("--size-mb", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bench_journal(Path(d), args.appends)
        bench_sync(Path(d), args.size_mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
