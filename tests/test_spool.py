"""The on-disk spool and the durable worker: nothing accepted is lost while a server is down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from appliance.outputs.base import OutputWorker
from appliance.outputs.spool import Spool, fsync_paths
from appliance.stats import Stats
from appliance.tic import Frame

from .util import wait_until


def frame(i: int) -> Frame:
    return Frame(
        "standard",
        {"ADSC": "012345678901", "EAST": i},
        {"DATE": "2024-01-15T08:00:00+01:00"},
        received_at=1_700_000_000.0 + i,
    )


def east(frames: list[Frame]) -> list[int]:
    return [int(f.values["EAST"]) for f in frames]


def test_fifo_in_order_and_files_removed_once_replayed(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", segment_bytes=4096)
    for i in range(200):
        sp.append(frame(i))
    assert len(sp) == 200 and len(list((tmp_path / "s").glob("*.spool"))) > 1
    got: list[int] = []
    while len(sp):
        b = sp.peek(37)
        got += east(b.frames)
        sp.commit(b)
    assert got == list(range(200))
    assert list((tmp_path / "s").iterdir()) == []  # a healthy output leaves nothing on the SD card


def test_records_keep_everything_a_replay_needs(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    f = Frame("historique", {"ADCO": "012345678901", "PAPP": 750}, {}, ["IINST"], False, 1.5, "012345678901")
    sp.append(f)
    assert sp.peek(1).frames == [f]


def test_survives_a_restart_and_partial_commits(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=4096)
    for i in range(100):
        sp.append(frame(i))
    b = sp.peek(10)
    sp.commit(b, 4)  # only 4 delivered before a failure
    del sp  # no close: as if the process died
    again = Spool(tmp_path, segment_bytes=4096)
    assert len(again) == 96
    assert east(again.peek(1000).frames) == list(range(4, 100))


@pytest.mark.integration
def test_a_frame_written_is_never_lost_to_kill_9(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from appliance.outputs.spool import Spool, fsync_paths
        from tests.test_spool import frame
        sp = Spool({str(tmp_path)!r}, segment_bytes=8192, fsync_interval=3600)
        for i in range(500):
            sp.append(frame(i))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert r.returncode == -signal.SIGKILL
    sp = Spool(tmp_path)
    assert east(sp.peek(1000).frames) == list(range(500))


def test_bounded_oldest_dropped_and_counted(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=20_000, segment_bytes=5_000)
    for i in range(1000):
        sp.append(frame(i))
    assert sp.size <= 20_000 + 5_000
    left = east(sp.peek(10_000).frames)
    assert left == list(range(1000 - len(left), 1000))  # the newest are kept, in order
    assert sp.dropped == 1000 - len(left) == 1000 - len(sp)


def test_a_damaged_record_is_skipped_and_counted(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for i in range(3):
        sp.append(frame(i))
    sp.close()
    seg = next(tmp_path.glob("*.spool"))
    lines = seg.read_bytes().split(b"\n")
    lines[1] = b'{"mode":"standard","valu\x00\x00'  # a power cut in the middle of a record
    seg.write_bytes(b"\n".join(lines))
    sp = Spool(tmp_path)
    b = sp.peek(10)
    assert east(b.frames) == [0, 2]
    sp.commit(b)
    assert sp.corrupt == 1 and len(sp) == 0


class Server:
    """A durable output whose server can be switched off and on."""

    name = "db"
    durable = True

    def __init__(self) -> None:
        self.up = True
        self.got: list[int] = []

    def open(self) -> None:
        if not self.up:
            raise ConnectionRefusedError("connection refused")

    def send(self, f: Frame) -> None:
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        self.got.append(int(f.values["EAST"]))

    def close(self) -> None:
        pass


def test_outage_spools_then_replays_everything_in_order(tmp_path: Path) -> None:
    stats, server = Stats(), Server()
    w = OutputWorker(server, stats, spool=Spool(tmp_path), backoff_initial=0.02, backoff_max=0.05, batch_size=7)
    w.start()
    for i in range(10):
        w.submit(frame(i))
    wait_until(lambda: len(server.got) == 10)
    server.up = False
    for i in range(10, 60):
        w.submit(frame(i))
    wait_until(lambda: stats.snapshot().outputs["db"].spooled == 50)
    assert stats.snapshot().outputs["db"].state == "failing"
    server.up = True
    for i in range(60, 70):
        w.submit(frame(i))
    wait_until(lambda: len(server.got) == 70)
    assert server.got == list(range(70))
    wait_until(lambda: stats.snapshot().outputs["db"].state == "up")
    assert stats.snapshot().outputs["db"].spooled == 0
    w.stop(2)
    assert list(tmp_path.iterdir()) == []


def test_restart_during_an_outage_loses_nothing(tmp_path: Path) -> None:
    server = Server()
    server.up = False
    w = OutputWorker(server, Stats(), spool=Spool(tmp_path), backoff_initial=0.02)
    w.start()
    for i in range(30):
        w.submit(frame(i))
    w.stop(2)  # the service stops while the server is down: the queue goes to the spool
    server.up = True
    w2 = OutputWorker(server, Stats(), spool=Spool(tmp_path), backoff_initial=0.02)
    w2.start()
    for i in range(30, 35):
        w2.submit(frame(i))
    wait_until(lambda: len(server.got) == 35)
    assert server.got == list(range(35))
    w2.stop(2)


def test_full_disk_is_a_counted_state_not_a_crash(tmp_path: Path) -> None:
    # The first segment is /dev/full: every write fails with ENOSPC, as on a full SD card.
    os.symlink("/dev/full", tmp_path / "000000000001.spool")
    (tmp_path / "000000000001.spool").unlink()  # recovery must not read it...
    sp = Spool(tmp_path)
    os.symlink("/dev/full", tmp_path / "000000000001.spool")  # ...but the first append opens it
    stats, server = Stats(), Server()
    server.up = False
    w = OutputWorker(server, stats, spool=sp, backoff_initial=0.02, queue_size=20)
    w.start()
    for i in range(50):
        w.submit(frame(i))
    wait_until(lambda: (stats.snapshot().outputs["db"].spool_error or "").find("No space") >= 0)
    o = stats.snapshot().outputs["db"]
    assert o.queued <= 20 and o.dropped >= 30  # kept in memory, bounded, the oldest dropped and counted
    assert w._thread.is_alive()
    server.up = True
    wait_until(lambda: server.got[-1:] == [49])
    w.stop(2)


def test_a_healthy_flow_truncates_one_segment_and_leaves_nothing_at_close(tmp_path: Path) -> None:
    """The write-ahead role: each record consumed as it comes.  The segment is truncated, never recreated, no
    cursor file is written, nothing needs an fsync, and a clean close leaves no file (nor the directory)."""
    d = tmp_path / "s"
    sp = Spool(d, fsync_interval=0.0)
    segments = set()
    for i in range(50):
        end = sp.append(frame(i))
        segments |= {p.name for p in d.glob("*.spool")}
        sp.commit(sp.batch([frame(i)], [end]), keep=True)
        assert len(sp) == 0 and sp.sync_due() == []  # consumed: nothing to fsync, even at once
    assert len(segments) == 1 and [p.stat().st_size for p in d.glob("*.spool")] == [0]
    assert not (d / "cursor").exists()
    sp.close()
    assert not d.exists()


def test_records_that_stay_are_fsynced_once_the_interval_has_passed(tmp_path: Path) -> None:
    sp = Spool(tmp_path, fsync_interval=0.2)
    sp.append(frame(0))
    assert sp.sync_due() == []  # not yet: it may be consumed within the interval
    time.sleep(0.25)
    due = sp.sync_due()
    assert due == list(tmp_path.glob("*.spool"))
    fsync_paths(due)
    assert sp.sync_due() == []  # synced: nothing until the next record
    sp.close()
    assert len(Spool(tmp_path)) == 1  # kept: what stays unconsumed is never removed


def test_a_cursor_left_past_a_truncated_segment_skips_no_new_record(tmp_path: Path) -> None:
    """kill -9 between a cursor update and a truncation: the saved cursor points past the end of the segment."""
    sp = Spool(tmp_path)
    ends = [sp.append(frame(i)) for i in range(3)]
    sp.commit(sp.batch([frame(0)], ends[:1]))  # saves the cursor: two records left
    (tmp_path / "cursor").write_text(f"{ends[2][0]} {ends[2][1] + 500}\n")  # past the end
    seg = next(tmp_path.glob("*.spool"))
    del sp
    os.truncate(seg, 0)
    again = Spool(tmp_path)
    again.append(frame(7))
    assert east(again.peek(10).frames) == [7]


class Hung(Server):
    """A server that takes the first frame and never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send(self, f: Frame) -> None:
        self.release.wait(30)
        super().send(f)


