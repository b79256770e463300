"""The load-test harness every listening socket shares (issue 15, general property 1).

A *target* is a listening socket, the process that owns it, a *probe* (one legitimate transaction, True when
it was served correctly and in time) and what its hostile clients send (:mod:`tests.loadgen`).
:func:`run_load` runs every target's hostile clients at once, in a separate process, for ``seconds``, while one
thread per target probes its socket every ``interval`` seconds from 127.0.0.1; then it waits for every owner
process to give back its file descriptors and memory.  It returns one :class:`LoadResult` per target, which its
test asserts on (served at least 99% of the time, fds and RSS back to baseline) and prints.

To add a socket (the web page server of issue 17, say): give :func:`run_load` one more :class:`Target` with its
owner's pid, a probe and a request prefix to drip; the rest is shared.  Targets of one run are loaded together,
which is harsher than one at a time on a 2-core machine, and takes the time of one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Hostile clients connect from these: other machines, for the servers (the probes use 127.0.0.1).
HOSTILE_SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]


@dataclass
class Target:
    name: str
    port: int
    pid: int  # the process that owns the socket (its fds and RSS are watched)
    probe: Callable[[], bool]
    drip: str  # a plausible request prefix, dripped a byte at a time and never finished
    guess: str = ""  # a wrong credential line for the "garbage" clients ({n}: a number), if the socket has one
    clients: int = 2000


@dataclass
class LoadResult:
    name: str
    probes: int = 0
    served: int = 0
    slow: list[float] = field(default_factory=list)  # durations of the failed probes
    fds_before: int = 0
    fds_peak: int = 0
    fds_after: int = 0
    rss_before: int = 0  # KiB
    rss_peak: int = 0
    rss_after: int = 0
    hostile: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def served_pct(self) -> float:
        return 100.0 * self.served / self.probes if self.probes else 0.0

    def report(self) -> str:
        h = self.hostile
        return (
            f"load[{self.name}]: served {self.served}/{self.probes} = {self.served_pct:.2f}% while "
            f"{h.get('opened', 0)} hostile connections were opened ({h.get('failed', 0)} refused at connect); "
            f"fds {self.fds_before} -> peak {self.fds_peak} -> {self.fds_after}; "
            f"RSS {self.rss_before} -> peak {self.rss_peak} -> {self.rss_after} KiB; wall {self.wall_s:.1f} s"
        )


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _probe_loop(target: Target, result: LoadResult, stop: threading.Event, interval: float) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            ok = target.probe()
        except Exception:  # a probe that raises was not served
            ok = False
        result.probes += 1
        if ok:
            result.served += 1
        else:
            result.slow.append(round(time.monotonic() - t0, 3))
        stop.wait(max(0.0, interval - (time.monotonic() - t0)))


def _watch(targets: list[Target], results: dict[str, LoadResult], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for t in targets:
            r = results[t.name]
            r.fds_peak = max(r.fds_peak, fds(t.pid))
            r.rss_peak = max(r.rss_peak, rss_kib(t.pid))


def run_load(
    targets: list[Target], seconds: float, interval: float = 0.2, settle: float = 20.0
) -> dict[str, LoadResult]:
    """Load every target at once (see the module docstring); the owners must be warmed up already."""
    t_start = time.monotonic()
    results = {t.name: LoadResult(t.name) for t in targets}
    for t in targets:
        r = results[t.name]
        r.fds_before = r.fds_peak = fds(t.pid)
        r.rss_before = r.rss_peak = rss_kib(t.pid)
    spec = {
        "seconds": seconds,
        "sources": HOSTILE_SOURCES,
        "targets": [
            {"name": t.name, "port": t.port, "clients": t.clients, "drip": t.drip, "guess": t.guess} for t in targets
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        hostile = subprocess.Popen(
            [sys.executable, "-m", "tests.loadgen", f.name], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        stop = threading.Event()
        threads = [threading.Thread(target=_probe_loop, args=(t, results[t.name], stop, interval)) for t in targets]
        threads.append(threading.Thread(target=_watch, args=(targets, results, stop)))
        for th in threads:
            th.start()
        try:
            out, _ = hostile.communicate(timeout=seconds + 60)
        finally:
            stop.set()
            for th in threads:
                th.join(10)
            if hostile.poll() is None:
                hostile.kill()  # our own child, by its pid
                hostile.wait(5)
    finally:
        os.unlink(f.name)
    counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    deadline = time.monotonic() + settle
    for t in targets:  # the owners give back what the flood took (deadlines of a few seconds at most)
        r = results[t.name]
        r.hostile = counts.get(t.name, {})
        while fds(t.pid) > r.fds_before and time.monotonic() < deadline:
            time.sleep(0.2)
        r.fds_after = fds(t.pid)
        r.rss_after = rss_kib(t.pid)
    wall = time.monotonic() - t_start
    for r in results.values():
        r.wall_s = wall
    return results
