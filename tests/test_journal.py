"""The raw capture journal: batched writes, rotation, retention, torn tails, disk errors, and the service's wiring."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from appliance.journal import Journal, JournalConfig, JournalError, _members, read_segment, segment_files
from appliance.schema import Config
from appliance.service import Service
from appliance.stats import Stats
from appliance.tic import Decoder, Frame

from .util import mount_tmpfs, wait_until

T0 = 1_764_000_000.0  # a whole hour (UTC): 2025-11-24T16:00:00Z


def chunks(n: int, size: int = 100, t0: float = T0, dt: float = 0.5) -> list[tuple[float, bytes]]:
    """``n`` distinct chunks, ``dt`` seconds apart, with times that are not round numbers."""
    return [(t0 + i * dt + 0.123456789, bytes([i % 251]) * (size - 4) + i.to_bytes(4, "big")) for i in range(n)]


def all_chunks(directory: Path) -> list[tuple[float, bytes]]:
    return [c for p in segment_files(directory) for c in read_segment(p).chunks]


def test_chunks_are_buffered_and_written_in_one_member_per_flush(tmp_path: Path) -> None:
    cfg = JournalConfig(enabled=True, flush_interval=3600, flush_kb=64)
    j = Journal(cfg, tmp_path, "historique")
    j.start()
    data = chunks(200)  # 20 kB: under flush_kb, so nothing may touch the disk before close()
    for t, d in data:
        j.append(d, t)
    time.sleep(0.2)
    assert segment_files(tmp_path) == []
    j.close()
    [seg] = segment_files(tmp_path)
    assert len(list(_members(seg.read_bytes()))) == 1  # one write for the whole batch
    s = read_segment(seg)
    assert s.chunks == data  # bytes and float times exactly as appended
    assert (s.mode, s.seq, s.truncated) == ("historique", 0, False)
    assert gzip.decompress(seg.read_bytes())[:1] == b"H"  # plain gzip: zcat reads it


def test_flush_kb_and_interval_trigger_writes(tmp_path: Path) -> None:
    j = Journal(JournalConfig(enabled=True, flush_interval=3600, flush_kb=4), tmp_path, "auto")
    j.start()
    for t, d in chunks(50):  # 5 kB > 4 kB: the thread writes without waiting for the interval
        j.append(d, t)
    wait_until(lambda: j.written >= 40, 5)
    j.close()
    j2 = Journal(JournalConfig(enabled=True, flush_interval=0.1, flush_kb=4096), tmp_path / "b", "auto")
    j2.start()
    j2.append(b"x", T0)
    wait_until(lambda: j2.written == 1, 5)  # a little data is written once the interval has passed
    j2.close()
    assert all_chunks(tmp_path) == chunks(50) and all_chunks(tmp_path / "b") == [(T0, b"x")]


def test_rotation_by_time_slot_and_by_size(tmp_path: Path) -> None:
    cfg = JournalConfig(enabled=True, segment_seconds=3600, flush_interval=3600, flush_kb=1)
    j = Journal(cfg, tmp_path / "hourly", "standard")
    j.start()
    data = chunks(30, t0=T0 + 3000, dt=60)  # 30 minutes across an hour boundary: two segments
    for t, d in data:
        j.append(d, t)
    j.close()
    segs = [read_segment(p) for p in segment_files(tmp_path / "hourly")]
    assert [s.seq for s in segs] == [0, 1] and len({s.session for s in segs}) == 1
    assert all(int(t // 3600) == int(s.chunks[0][0] // 3600) for s in segs for t, _ in s.chunks)
    assert [c for s in segs for c in s.chunks] == data

    big = [(T0 + i, os.urandom(4000)) for i in range(30)]  # incompressible: 120 kB
    j = Journal(replace(cfg, segment_max_mb=0.02), tmp_path / "sized", "standard")
    j.start()
    for t, d in big:
        j.append(d, t)
    j.close()
    files = segment_files(tmp_path / "sized")
    assert len(files) >= 5 and all(p.stat().st_size < 0.02e6 + 10_000 for p in files)
    assert all_chunks(tmp_path / "sized") == big


def test_retention_by_age_and_total_size(tmp_path: Path) -> None:
    old = tmp_path / "tic-20200101T000000Z-00000000-0000.gz"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    foreign = tmp_path / "notes.txt"  # not a segment: never touched
    foreign.write_text("keep me")
    cfg = JournalConfig(enabled=True, flush_kb=1, segment_max_mb=0.1, max_total_mb=1, keep_days=31)
    j = Journal(cfg, tmp_path, "auto")
    j.start()
    for i in range(60):  # 2.4 MB incompressible, in 100 kB segments: the oldest go beyond 1 MB
        j.append(os.urandom(40_000), T0 + i)
    j.close()
    files = segment_files(tmp_path)
    assert not old.exists() and foreign.read_text() == "keep me"
    closed = sum(p.stat().st_size for p in files[:-1])
    assert closed <= 1e6 and len(files) < 24
    assert read_segment(files[-1]).chunks[-1][0] == T0 + 59  # the newest data is what is kept


def test_a_torn_tail_loses_only_the_last_flush(tmp_path: Path) -> None:
    j = Journal(JournalConfig(enabled=True, flush_kb=1), tmp_path, "historique")
    j.start()
    first = chunks(20, size=200)
    for t, d in first:
        j.append(d, t)
    wait_until(lambda: j.written == 20, 5)
    j.close()
    [seg] = segment_files(tmp_path)
    good = seg.read_bytes()
    more = Journal(JournalConfig(enabled=True), tmp_path / "x", "historique")
    more.append(b"lost", T0 + 99)
    more.start()
    more.close()
    [other] = segment_files(tmp_path / "x")
    member = other.read_bytes()
    seg.write_bytes(good + member[: len(member) // 2])  # a power cut in the middle of a write
    s = read_segment(seg)
    assert s.truncated and s.chunks == first
    bogus = tmp_path / "tic-20250101T000000Z-0123abcd-0000.gz"
    bogus.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(JournalError):
        read_segment(bogus)


def test_disk_errors_keep_chunks_in_bounded_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "journal"
    cfg = JournalConfig(enabled=True, flush_interval=0.05, flush_kb=1024, buffer_max_mb=1)
    j = Journal(cfg, d, "auto")
    j.start()
    shutil.rmtree(d)
    d.write_text("a file where the directory was")  # every write now fails (even for root)
    data = [(T0 + i, os.urandom(10_000)) for i in range(150)]  # 1.5 MB: more than buffer_max_mb
    for t, b in data:
        j.append(b, t)
    wait_until(lambda: j.last_error is not None, 5)
    assert j.dropped >= 50 and j.snapshot()["buffered_bytes"] <= 1e6  # type: ignore[operator]
    assert any("cannot write" in r.getMessage() for r in caplog.records)
    d.unlink()
    d.mkdir()
    wait_until(lambda: j.last_error is None and j.snapshot()["buffered_bytes"] == 0, 5)
    j.close()
    assert all_chunks(d) == data[j.dropped :]  # the newest, in order, nothing torn


class _Fixed:
    """A source replaying a capture with no pacing, then stopping the service (the journal's wiring only)."""

    def __init__(self, blobs: list[bytes], stop: threading.Event) -> None:
        self.blobs = list(blobs)
        self.stop = stop

    def read(self) -> bytes:
        if not self.blobs:
            self.stop.set()
            return b""
        return self.blobs.pop(0)

    def frame_ok(self, mode: str) -> None:
        """Nothing to lock."""

    def frame_bad(self) -> None:
        """Nothing to reopen."""

    def close(self) -> None:
        """Nothing to close."""


def test_the_service_journals_every_read_with_the_stamp_its_frames_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime

    from appliance import service as service_module
    from appliance.simulator import PARIS, MeterSimulator

    sim = MeterSimulator(start=datetime(2025, 3, 1, 12, tzinfo=PARIS), mode="standard", phases=3)
    stream = b"".join(f.data for f, _ in zip(sim.frames(step=1.0), range(40), strict=False))
    blobs = [stream[i : i + 333] for i in range(0, len(stream), 333)]
    cfg = Config()
    cfg = replace(
        cfg,
        outputs=replace(cfg.outputs, multicast=replace(cfg.outputs.multicast, enabled=False)),
        health=replace(cfg.health, enabled=False),
        web=replace(cfg.web, enabled=False),
        control=replace(cfg.control, enabled=False),
        state=replace(cfg.state, directory=str(tmp_path)),
        journal=JournalConfig(enabled=True, flush_interval=0.05),
    )
    ticks = iter(T0 + i * 0.37 for i in range(10_000))
    svc = Service(cfg, clock=lambda: next(ticks))
    monkeypatch.setattr(service_module, "build_source", lambda _c, _s, stop: _Fixed(blobs, stop))
    seen: list[Frame] = []
    svc.add_frame_listener(seen.append)
    assert svc.run() == 0
    journal = all_chunks(tmp_path / "journal")
    assert b"".join(d for _, d in journal) == stream
    again: list[Frame] = []
    decoder = Decoder("auto")
    for t, d in journal:
        again.extend(f.received(t) for f in decoder.feed(d))
    assert len(seen) == 40
    assert [(f.values, f.received_at) for f in again] == [(f.values, f.received_at) for f in seen]
    assert svc.stats.snapshot().sections["journal"]["written_chunks"] == len(blobs)  # shown in GET /status


def test_a_failed_fsync_rolls_the_write_back_and_the_chunks_are_written_once(
    tmp_path: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """The SD card fills up between write() and fsync(): the half-written member is cut off again, the chunks stay
    in memory, and once the card has room they land exactly once, in order.  Only a fake disk fails at that point
    on demand: the journal's fsync raises ENOSPC twice, then syncs for real."""
    real_fsync = os.fsync
    failures = [OSError(errno.ENOSPC, "No space left on device")] * 2

    def fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    fake_fsync = mocker.patch("appliance.journal.os.fsync", side_effect=fsync)
    j = Journal(JournalConfig(enabled=True, flush_interval=3600, flush_kb=1024), tmp_path, "historique")
    j.start()  # its own flushes are an hour or a megabyte away: the test flushes by hand
    first, second = chunks(5), chunks(5, t0=T0 + 10)
    for t, d in first:
        j.append(d, t)
    j.flush()  # write() succeeds, fsync() fails: rolled back
    assert j.last_error == "[Errno 28] No space left on device" and j.written == 0
    assert j.snapshot()["buffered_bytes"] == sum(len(d) for _, d in first)
    assert segment_files(tmp_path) == []  # no torn member, and no empty (unreadable) segment left behind
    for t, d in second:
        j.append(d, t)
    j.flush()  # the second failure: still nothing on disk, nothing lost
    assert j.written == 0 and j.last_error is not None
    j.flush()  # room again
    assert j.last_error is None and j.written == 10 and j.snapshot()["buffered_bytes"] == 0
    j.close()
    [segment] = segment_files(tmp_path)
    assert read_segment(segment).seq == 0  # the number of the segment that failed: no gap for replay
    assert all_chunks(tmp_path) == first + second
    assert fake_fsync.call_count >= 3
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1  # logged once, not per retry


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs mounted by the test (root only): a real full disk, ENOSPC from the kernel."""
    disk = tmp_path / "tiny"
    mount_tmpfs(disk, "64k")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.root
def test_a_full_disk_leaves_only_readable_segments_and_the_loss_at_stop_is_logged(
    tiny_disk: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    stats = Stats()
    cfg = JournalConfig(enabled=True, flush_interval=30, flush_kb=8, buffer_max_mb=1)  # flushes by size only
    j = Journal(cfg, tiny_disk, "historique", stats)
    attempts = mocker.spy(j, "_write_some")
    j.start()
    t = T0
    for _ in range(60):  # 120 kB that gzip cannot shrink, on 64 kB: the disk fills up part-way
        j.append(os.urandom(2000), t)
        t += 0.5
        time.sleep(0.01)
    wait_until(lambda: "No space left" in (j.last_error or ""), 10)
    # buffered_bytes follows the buffer while it grows, between two flushes too (a read every 0.1 s)
    first = stats.snapshot().sections["journal"]["buffered_bytes"]
    deadline = time.monotonic() + 3
    while stats.snapshot().sections["journal"]["buffered_bytes"] < first + 10_000:
        assert time.monotonic() < deadline, "buffered_bytes froze"
        j.append(os.urandom(2000), t)
        t += 0.5
        time.sleep(0.1)
    tried = attempts.call_count
    time.sleep(1.0)
    assert attempts.call_count - tried <= 1  # a failing disk is retried on the clock (10 s here), not in a loop
    # Every file the journal left is a readable segment: no empty one after a failed write...
    files = segment_files(tiny_disk)
    assert files and all(p.stat().st_size > 0 for p in files)
    for p in files:
        read_segment(p)
    # ...so teleinfo replay reads the directory without an error.
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "replay", "--dry-run", str(tiny_disk)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    left = len(j._buffer)
    assert left > 0
    j.close()  # the disk is still full: what could not be written is said, with its count
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage() and r.levelname == "ERROR"]
    assert any(f"{left} chunks" in m for m in lost), lost