def test_frames_are_on_disk_when_submit_returns_even_while_the_worker_hangs(tmp_path: Path) -> None:
    stats, server = Stats(), Hung()
    w = OutputWorker(server, stats, spool=Spool(tmp_path))
    w.start()
    try:
        for i in range(20):
            w.submit(frame(i))
            # what a process started after a kill -9 would find: every frame handed over, in order
            assert east(Spool(tmp_path).peek(100).frames) == list(range(i + 1))
        assert stats.snapshot().outputs["db"].queued == 0  # nothing only in memory
    finally:
        server.release.set()
        w.stop(2)
    assert server.got == list(range(20))


# --- the RAM tier (systemd's RuntimeDirectory): what a healthy output writes ahead never reaches the card ---------
def on_card(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("*.spool")) if d.exists() else []


def test_hot_a_healthy_flow_writes_nothing_to_the_card(tmp_path: Path) -> None:
    card, ram = tmp_path / "card", tmp_path / "ram"
    sp = Spool(card, hot=ram, fsync_interval=0.0)
    for i in range(30):
        end = sp.append(frame(i))
        sp.commit(sp.batch([frame(i)], [end]), keep=True)
        assert sp.sync_due() == []
    assert on_card(card) == [] and [p.stat().st_size for p in ram.glob("*.spool")] == [0]
    sp.close()
    assert not card.exists() and not ram.exists()


