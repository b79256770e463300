"""Decode throughput of ``appliance.tic`` against published TIC decoders and a classic line-by-line script.

Run from the repository root::

    pip install -r bench/requirements.txt     # the PyPI peers; missing ones are skipped with a message
    python bench/decode.py                    # full run (one to two minutes)
    python bench/decode.py --quick            # a few seconds: small streams, two repetitions

What is measured is the *whole* decode of a raw byte stream: finding frames and groups, checking checksums,
whatever validation each decoder does, and turning data into values.  Every decoder gets the same bytes, cut in
the same chunks (4096 bytes by default, a serial driver's buffer), through a thin adapter (``peers/``); imports,
object construction and the fake serial ports are set up outside the timed region.

The streams come from the project's meter simulator (:mod:`appliance.simulator`), each configured like the meter
of a real capture of ``tests/data/tic`` (one historique and one standard meter, each single- and three-phase),
deterministically (fixed seed).  Its household drives the values, so they move from frame to frame as on a real
meter: powers and currents every frame, energy indexes as energy accrues, the tariff period at 22:00, daily maxima
at midnight, load-curve points and mean voltages at their period ends, and ``DATE`` every frame.  Every checksum is
valid; the stream starts in the middle of a group, as every real capture does.

Sanity checks keep a decoder from winning by doing nothing: for each run the table shows the frames it returned
and the share of the sent values it returned *correctly* (matched label by label against the generator's ground
truth, frames aligned in order).  Our decoder is also checked exactly: every value, type and horodate.

frames/s counts the frames *sent* (the stream's frames) per second of decoding, whatever the decoder returned,
and MB/s the stream's bytes; both use the best of the repetitions (the median is shown too).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(BENCH), str(REPO)):  # `python bench/decode.py` puts only bench/ on the path
    if _p not in sys.path:
        sys.path.insert(0, _p)

# Before any peer is imported: python-tic calls logging.basicConfig(stdout, INFO) at import time, which would
# then print every log record of every library to stdout.  With a handler already installed that call is a no-op.
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

from decode_checks import SANE_SHARE, Check, check, check_ours_exactly  # noqa: E402
from decode_streams import Stream, make_streams  # noqa: E402
from peers import Adapter, Unavailable, all_adapters  # noqa: E402
from peers.line_by_line import LineByLineAdapter  # noqa: E402
from peers.ours import OursNoCacheAdapter  # noqa: E402

# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """The timings and sanity of one decoder on one stream."""

    adapter: Adapter
    stream: Stream
    times: list[float]
    check: Check
    error: str | None = None
    exact: list[str] | None = None  # ours only: what differs from the sent values ([] when all is equal)

    @property
    def best(self) -> float:
        """Fastest repetition, seconds."""
        return min(self.times)

    @property
    def median(self) -> float:
        """Median repetition, seconds."""
        return statistics.median(self.times)

    def fps(self, seconds: float | None = None) -> float:
        """Sent frames per second."""
        return self.stream.frames / (seconds if seconds is not None else self.best)

    @property
    def mbps(self) -> float:
        """Stream megabytes (10^6 bytes) per second, best repetition."""
        return len(self.stream.data) / 1e6 / self.best


def chunked(data: bytes, size: int) -> list[bytes]:
    """``data`` cut in ``size``-byte reads."""
    return [data[i : i + size] for i in range(0, len(data), size)]


#: The clock of the timed region. Every decoder runs in this one thread without any I/O, so the thread's CPU time
#: is its whole cost, and unlike wall time it does not bill a decoder for what other processes of a busy machine
#: run meanwhile (``--clock wall`` restores wall time for a quiet machine).
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


def _one_run(adapter: Adapter, stream: Stream, chunk_size: int) -> tuple[float, list[Any]]:
    """Prepare (untimed), collect garbage (so one run's leftovers do not bill the next), then time ``run``."""
    prepared = adapter.prepare(chunked(stream.data, chunk_size), stream.mode)
    gc.collect()
    t0 = _clock()
    out = adapter.run(prepared)
    elapsed = _clock() - t0
    return elapsed, out


def probe(adapters: list[Adapter], streams: list[Stream], chunk_size: int) -> dict[tuple[str, str], str]:
    """Run every adapter once on small streams of both modes (untimed) and describe what came out."""
    verdicts: dict[tuple[str, str], str] = {}
    logging.disable(logging.CRITICAL)  # outside their mode, peers log an error or warning per frame or line
    try:
        for adapter in adapters:
            for stream in streams:
                verdicts[(adapter.label, stream.name)] = _probe_one(adapter, stream, chunk_size)
    finally:
        logging.disable(logging.NOTSET)
    return verdicts


def _probe_one(adapter: Adapter, stream: Stream, chunk_size: int) -> str:
    adapter.last_error = None
    try:
        _, out = _one_run(adapter, stream, chunk_size)
        c = check(adapter.to_dicts(out), stream)
    except Exception as e:
        return f"raises {type(e).__name__}: {str(e)[:60]}"
    share = c.values_share(stream)
    works = c.matched > 0 and share >= 0.25
    text = f"{'decodes' if works else 'NO'}: {c.matched}/{stream.frames} frames, {share:.0%} of values"
    if not works and adapter.last_error is not None:
        e = adapter.last_error
        text += f" (swallowed {type(e).__name__}: ...{str(e)[-60:]})"
    return text


def measure(
    adapters: list[Adapter], stream: Stream, repeat: int, chunk_size: int, log: Callable[[str], None]
) -> list[Result]:
    """Time every adapter that decodes ``stream``'s mode; repetitions are interleaved to spread out drift."""
    runnable = [a for a in adapters if stream.mode in a.modes]
    times: dict[str, list[float]] = {a.label: [] for a in runnable}
    checks: dict[str, Check] = {}
    exact: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    started = time.perf_counter()
    for rep in range(repeat):
        order = runnable[rep % len(runnable) :] + runnable[: rep % len(runnable)]
        for adapter in order:
            if adapter.label in errors:
                continue
            try:
                elapsed, out = _one_run(adapter, stream, chunk_size)
            except Exception as e:
                errors[adapter.label] = f"{type(e).__name__}: {e}"
                continue
            times[adapter.label].append(elapsed)
            if adapter.label not in checks:
                checks[adapter.label] = check(adapter.to_dicts(out), stream)
                if adapter.reference:
                    exact[adapter.label] = check_ours_exactly(out, stream)
                    log(_ours_spot_check(out, stream, exact[adapter.label]))
            del out
    log(f"  {stream.name}: {len(runnable)} decoders x {repeat} repetitions in {time.perf_counter() - started:.0f} s")
    return [
        Result(a, stream, times[a.label], checks.get(a.label, Check(0, 0, 0)), errors.get(a.label), exact.get(a.label))
        for a in runnable
        if times[a.label] or a.label in errors
    ]


def _ours_spot_check(frames: list[Any], stream: Stream, problems: list[str]) -> str:
    verdict = (
        f"all {stream.frames} frames equal to what was sent (values, types, horodates)"
        if not problems
        else "MISMATCH: " + "; ".join(problems[:5])
    )
    lines = [f"  ours on {stream.name}: {verdict}"]
    for i in (0, len(frames) // 2, len(frames) - 1):
        if 0 <= i < len(frames):
            f = frames[i]
            shown: dict[str, Any] = {}
            for k in ("PAPP", "HCHC", "HCHP", "BASE", "PTEC", "IINST3", "EAST", "SINSTS", "IRMS1", "LTARF", "NTARF"):
                if k in f.values:
                    shown[k] = f.values[k]
            if "DATE" in f.timestamps:
                shown["DATE"] = f.timestamps["DATE"]
            lines.append(f"    frame {i}: {shown}")
    return "\n".join(lines)


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


def report(results: list[Result], streams: list[Stream], adapters: list[Adapter]) -> tuple[str, bool]:
    """The main table and the verdict on the issue's two targets."""
    rows = [
        [
            "stream",
            "decoder",
            "frames/s",
            "MB/s",
            "median fr/s",
            "ours x",
            "frames out",
            "values ok",
        ]
    ]
    verdicts: list[str] = []
    all_met = True
    for stream in streams:
        mine = [r for r in results if r.stream is stream]
        ours = next((r for r in mine if r.adapter.reference and not r.error), None)
        for r in mine:
            if r.error:
                rows.append([stream.name, r.adapter.label, "error", "", "", "", "", r.error[:60]])
                continue
            ratio = "" if ours is None or r is ours else f"{ours.fps() / r.fps():.1f}x"
            rows.append(
                [
                    stream.name,
                    r.adapter.label,
                    f"{r.fps():,.0f}",
                    f"{r.mbps:.2f}",
                    f"{r.fps(r.median):,.0f}",
                    ratio,
                    f"{r.check.frames}/{stream.frames}",
                    f"{r.check.values_share(stream):.0%}",
                ]
            )
        if ours is None:
            all_met = False
            verdicts.append(f"  {stream.name}: our decoder did not run")
            continue
        if ours.exact:
            all_met = False
            verdicts.append(f"  {stream.name}: OUR DECODER'S OUTPUT DIFFERS FROM WHAT WAS SENT: {ours.exact[0]}")
        ran = [r for r in mine if r.adapter.pypi and not r.error]
        sane = [r for r in ran if r.check.values_share(stream) >= SANE_SHARE]
        if sane:
            fastest = max(sane, key=lambda r: r.fps())
            x = ours.fps() / fastest.fps()
            met = x >= 5
            all_met &= met
            verdicts.append(
                f"  {stream.name}: ours {x:.2f}x the fastest sane PyPI decoder ({fastest.adapter.label}): "
                f"{'met' if met else 'MISSED'} (target >= 5x)"
            )
            verdicts.extend(
                f"    (faster but not sane: {r.adapter.label}, ours {ours.fps() / r.fps():.1f}x; it returns "
                f"{r.check.values_share(stream):.0%} of the values, skipping frames; per frame it returns, ours "
                f"{ours.fps() / (r.fps() * max(r.check.matched, 1) / stream.frames):.1f}x)"
                for r in ran
                if r not in sane and r.fps() > fastest.fps()
            )
        elif ran:
            verdicts.append(f"  {stream.name}: no PyPI decoder returned >= {SANE_SHARE:.0%} of the values")
        elif any(a.pypi for a in adapters):
            verdicts.append(f"  {stream.name}: no installed PyPI decoder decodes {stream.mode} mode (see the probe)")
        else:
            verdicts.append(f"  {stream.name}: no PyPI decoder installed (pip install -r bench/requirements.txt)")
        nocache = next((r for r in mine if isinstance(r.adapter, OursNoCacheAdapter) and not r.error), None)
        enedis = next((r for r in mine if r.adapter.name == "enedis-tic" and not r.error), None)
        if nocache is not None and enedis is not None:
            x = nocache.fps() / enedis.fps()
            if enedis.check.values_share(stream) >= SANE_SHARE:
                met = x >= 2
                all_met &= met
                verdicts.append(
                    f"  {stream.name}: ours without the line memo {x:.2f}x enedis-tic: "
                    f"{'met' if met else 'MISSED'} (target >= 2x)"
                )
            else:
                verdicts.append(f"  {stream.name}: ours without the line memo {x:.2f}x enedis-tic (not sane here)")
        line = next((r for r in mine if isinstance(r.adapter, LineByLineAdapter) and not r.error), None)
        if line is not None:
            x = ours.fps() / line.fps()
            met = x > 1
            all_met &= met
            verdicts.append(
                f"  {stream.name}: ours {x:.2f}x the line-by-line script: {'met' if met else 'MISSED'} (target > 1x)"
            )
    return _table(rows, right={2, 3, 4, 5, 6, 7}) + "\n\nTargets:\n" + "\n".join(verdicts), all_met


def _child_cpu(argv: list[str], stdout: Any) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``argv`` as a separate process."""
    import resource
    import subprocess

    # Compiled modules cached as on an installed system (the caller's first run writes them; a shell with
    # PYTHONDONTWRITEBYTECODE would otherwise make every run compile its modules again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=stdout, stderr=subprocess.DEVNULL, check=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def whole_process(streams: list[Stream], results: list[Result], repeat: int) -> tuple[str, bool]:
    """``teleinfo decode FILE`` as a user runs it (a new process, JSON lines out to /dev/null): MB/s of CPU time,
    best of ``repeat``, against enedis-tic in this process (the issue's yardstick) and as a whole process too
    (``peers/enedis_tic_process.py``: its decoding plus json.dumps of each frame).  Target: at least 3x."""
    import tempfile

    enedis = {r.stream.name: r for r in results if r.adapter.name == "enedis-tic" and not r.error}
    has_enedis = bool(enedis)
    rows = [["stream", "teleinfo decode MB/s", "enedis-tic in process", "ratio", "enedis-tic process", "ratio"]]
    verdicts = []
    met = True
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "wb") as null:
        for stream in streams:
            path = Path(tmp) / f"{stream.name.replace(' ', '_')}.bin"
            path.write_bytes(stream.data)
            size = len(stream.data) / 1e6
            argv = [sys.executable, "-m", "appliance", "decode", str(path)]
            ours = min(_child_cpu(argv, null)[0] for _ in range(repeat + 1))  # the first one writes the .pyc
            row = [stream.name, f"{size / ours:.1f}"]
            peer = enedis.get(stream.name)
            if peer is not None:
                theirs = min(
                    _child_cpu([sys.executable, str(BENCH / "peers" / "enedis_tic_process.py"), str(path)], null)[0]
                    for _ in range(repeat + 1)
                )
                x_in, x_proc = (size / ours) / peer.mbps, (size / ours) / (size / theirs)
                row += [f"{peer.mbps:.1f}", f"{x_in:.1f}x", f"{size / theirs:.1f}", f"{x_proc:.1f}x"]
                sane = peer.check.values_share(stream) >= SANE_SHARE
                if sane:
                    met &= x_in >= 3
                verdicts.append(
                    f"  {stream.name}: teleinfo decode {x_in:.2f}x enedis-tic in process, {x_proc:.2f}x as a process"
                    + (f": {'met' if x_in >= 3 else 'MISSED'} (target >= 3x)" if sane else " (enedis-tic not sane)")
                )
            else:
                row += ["-", "", "-", ""]
            rows.append(row)
    note = "" if has_enedis else "\n  (enedis-tic not installed: pip install -r bench/requirements.txt)"
    return _table(rows, right={1, 2, 3, 4, 5}) + "\n\nTargets (whole process):\n" + "\n".join(verdicts) + note, met


def profile_ours(streams: list[Stream], chunk_size: int, top: int) -> str:
    """cProfile of our decoder on each stream, sorted by own time: where a missed target should be looked at."""
    from appliance.tic import Decoder

    out = io.StringIO()
    for stream in streams:
        chunks = chunked(stream.data, chunk_size)
        decoder = Decoder("auto")
        prof = cProfile.Profile()
        prof.enable()
        for c in chunks:
            decoder.feed(c)
        prof.disable()
        out.write(f"\n--- cProfile, ours, {stream.name} ({stream.frames} frames) ---\n")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, generate the streams, probe, time, print; exit 1 if a target is missed (for CI use)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small streams, 2 repetitions: a few seconds")
    ap.add_argument("--hist-frames", type=int, help="frames per historique stream (default 20000; quick 1000)")
    ap.add_argument("--std-frames", type=int, help="frames per standard stream (default 10000; quick 500)")
    ap.add_argument("--repeat", type=int, help="repetitions per decoder (default 7; quick 2)")
    ap.add_argument("--chunk-size", type=int, default=4096, help="bytes per read (default 4096)")
    ap.add_argument("--only", action="append", default=[], help="only decoders whose name contains this")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of our decoder per stream")
    ap.add_argument("--no-process", action="store_true", help="skip the whole-process `teleinfo decode FILE` table")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed or our output is wrong")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: the decoding thread's CPU time (default; steady on a busy machine); wall: elapsed time",
    )
    args = ap.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    hist_n = args.hist_frames or (1000 if args.quick else 20000)
    std_n = args.std_frames or (500 if args.quick else 10000)
    repeat = args.repeat or (2 if args.quick else 7)

    def log(msg: str) -> None:
        print(msg, flush=True)

    py = f"{platform.python_version()} ({platform.python_implementation()})"
    log(f"Python {py} on {platform.machine()}; clock: {args.clock}")
    adapters: list[Adapter] = []
    for adapter in all_adapters():
        if args.only and not any(s in adapter.name for s in args.only) and not adapter.reference:
            continue
        try:
            adapter.load()
        except Unavailable as e:
            log(f"skipped: {adapter.name}: {e}")
            continue
        adapters.append(adapter)

    t0 = time.perf_counter()
    streams = make_streams(hist_n, std_n)
    log(f"generated {len(streams)} streams in {time.perf_counter() - t0:.1f} s:")
    for s in streams:
        log(f"  {s.name:<16} {s.frames:>6} frames  {len(s.data) / 1e6:6.2f} MB  {s.values / s.frames:.1f} groups/frame")

    log("\nWhat each decoder drives:")
    for a in adapters:
        log(f"  {a.label:<34} modes: {', '.join(a.modes):<21} {a.drives}")

    log("\nProbe (40 frames of each stream, untimed; shows which modes each decoder really handles):")
    small = make_streams(40, 40, seed=7)
    verdicts = probe(adapters, small, args.chunk_size)
    for a in adapters:
        for s in small:
            claimed = "claimed" if s.mode in a.modes else "not claimed"
            log(f"  {a.label:<34} {s.name:<16} ({claimed:<11}) {verdicts[(a.label, s.name)]}")

    log(f"\nTiming: {repeat} repetitions, {args.chunk_size}-byte chunks, best and median kept")
    results: list[Result] = []
    for stream in streams:
        results.extend(measure(adapters, stream, repeat, args.chunk_size, log))

    text, met = report(results, streams, adapters)
    log("")
    log(text)
    if not args.no_process:
        log("\nWhole process: `teleinfo decode FILE > /dev/null`, CPU time of the process, best of the repetitions:")
        text, process_met = whole_process(streams, results, repeat)
        met &= process_met
        log(text)
    if args.profile:
        log(profile_ours(streams, args.chunk_size, top=15))
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
