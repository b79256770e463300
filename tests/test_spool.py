"""The on-disk spool and the durable worker: nothing accepted is lost while a server is down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.outputs.base import OutputWorker
from appliance.outputs.spool import Spool
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
        from appliance.outputs.spool import Spool
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