def test_hot_records_that_stay_move_to_the_card_and_come_back_once_replayed(tmp_path: Path) -> None:
    card, ram = tmp_path / "card", tmp_path / "ram"
    sp = Spool(card, hot=ram, fsync_interval=0.1)
    ends = [sp.append(frame(i)) for i in range(3)]
    sp.commit(sp.batch([frame(0)], ends[:1]))  # one delivered, two stay: the cursor is saved (in RAM)
    assert on_card(card) == [] and (ram / "cursor").exists()
    time.sleep(0.15)
    due = sp.sync_due()  # an outage: moved to the card, to be fsynced there
    assert due and all(p.parent == card for p in due) and not list(ram.glob("*.spool"))
    fsync_paths(due)
    sp.append(frame(3))  # written to the card now, behind them
    assert len(on_card(card)) == 1
    # a power cut now (RAM gone) keeps everything but the delivered frame
    shutil.rmtree(ram)
    assert east(Spool(card, hot=ram).peek(10).frames) == [1, 2, 3]
    b = sp.peek(10)
    sp.commit(b)  # replayed: the card is emptied, the next record goes to RAM again
    assert on_card(card) == []
    sp.append(frame(4))
    assert on_card(card) == [] and len(list(ram.glob("*.spool"))) == 1


def test_hot_kill_9_loses_nothing_and_the_next_run_moves_it_to_the_card(tmp_path: Path) -> None:
    card, ram = tmp_path / "card", tmp_path / "ram"
    sp = Spool(card, hot=ram, fsync_interval=3600)
    for i in range(5):
        sp.append(frame(i))
    del sp  # kill -9: RAM survives the process
    again = Spool(card, hot=ram)
    assert east(again.peek(10).frames) == list(range(5))
    assert len(on_card(card)) == 1 and not list(ram.glob("*.spool"))  # old: on the card at once
    again.append(frame(5))  # behind them, on the card
    assert east(again.peek(10).frames) == list(range(6))


def test_hot_a_move_cut_by_a_crash_keeps_the_ram_copy(tmp_path: Path) -> None:
    card, ram = tmp_path / "card", tmp_path / "ram"
    sp = Spool(card, hot=ram)
    for i in range(4):
        sp.append(frame(i))
    seg = next(ram.glob("*.spool"))
    card.mkdir()
    (card / seg.name).write_bytes(seg.read_bytes()[:40])  # the copy was being written when the process died
    del sp
    assert east(Spool(card, hot=ram).peek(10).frames) == list(range(4))  # once each, whole


def test_hot_a_clean_close_keeps_pending_records_on_the_card(tmp_path: Path) -> None:
    card, ram = tmp_path / "card", tmp_path / "ram"
    sp = Spool(card, hot=ram)
    for i in range(3):
        sp.append(frame(i))
    sp.close()
    shutil.rmtree(ram, ignore_errors=True)  # a reboot
    assert east(Spool(card, hot=ram).peek(10).frames) == [0, 1, 2]


def test_hot_that_cannot_be_written_falls_back_to_the_card(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    card, ram = tmp_path / "card", tmp_path / "ram"
    ram.write_text("a file where the directory should be")
    sp = Spool(card, hot=ram)
    sp.append(frame(0))
    assert len(on_card(card)) == 1 and any("writing to" in r.getMessage() for r in caplog.records)
    assert east(sp.peek(5).frames) == [0]


def test_a_full_disk_is_retried_twice_a_second_not_in_a_loop(tmp_path: Path, mocker: MockerFixture) -> None:
    sp = Spool(tmp_path)
    os.symlink("/dev/full", tmp_path / "000000000001.spool")  # every write: ENOSPC
    stats, server = Stats(), Server()
    server.up = False
    w = OutputWorker(server, stats, spool=sp, backoff_initial=5.0, backoff_max=5.0)
    w.start()
    try:
        for i in range(5):
            w.submit(frame(i))
        wait_until(lambda: stats.snapshot().outputs["db"].state == "failing")
        appends = mocker.spy(sp, "append")
        time.sleep(1.0)
        assert appends.call_count <= 3, appends.call_count  # the worker's pause waits while the disk is full
    finally:
        w.stop(2)
