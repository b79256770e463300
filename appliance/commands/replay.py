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

Exit status: 0 done, 1 some segments unreadable or the server failed (the ledger keeps what was delivered),
2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from appliance.commands import config_parent

if TYPE_CHECKING:
    from appliance.journal import Segment
    from appliance.outputs.influxdb.config import InfluxConfig
    from appliance.outputs.influxdb.output import InfluxOutput
    from appliance.tic import Frame

GIVE_UP_S: Final = 8.0  # seconds a server may keep failing before the replay stops: one that stays down is an error


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
    p.set_defaults(func=run)


@dataclass
class _Totals:
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
    retries with the worker's backoff).  :meth:`send` hands a batch over and returns once it is delivered; a server
    that stays failing for ``give_up`` seconds ends the replay (the ledger keeps what went through)."""

    def __init__(self, out: InfluxOutput, batch_size: int, give_up: float = GIVE_UP_S) -> None:
        from appliance.outputs.base import OutputWorker
        from appliance.stats import Stats

        self.out = out
        self.stats = Stats()
        self.give_up = give_up
        # The queue holds a whole batch, so nothing is ever dropped: send() waits for each batch to be delivered.
        self.worker = OutputWorker(out, self.stats, queue_size=batch_size, batch_size=batch_size, backoff_max=4.0)
        self.worker.start()

    def send(self, frames: list[Frame]) -> None:
        """Deliver ``frames`` in order; raises :class:`InfluxError` when the server keeps failing."""
        from appliance.outputs.influxdb.output import InfluxError

        for frame in frames:
            self.worker.submit(frame)
        while self.worker.pending:
            o = self.stats.snapshot().outputs[self.worker.name]
            if o.state == "failing" and time.time() - o.since > self.give_up:
                raise InfluxError(f"gave up after {self.give_up:g} s of failures: {o.last_error}")
            time.sleep(0.02)

    @property
    def refused(self) -> int:
        """Frames the server refused for their content (dropped, never retried)."""
        return self.out.rejected

    def close(self) -> None:
        self.worker.stop(2.0)


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
    from appliance.tic import Decoder

    ordered = sorted(segments, key=lambda s: (s.chunks[0][0] if s.chunks else 0.0, s.session, s.seq))
    decoder: Decoder | None = None
    previous: tuple[str, int] | None = None
    for seg in ordered:
        if decoder is None or previous != (seg.session, seg.seq - 1):
            decoder = Decoder(mode or seg.mode)
        previous = (seg.session, seg.seq)
        key = f"{seg.session}-{seg.seq}"
        done, digest = ledger.get(key) if ledger is not None else (0, "")
        if done > len(seg.chunks) or (done and _digest(seg.chunks[:done]) != digest):
            done = 0  # not the segment the ledger knew: everything again
        batch: list[Frame] = []
        for i, (t, data) in enumerate(seg.chunks):
            for frame in decoder.feed(data, t):  # stamped as the service's reader stamps it
                if frame.meter is None:
                    continue  # the service only publishes frames that name their meter
                totals.frames += 1
                if i < done:
                    totals.skipped += 1
                elif out is not None:
                    batch.append(frame)
                if out is not None and len(batch) >= batch_size:
                    out.send(batch)
                    totals.sent += len(batch)
                    batch = []
        if out is not None and batch:
            out.send(batch)
            totals.sent += len(batch)
        totals.segments += 1
        totals.truncated += seg.truncated
        if ledger is not None and len(seg.chunks) > done:
            ledger.put(key, len(seg.chunks), _digest(seg.chunks))


def _target(cfg: InfluxConfig, args: argparse.Namespace) -> InfluxConfig:
    changes = {k: v for k, v in (("url", args.url), ("bucket", args.bucket)) if v}
    return replace(cfg, **changes)


def run(args: argparse.Namespace) -> int:
    from appliance.commands import load_config_or_report
    from appliance.journal import JournalError, read_segment
    from appliance.outputs.influxdb.output import InfluxError, InfluxOutput
    from appliance.redaction import redact_url

    err = sys.stderr
    cfg = load_config_or_report("replay", args.config)
    if cfg is None:
        return 2
    if args.url and not args.url.startswith(("http://", "https://")):
        print(f"teleinfo replay: --url must be an http:// or https:// URL (got {redact_url(args.url)!r})", file=err)
        return 2
    files, missing = _find(args.segments)
    status = 0
    for m in missing:
        print(f"teleinfo replay: no such file or directory: {m}", file=err)
        status = 1
    totals = _Totals()
    segments: list[Segment] = []
    for f in files:
        try:
            seg = read_segment(f)
        except (OSError, JournalError) as e:
            print(f"teleinfo replay: skipped {f}: {e}", file=err)
            totals.unreadable += 1
            status = 1
            continue
        if seg.truncated:
            print(f"teleinfo replay: {f}: torn tail (power cut during a write?): its last flush is lost", file=err)
        segments.append(seg)
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
        out = _Delivery(output, influx.batch_size)
    try:
        replay(segments, out, ledger, mode=args.mode, batch_size=influx.batch_size, totals=totals)
    except InfluxError as e:
        print(f"teleinfo replay: stopped, {e} (run again to continue: the ledger keeps what was sent)", file=err)
        status = 1
    except OSError as e:
        print(f"teleinfo replay: cannot write the ledger: {e} (choose one with --ledger)", file=err)
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
