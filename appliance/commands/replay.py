"""``teleinfo replay``: decode raw journal segments and backfill InfluxDB with the points the service wrote live.

Each chunk is fed to the decoder with its recorded reception time, exactly as the service's reader did, so
every frame gets the same timestamp, tags and fields as live (``appliance/journal.py`` says why).  Segments are
taken in time order; consecutive segments of one journal session share one decoder (a frame may straddle an
hourly rotation), any other boundary starts a fresh one.

Running it twice never duplicates data: InfluxDB keeps one point per series and timestamp, and the points are
identical anyway; and because some servers keep duplicates (VictoriaMetrics without deduplication), a ledger
(``--ledger``, default ``replay-ledger.json`` in the state directory) remembers, per target and segment, how many
chunks were delivered and a hash of them: those are decoded again (the decoder needs them) but not resent, so a
segment still growing is replayed only from where the last run stopped.  ``--force`` ignores the ledger.

Segments are read one at a time, in the order of their names (which begin with their start time), so a month
of journal replays in the memory of one segment; while the server writes a batch the next ones are decoded
(:class:`_Delivery` keeps a few batches in flight).  A segment enters the ledger once every frame of it is
delivered, while the next segments are decoded: waiting for each segment's last write before decoding the next
one left the decoder idle at every segment boundary.  Progress is shown while it runs: a bar on a terminal, a
line every ``PROGRESS_EVERY`` seconds otherwise (journald, a pipe).

Exit status: 0 done, 1 some segments unreadable or the server failed (the ledger keeps what was delivered),
2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from appliance.commands import config_parent
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.journal import Segment
    from appliance.outputs.influxdb.config import InfluxConfig
    from appliance.outputs.influxdb.output import InfluxOutput
    from appliance.tic import Frame

GIVE_UP_S: Final = 8.0  # seconds a server may keep failing before the replay stops: one that stays down is an error
BATCH: Final = 5000  # frames per write: InfluxDB's own advice for bulk writes; VictoriaMetrics takes it as well
IN_FLIGHT_BATCHES: Final = 4  # batches handed to the output worker and not yet delivered while the next are decoded
PROGRESS_EVERY: Final = 10.0  # seconds between two progress lines when stderr is not a terminal
BAR_EVERY: Final = 0.25  # seconds between two redraws of the progress bar on a terminal


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        parents=[config_parent("its [outputs.influxdb] is the target")],
        help="backfill InfluxDB from raw journal segments, with their original times",
        description=(
            "Decode raw journal segments (files, or directories holding them) and write their frames to the "
            "InfluxDB output of the configuration, timestamped as the live service did. Running it again sends "
            "nothing twice (see --ledger). Exit status: 0 done, 1 unreadable segments or server failure, 2 bad "
            "arguments."
        ),
    )
    p.add_argument("segments", nargs="+", metavar="SEGMENT", help="segment file, or directory of segments")
    p.add_argument("--url", help="InfluxDB URL (default: outputs.influxdb.url)")
    p.add_argument("--bucket", help="bucket or database/retention-policy (default: outputs.influxdb.bucket)")
    p.add_argument("--mode", choices=("auto", "historique", "standard"), help="decoder mode (default: as recorded)")
    p.add_argument("--ledger", metavar="PATH", help="what was already replayed (default: in the state directory)")
    p.add_argument("--force", action="store_true", help="resend everything, whatever the ledger says")
    p.add_argument("--dry-run", action="store_true", help="decode and count only; no server, no ledger")
    p.add_argument(
        "--batch-size",
        type=int,
        default=BATCH,
        metavar="N",
        help=f"frames per write (default {BATCH}: a backfill writes larger batches than the live spool's replay)",
    )
    p.set_defaults(func=run)


@dataclass
class _Totals:
    """The counts a replay reports at the end and in its progress."""

    segments: int = 0
    frames: int = 0
    sent: int = 0
    skipped: int = 0
    refused: int = 0
    truncated: int = 0
    unreadable: int = 0


def _digest(chunks: list[tuple[float, bytes]]) -> str:
    h = hashlib.sha256()
    for t, data in chunks:
        h.update(repr(t).encode() + b"\0" + len(data).to_bytes(4, "big") + data)
    return h.hexdigest()


def _find(paths: list[str]) -> tuple[list[Path], list[str]]:
    from appliance.journal import segment_files

    files: list[Path] = []
    missing: list[str] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            files.extend(q for d in [p, *sorted(x for x in p.rglob("*") if x.is_dir())] for q in segment_files(d))
        elif p.is_file():
            files.append(p)
        else:
            missing.append(arg)
    return files, missing


class _Ledger:
    """Per target, per segment (session and seq): chunks delivered and their hash.  Written atomically."""

    def __init__(self, path: Path, target: str, *, ignore_existing: bool = False) -> None:
        self.path = path
        self.target = target
        self.data: dict[str, Any] = {"version": 1, "targets": {}}
        self.ignore_existing = ignore_existing  # --force: resend all, then remember it as usual
        if path.exists():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and isinstance(loaded.get("targets"), dict):
                self.data = loaded

    def get(self, key: str) -> tuple[int, str]:
        if self.ignore_existing:
            return 0, ""
        entry = self.data["targets"].get(self.target, {}).get(key) or {}
        return int(entry.get("chunks", 0)), str(entry.get("sha256", ""))

    def put(self, key: str, chunks: int, digest: str) -> None:
        self.data["targets"].setdefault(self.target, {})[key] = {"chunks": chunks, "sha256": digest}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)


class _Delivery:
    """The live service's own delivery path for the replayed frames: an :class:`OutputWorker` around the
    InfluxDB output (ordered batches, :class:`Rejected` frames counted and skipped, a refused batch bisected,
    retries with the worker's backoff).  :meth:`send` hands a batch over and returns while at most
    ``IN_FLIGHT_BATCHES`` batches wait (the next ones are decoded meanwhile); :meth:`flush` returns once everything
    handed over is delivered.  A server that stays failing for ``give_up`` seconds ends the replay (the ledger
    keeps what went through)."""

    def __init__(self, out: InfluxOutput, batch_size: int, give_up: float = GIVE_UP_S) -> None:
        from appliance.outputs.base import OutputWorker
        from appliance.stats import Stats

        self.out = out
        self.stats = Stats()
        self.give_up = give_up
        self.window = batch_size * IN_FLIGHT_BATCHES
        # The queue holds the window and one more batch, so nothing is ever dropped: send() waits before that.
        self.worker = OutputWorker(
            out, self.stats, queue_size=self.window + batch_size, batch_size=batch_size, backoff_max=4.0
        )
        self.worker.start()
        self.handed = 0  # frames handed over so far

    def send(self, frames: list[Frame]) -> None:
        """Hand ``frames`` over, in order; waits while more than the window is undelivered; raises
        :class:`InfluxError` when the server keeps failing."""
        self.worker.submit_many(frames)
        self.handed += len(frames)
        self._wait(self.window)

    @property
    def settled(self) -> int:
        """How many of the frames handed over are delivered (or refused): the first ``settled``, since the worker
        delivers in order and keeps a frame in its queue until the server has it."""
        return self.handed - self.worker.pending

    def flush(self) -> None:
        """Return once every frame handed over is delivered (or refused); raises like :meth:`send`."""
        self._wait(0)

    def _wait(self, most: int) -> None:
        from appliance.outputs.influxdb.output import InfluxError

        checked = 0.0
        while self.worker.pending > most:
            now = time.monotonic()
            if now - checked >= 0.1:
                checked = now
                o = self.stats.snapshot().outputs[self.worker.name]
                if o.state == "failing" and time.time() - o.since > self.give_up:
                    raise InfluxError(f"gave up after {self.give_up:g} s of failures: {o.last_error}")
            time.sleep(0.002)

    @property
    def refused(self) -> int:
        """Frames the server refused for their content (dropped, never retried)."""
        return self.out.rejected

    def close(self) -> None:
        self.worker.stop(2.0)


class _Progress:
    """How far the replay is, shown while it runs: on a terminal a bar redrawn in place every ``BAR_EVERY``
    seconds; otherwise (journald, a pipe, a file) a line every ``PROGRESS_EVERY`` seconds, so a log shows a count
    that moves.  Measured in bytes of segment files (known before anything is decoded)."""

    def __init__(
        self, total_bytes: int, stream: IO[str], *, tty: bool | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = max(1, total_bytes)
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = clock()
        self.shown = self.started
        self.frames = 0
        self.done = 0.0
        self.drawn = False

    def update(self, frames: int, done_bytes: float) -> None:
        """``frames`` decoded so far, ``done_bytes`` of the segments consumed; shown when due."""
        self.frames, self.done = frames, done_bytes
        now = self.clock()
        if now - self.shown >= (BAR_EVERY if self.tty else PROGRESS_EVERY):
            self.shown = now
            self._show(now)

    def finish(self) -> None:
        """The last state; on a terminal the bar is then ended with a newline."""
        self.done = float(self.total)
        self._show(self.clock())
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, now: float) -> None:
        share = min(1.0, self.done / self.total)
        elapsed = max(1e-9, now - self.started)
        rate = self.frames / elapsed
        eta = elapsed * (1 - share) / share if share > 0 else 0.0
        eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s"
        if self.tty:
            width = 30
            filled = int(share * width)
            bar = "#" * filled + "." * (width - filled)
            text = f"\rreplay [{bar}] {share:4.0%}  {self.frames:,} frames  {rate:,.0f} frames/s  {eta_text} left "
            self.drawn = True
        else:
            text = f"teleinfo replay: {self.frames:,} frames ({share:.0%}), {rate:,.0f} frames/s, {eta_text} left\n"
        self.stream.write(text)
        self.stream.flush()


class _Replayer:
    """Decodes segments in time order and hands their frames over, segment by segment (see :func:`replay`)."""

    def __init__(
        self,
        out: _Delivery | None,
        ledger: _Ledger | None,
        *,
        mode: str | None,
        batch_size: int,
        totals: _Totals,
        progress: _Progress | None = None,
    ) -> None:
        from appliance.tic import Decoder

        self._decoder_cls = Decoder
        self.out = out
        self.ledger = ledger
        self.mode = mode
        self.batch_size = batch_size
        self.totals = totals
        self.progress = progress
        self.decoder: Decoder | None = None
        self.previous: tuple[str, int] | None = None
        self.bytes_done = 0.0  # of the segment files consumed, for the progress
        # Segments handed over and not yet delivered in full, oldest first: the frames handed over until their
        # last one, their own frames, whether torn, and their ledger entry (key, chunks, digest) if any.
        self._unsettled: deque[tuple[int, int, bool, tuple[str, int, str] | None]] = deque()

    def segment(self, seg: Segment, size: int = 0) -> None:
        """Replay one segment (``size``: its file's bytes, for the progress); raises InfluxError when the server
        gives up.  The ledger records it once every frame of it is delivered, while the next segments are
        decoded (:meth:`record_settled`; :meth:`delivering` waits for the last ones)."""
        if self.decoder is None or self.previous != (seg.session, seg.seq - 1):
            self.decoder = self._decoder_cls(self.mode or seg.mode)
        self.previous = (seg.session, seg.seq)
        feed = self.decoder.feed
        totals, out, ledger, progress = self.totals, self.out, self.ledger, self.progress
        key = f"{seg.session}-{seg.seq}"
        done, digest = ledger.get(key) if ledger is not None else (0, "")
        if done > len(seg.chunks) or (done and _digest(seg.chunks[:done]) != digest):
            done = 0  # not the segment the ledger knew: everything again
        batch: list[Frame] = []
        handed = 0
        chunks = len(seg.chunks) or 1
        for i, (t, data) in enumerate(seg.chunks):
            for frame in feed(data, t):  # stamped as the service's reader stamps it
                if frame.meter is None:
                    continue  # the service only publishes frames that name their meter
                totals.frames += 1
                if i < done:
                    totals.skipped += 1
                elif out is not None:
                    batch.append(frame)
                    if len(batch) >= self.batch_size:
                        out.send(batch)
                        handed += len(batch)
                        batch = []
                        self.record_settled()
                        if progress is not None:
                            progress.update(totals.frames, self.bytes_done + size * i / chunks)
        if out is not None and batch:
            out.send(batch)
            handed += len(batch)
        entry = (key, len(seg.chunks), _digest(seg.chunks)) if ledger is not None and len(seg.chunks) > done else None
        self._unsettled.append((out.handed if out is not None else 0, handed, seg.truncated, entry))
        self.record_settled()
        self.bytes_done += size
        if progress is not None:
            progress.update(totals.frames, self.bytes_done)

    def record_settled(self) -> None:
        """Count, and record in the ledger, the segments whose every frame is delivered (all of them when there
        is no server)."""
        settled = self.out.settled if self.out is not None else 0
        totals, ledger, unsettled = self.totals, self.ledger, self._unsettled
        while unsettled and unsettled[0][0] <= settled:
            _, handed, truncated, entry = unsettled.popleft()
            totals.sent += handed
            totals.segments += 1
            totals.truncated += truncated
            if ledger is not None and entry is not None:
                ledger.put(*entry)

    @contextlib.contextmanager
    def delivering(self) -> Iterator[None]:
        """Around one replay's :meth:`segment` calls: at the end, wait until every frame handed over is delivered
        and record the last segments; when the server gives up (here or in a segment), record the segments
        delivered in full before the error goes on, so the ledger keeps them."""
        try:
            yield
            if self.out is not None:
                self.out.flush()
        except ApplianceError:
            self.record_settled()
            raise
        self.record_settled()


def replay(
    segments: list[Segment],
    out: _Delivery | None,
    ledger: _Ledger | None,
    *,
    mode: str | None,
    batch_size: int,
    totals: _Totals,
) -> None:
    """Decode ``segments`` (sorted here) and send their frames; raises InfluxError when the server gives up."""
    replayer = _Replayer(out, ledger, mode=mode, batch_size=batch_size, totals=totals)
    with replayer.delivering():
        for seg in sorted(segments, key=lambda s: (s.chunks[0][0] if s.chunks else 0.0, s.session, s.seq)):
            replayer.segment(seg)


def replay_files(
    files: Iterable[Path],
    out: _Delivery | None,
    ledger: _Ledger | None,
    *,
    mode: str | None,
    batch_size: int,
    totals: _Totals,
    progress: _Progress | None = None,
    err: IO[str] = sys.stderr,
) -> bool:
    """:func:`replay` of segment files read one at a time, in the order of their names (their start time): a
    month of journal in the memory of one segment.  False if some file could not be read (said on ``err``)."""
    from appliance.journal import JournalError, read_segment

    replayer = _Replayer(out, ledger, mode=mode, batch_size=batch_size, totals=totals, progress=progress)
    ok = True
    with replayer.delivering():
        for f in sorted(files, key=lambda p: p.name):
            try:
                size = f.stat().st_size
                seg = read_segment(f)
            except (OSError, JournalError) as e:
                _say(progress, err, f"teleinfo replay: skipped {f}: {e}")
                totals.unreadable += 1
                ok = False
                continue
            if seg.truncated:
                _say(
                    progress,
                    err,
                    f"teleinfo replay: {f}: torn tail (power cut during a write?): its last flush is lost",
                )
            replayer.segment(seg, size)
    if progress is not None:
        progress.finish()
    return ok


def _say(progress: _Progress | None, err: IO[str], message: str) -> None:
    """A message on its own line, even in the middle of a progress bar."""
    if progress is not None and progress.tty and progress.drawn:
        err.write("\n")
        progress.drawn = False
    print(message, file=err)


def _target(cfg: InfluxConfig, args: argparse.Namespace) -> InfluxConfig:
    changes = {k: v for k, v in (("url", args.url), ("bucket", args.bucket)) if v}
    return replace(cfg, **changes)


def run(args: argparse.Namespace) -> int:
    from appliance.commands import load_config_or_report
    from appliance.outputs.influxdb.output import InfluxError, InfluxOutput
    from appliance.redaction import redact_url

    err = sys.stderr
    cfg = load_config_or_report("replay", args.config)
    if cfg is None:
        return 2
    if args.url and not args.url.startswith(("http://", "https://")):
        print(f"teleinfo replay: --url must be an http:// or https:// URL (got {redact_url(args.url)!r})", file=err)
        return 2
    if args.batch_size < 1:
        print(f"teleinfo replay: --batch-size must be at least 1 (got {args.batch_size})", file=err)
        return 2
    batch_size = args.batch_size
    files, missing = _find(args.segments)
    status = 0
    for m in missing:
        print(f"teleinfo replay: no such file or directory: {m}", file=err)
        status = 1
    totals = _Totals()
    influx = _target(cfg.outputs.influxdb, args)
    out: _Delivery | None = None
    ledger: _Ledger | None = None
    if not args.dry_run:
        ledger_path = Path(args.ledger) if args.ledger else Path(cfg.state.directory) / "replay-ledger.json"
        try:
            ledger_path.parent.mkdir(parents=True, exist_ok=True)
            # The ledger names its target without credentials: it is a file anyone reading the state may see.
            ledger = _Ledger(ledger_path, f"{redact_url(influx.url)} {influx.bucket}", ignore_existing=args.force)
        except (OSError, ValueError) as e:
            print(f"teleinfo replay: cannot use the ledger {ledger_path}: {e} (choose one with --ledger)", file=err)
            return 2
        output = InfluxOutput(influx)
        try:
            output.open()  # a server that is not there is said at once, before any work
        except InfluxError as e:
            print(f"teleinfo replay: {e}", file=err)
            return 1
        out = _Delivery(output, batch_size)
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:
            pass
    progress = _Progress(total, err)
    try:
        if not replay_files(
            files, out, ledger, mode=args.mode, batch_size=batch_size, totals=totals, progress=progress, err=err
        ):
            status = 1
    except InfluxError as e:
        _say(progress, err, f"teleinfo replay: stopped, {e} (run again to continue: the ledger keeps what was sent)")
        status = 1
    except OSError as e:
        _say(progress, err, f"teleinfo replay: cannot write the ledger: {e} (choose one with --ledger)")
        status = 1
    finally:
        if out is not None:
            out.close()
            totals.refused = out.refused
    target = "nowhere (dry run)" if out is None else f"{redact_url(influx.url)} bucket {influx.bucket}"
    print(
        f"teleinfo replay: {totals.segments} segment(s), {totals.frames} frame(s) decoded, {totals.sent} sent to "
        f"{target}, {totals.skipped} already replayed, {totals.refused} refused by the server, "
        f"{totals.truncated} torn segment(s), {totals.unreadable} unreadable",
        file=err,
    )
    return status
