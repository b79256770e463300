"""UDP multicast: the output, the JSON parts, ``teleinfo listen``, and delivery to a real InfluxDB.

Network safety: every datagram here leaves through 127.0.0.1 (``IP_MULTICAST_IF``) or inside network
namespaces the test creates and deletes; receivers join on 127.0.0.1 or a namespace's address, never on a real
interface.  Each test uses its own random group and port, so parallel runs and a running appliance never mix.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.lineproto import MAX_DATAGRAM, field_key, frame_time, frame_to_lines, parse_line
from appliance.outputs.base import OutputWorker
from appliance.outputs.multicast.config import MulticastConfig
from appliance.outputs.multicast.output import MulticastOutput
from appliance.outputs.multicast.parts import JsonReassembler, merge_json_parts, split_json
from appliance.outputs.multicast.receiver import open_receiver
from appliance.simulator import PARIS, MeterSimulator
from appliance.stats import Stats
from appliance.tic import HISTORIQUE, STANDARD, Decoder, Frame, Kind

from .netns import VethPair
from .servers import InfluxD, MulticastRelay
from .util import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

pytestmark = pytest.mark.timeout(60)


# --- helpers -----------------------------------------------------------------------------------------------
def unique_group() -> tuple[str, int]:
    """A group and port of our own (239.255.0.0/16, the IPv4 local scope)."""
    return f"239.255.{random.randint(100, 250)}.{random.randint(1, 254)}", free_port(socket.SOCK_DGRAM)


def sim_frames(n: int = 3, **kw: Any) -> list[Frame]:
    """Frames decoded from the simulator's bytes, stamped as the reader would (a second after DATE)."""
    sim = MeterSimulator(start=datetime(2024, 1, 16, 20, 30, tzinfo=PARIS), **kw)
    decoder = Decoder()
    out: list[Frame] = []
    for sf in sim.frames(step=2.0):
        for f in decoder.feed(sf.data):
            date = f.timestamps.get("DATE")
            out.append(f.received((datetime.fromisoformat(date).timestamp() if date else sf.at.timestamp()) + 1.25))
        if len(out) >= n:
            return out[:n]
    raise AssertionError("unreachable")


def big_frame() -> Frame:
    """A three-phase standard producer frame on Tempo: the largest kind (about 3.5 kB of JSON)."""
    return sim_frames(1, mode="standard", phases=3, contract="TEMPO", producer=True)[0]


def mixed_frames() -> list[Frame]:
    return [
        big_frame(),
        *sim_frames(2, mode="historique", phases=1, contract="HCHP", seed=3),
        *sim_frames(1, mode="standard", phases=1, contract="BASE", seed=4),
    ]


def config(group: str, port: int, **kw: Any) -> MulticastConfig:
    kw.setdefault("interface", LOOPBACK)  # tests never use the system's route in the host namespace
    return MulticastConfig(group=group, port=port, **kw)


def drain(sock: socket.socket, quiet: float = 0.3, limit: float = 5.0) -> list[bytes]:
    """Every datagram until ``quiet`` seconds of silence (at most ``limit`` seconds in all)."""
    got: list[bytes] = []
    deadline = time.monotonic() + limit
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            break
    return got


def compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def expected_fields(frame: Frame) -> dict[str, int | str]:
    """The fields DATA_FORMAT.md §2 promises for a frame, typed."""
    table = STANDARD if frame.mode == "standard" else HISTORIQUE
    out: dict[str, int | str] = {}
    for label, value in frame.values.items():
        if label in ("ADCO", "ADSC", "PRM", "DATE"):
            continue
        spec = table.get(label)
        out[field_key(label)] = value if spec is not None and spec.kind is Kind.INT else str(value)
    return out


# --- loopback, no root -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["influx", "json"])
def test_two_receivers_get_every_datagram_exactly_once(fmt: str) -> None:
    group, port = unique_group()
    frames = mixed_frames()
    out = MulticastOutput(config(group, port, format=fmt))
    twin = MulticastOutput(config(group, port, format=fmt))  # same JSON part counter, so the same datagrams
    expected = [p for f in frames for p in twin.payloads(f)]
    r1, r2 = open_receiver(group, port, LOOPBACK), open_receiver(group, port, LOOPBACK)
    with r1, r2:
        out.open()
        try:
            for f in frames:
                out.send(f)
        finally:
            out.close()
        got1, got2 = drain(r1), drain(r2)
    assert got1 == expected
    assert got2 == expected
    assert all(len(d) <= MAX_DATAGRAM for d in expected)
    if fmt == "json":
        assert len(expected) > len(frames)  # the big frame was split
        r = JsonReassembler()
        assert [obj for d in got1 for obj in r.feed(d)] == [f.to_json() for f in frames]


def test_big_json_frame_splits_into_parts_that_merge_back_exactly() -> None:
    frame = big_frame()
    whole = frame.to_json()
    assert len(compact(whole).encode()) > MAX_DATAGRAM
    parts = split_json(whole, MAX_DATAGRAM, seq=7)
    assert len(parts) >= 3
    objs = [json.loads(p) for p in parts]
    for i, (raw, obj) in enumerate(zip(parts, objs, strict=True), 1):
        assert len(raw) <= MAX_DATAGRAM
        assert list(obj)[:4] == ["mode", "meter", "part", "seq"]
        assert (obj["mode"], obj["meter"], obj["part"], obj["seq"]) == ("standard", frame.meter, [i, len(parts)], 7)
    assert len({k for o in objs for k in o.get("values", {})}) == len(whole["values"])
    split = {k for k in whole if sum(k in o for o in objs) >= 2} - {"mode", "meter"}
    assert split and all(isinstance(whole[k], dict) for k in split)  # objects are split by keys, nothing else
    merged = merge_json_parts(list(reversed(objs)))
    assert merged == whole
    assert compact(merged) == compact(whole)  # key order too


@pytest.mark.parametrize("max_bytes", [300, 400, 700, 1000, MAX_DATAGRAM])
def test_json_parts_fit_and_merge_for_every_frame_kind(max_bytes: int) -> None:
    frames = [
        *mixed_frames(),
        *sim_frames(2, mode="historique", phases=3, contract="TEMPO", seed=5),
        *sim_frames(2, mode="standard", phases=3, contract="EJP", seed=6),
    ]
    counts = []
    for frame in frames:
        whole = frame.to_json()
        parts = split_json(whole, max_bytes)
        counts.append(len(parts))
        for p in parts:
            # Only a part holding one single value (a day profile is ~450 bytes) may exceed the limit.
            obj = json.loads(p)
            body = {k: v for k, v in obj.items() if k not in ("mode", "meter", "part", "seq")}
            single = len(body) == 1 and (not isinstance(v := next(iter(body.values())), dict) or len(v) == 1)
            assert len(p) <= max_bytes or single, (len(p), max_bytes, list(body))
        if max_bytes >= 700:
            assert all(len(p) <= max_bytes for p in parts)
        if len(parts) == 1:
            assert json.loads(parts[0]) == whole and "part" not in json.loads(parts[0])
        assert compact(merge_json_parts([json.loads(p) for p in parts])) == compact(whole)
    assert max(counts) > 1  # at every limit some frame (at least the 3.5 kB one) is split: the part checks ran


def test_influx_lines_of_a_split_frame_share_tags_and_timestamp() -> None:
    frame = big_frame()
    full = frame_to_lines(frame, "teleinfo", "ns")
    assert len(full) == 1  # fits one datagram at 1472 bytes
    out = MulticastOutput(config(*unique_group(), precision="ns"), max_datagram=300)
    datagrams = out.payloads(frame)
    assert len(datagrams) >= 3 and all(len(d) <= 300 for d in datagrams)
    points = [parse_line(line) for d in datagrams for line in d.decode().split("\n")]
    assert len(points) >= 3
    stamp = frame_time(frame) * 1_000_000_000
    for p in points:
        assert (p.measurement, p.tags, p.time) == ("teleinfo", {"meter": frame.meter, "mode": "standard"}, stamp)
    merged: dict[str, Any] = {}
    for p in points:
        assert not merged.keys() & p.fields.keys()  # every field in exactly one line
        merged.update(p.fields)
    assert merged == parse_line(full[0]).fields == expected_fields(frame)


def test_frame_without_reception_time_is_stamped_now() -> None:
    frame = Frame("historique", {"ADCO": "012345678901", "PAPP": 750})
    out = MulticastOutput(config(*unique_group(), precision="s"))
    before = int(time.time())
    (datagram,) = out.payloads(frame)
    point = parse_line(datagram.decode())
    assert before <= (point.time or 0) <= time.time() + 1
    assert frame.received_at is None  # the shared frame is not modified


def test_interface_by_name_uses_its_address() -> None:
    group, port = unique_group()
    frame = sim_frames(1, mode="historique")[0]
    with open_receiver(group, port, "lo") as r:  # join by name too
        out = MulticastOutput(config(group, port, interface="lo"))
        out.open()
        try:
            out.send(frame)
        finally:
            out.close()
        r.settimeout(3)
        data, source = r.recvfrom(65535)
    assert source[0] == LOOPBACK  # not 0.0.0.0, which a Linux receiver on a LAN would drop as martian
    assert parse_line(data.decode()).tags["meter"] == frame.meter


def test_sending_without_any_receiver_works() -> None:
    """Nobody listening is no error, and the socket stays usable: a receiver that joins later gets the next frame."""
    group, port = unique_group()
    out = MulticastOutput(config(group, port, format="json"))
    out.open()
    try:
        for f in mixed_frames():
            out.send(f)  # raises OSError if a datagram cannot leave
        with open_receiver(group, port, LOOPBACK) as late:
            last = sim_frames(1, mode="historique")[0]
            out.send(last)
            got = [json.loads(d) for d in drain(late)]
    finally:
        out.close()
    out.close()  # twice is harmless
    assert got == [json.loads(json.dumps(last.to_json()))]  # a historique frame fits in one datagram


@pytest.mark.parametrize(
    ("interface", "errno_", "text"),
    [
        ("nosuchif0", 19, "network interface 'nosuchif0' does not exist"),  # ENODEV
        ("192.0.2.77", 99, "Cannot assign requested address"),  # TEST-NET-1: not an address of this machine
    ],
)
def test_missing_interface_is_a_clear_oserror(interface: str, errno_: int, text: str) -> None:
    out = MulticastOutput(config(*unique_group(), interface=interface))
    with pytest.raises(OSError, match=text) as exc:
        out.open()
    assert exc.value.errno == errno_
    assert interface in str(exc.value)
    with pytest.raises(OSError, match=text):
        out.send(sim_frames(1)[0])  # send() opens on demand and fails the same way


def test_worker_survives_and_reports_a_missing_interface() -> None:
    stats = Stats()
    out = MulticastOutput(config(*unique_group(), interface="nosuchif0"))
    worker = OutputWorker(out, stats, queue_size=5, backoff_initial=0.02, backoff_max=0.1)
    worker.start()
    try:
        for f in sim_frames(8):
            worker.submit(f)
        wait_until(lambda: stats.output("multicast").state == "failing", 5)
        o = stats.output("multicast")
        assert "nosuchif0" in (o.last_error or "") and "does not exist" in (o.last_error or "")
        assert o.dropped == 3 and o.sent == 0  # bounded queue: the oldest frames went
        time.sleep(0.3)
        assert worker._thread.is_alive()  # retrying with backoff, not crashed
    finally:
        assert worker.stop(3)
    assert stats.output("multicast").state == "stopped"


def test_reader_sends_directly_and_a_send_in_progress_never_holds_it_up() -> None:
    """Once the worker delivered a frame, submit() sends the next ones itself (no hand-off); while the worker's
    thread is inside a send (what it does when the socket buffer is full: wait for room), submit() queues instead
    of waiting, and the worker delivers those frames, in order, once it can."""
    group, port = unique_group()
    stats = Stats()
    out = MulticastOutput(config(group, port, format="json"))
    worker = OutputWorker(out, stats, queue_size=10)
    frames = sim_frames(6, mode="historique")
    with open_receiver(group, port, LOOPBACK) as r:
        worker.start()
        try:
            assert worker.submit(frames[0])  # the first goes through the worker: it opens the socket
            wait_until(lambda: stats.output("multicast").state == "up", 5)
            assert not worker.submit(frames[1])  # sent by the caller itself: the worker was not woken
            assert stats.output("multicast").sent == 2
            with out._lock:  # the worker's thread in the middle of a send, holding the socket
                done = threading.Event()
                submitter = threading.Thread(target=lambda: [worker.submit(f) for f in frames[2:5]] and done.set())
                submitter.start()
                submitter.join(10)  # a hang detector: submit() must not wait for the send in progress
                assert done.is_set()
                assert stats.output("multicast").queued == 3 and stats.output("multicast").sent == 2
            wait_until(lambda: stats.output("multicast").sent == 5, 5)  # the worker delivers what was queued
            wait_until(lambda: stats.output("multicast").queued == 0 and worker._direct_ok, 5)
            assert not worker.submit(frames[5])  # and the caller sends directly again
            got = [json.loads(d) for d in drain(r)]
        finally:
            assert worker.stop(3)
    assert got == [json.loads(f.json_bytes()) for f in frames]  # every frame once, in order
    assert stats.output("multicast").failed == 0


def test_direct_send_that_fails_goes_to_the_worker() -> None:
    """An error met by the direct send (here: the socket closed under it) is not the reader's to handle: the frame
    goes to the worker, which meets the error, counts and reports it (best effort: that frame is dropped), reopens
    for the next frame, and hands direct sending back to the reader once it delivered."""
    group, port = unique_group()
    stats = Stats()
    out = MulticastOutput(config(group, port))
    worker = OutputWorker(out, stats, queue_size=10, backoff_initial=0.01, backoff_max=0.02)
    frames = sim_frames(4, mode="historique")
    o = stats.output
    with open_receiver(group, port, LOOPBACK) as r:
        worker.start()
        try:
            worker.submit(frames[0])
            wait_until(lambda: o("multicast").state == "up", 5)
            assert out._sock is not None
            out._sock.close()  # sendto now fails with EBADF
            assert out.send_now(frames[1]) is False  # nothing sent, no exception for the reader
            assert worker.submit(frames[1])  # handed to the worker
            wait_until(lambda: o("multicast").failed == 1, 5)
            assert "Bad file descriptor" in (o("multicast").last_error or "")
            assert worker.submit(frames[2])  # the worker's again until it delivered
            wait_until(lambda: o("multicast").sent == 2 and o("multicast").state == "up", 5)
            assert not worker.submit(frames[3])  # direct again
            got = drain(r)
        finally:
            assert worker.stop(3)
    assert len(got) == 3 and o("multicast").sent == 3


def test_bad_group_and_port_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not a multicast group"):
        open_receiver("10.1.2.3", 4242, LOOPBACK)
    with pytest.raises(ValueError, match="not an IPv4 address"):
        MulticastOutput(MulticastConfig(group="nonsense"))
    with pytest.raises(OSError, match="cannot join"):
        open_receiver("239.255.42.1", free_port(socket.SOCK_DGRAM), "192.0.2.77")


def test_parse_line_reads_back_what_lineproto_writes() -> None:
    frame = Frame(
        "standard",
        {"ADSC": "041876123456", "MSG1": 'PAS DE  "MESSAGE", \\ ok=1', "EAST": 12, "SINST1": "a b,c"},
        received_at=1_700_000_000.7,
    )
    (line,) = frame_to_lines(frame, "tele,info x", "ms")
    p = parse_line(line)
    assert p.measurement == "tele,info x"
    assert p.tags == {"meter": "041876123456", "mode": "standard"}
    assert p.fields == {"msg1": 'PAS DE  "MESSAGE", \\ ok=1', "east": 12, "sinst1": "a b,c"}
    assert p.time == 1_700_000_000_000
    for bad in ("", "m", "m f=", 'm f="x', "m f=1 notatime", "m,t f=1"):
        with pytest.raises(ValueError):
            parse_line(bad)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_reassembler_is_bounded_and_ignores_garbage() -> None:
    clock = FakeClock()
    r = JsonReassembler(max_age=5.0, max_pending=2, clock=clock)
    frame = big_frame().to_json()
    parts = split_json(frame, seq=1)
    n = len(parts)
    # a lost part: the frame waits, then expires
    assert [r.feed(p, "a") for p in parts[:-1]] == [[]] * (n - 1)
    assert r.pending == 1
    clock.t += 6
    assert r.feed(b"garbage", "a") == [] and r.invalid == 1
    assert r.pending == 0 and r.dropped == 1
    # more incomplete frames than max_pending: the oldest go
    for seq in (2, 3, 4):
        r.feed(split_json(frame, seq=seq)[0], "a")
    assert r.pending == 2 and r.dropped == 2
    # parts arriving out of order and interleaved with another sender still complete
    other = split_json(frame, seq=1)
    got = []
    for a, b in zip(reversed(parts), other, strict=True):
        got += r.feed(a, "a") + r.feed(b, "b")
    assert got == [frame, frame]
    # malformed parts and non-objects are counted, never raised
    for bad in (b"[1,2]", b'{"part":[0,1]}', b'{"part":[3,2]}', b'{"part":"1/2"}', b"\xff\xfe"):
        assert r.feed(bad) == []
    assert r.invalid == 6
    assert r.feed(compact({"mode": "historique", "meter": None}).encode()) == [{"mode": "historique", "meter": None}]


def test_reassembler_without_seq_restarts_on_a_repeated_part() -> None:
    frame = big_frame().to_json()
    parts = [json.loads(p) for p in split_json(frame)]
    for p in parts:
        del p["seq"]
    raw = [compact(p).encode() for p in parts]
    r = JsonReassembler()
    r.feed(raw[0])  # the rest of this frame is lost...
    assert [x for p in raw for x in r.feed(p)] == [frame]  # ...and the next one completes cleanly
    assert r.dropped == 1


# --- teleinfo listen ---------------------------------------------------------------------------------------
class Proc:
    """A subprocess whose stdout and stderr are read by threads (no pipe can fill up and block it)."""

    def __init__(self, argv: list[str], cwd: Path = REPO) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        into.extend(line.rstrip("\n") for line in stream)  # list.extend on a generator: one append at a time

    def wait_stderr(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: any(text in line for line in self.err) or self.proc.poll() is not None, timeout)
        assert any(text in line for line in self.err), f"{text!r} not in stderr: {self.err}"

    def finish(self, timeout: float = 20.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.kill()
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its PID
            self.proc.wait(5)


def listen(*args: str, cmd: tuple[str, ...] = ()) -> Proc:
    """``teleinfo listen`` as a subprocess (``cmd`` prefixes it, e.g. with ``ip netns exec NS``)."""
    return Proc([*cmd, sys.executable, "-m", "appliance", "listen", *args])


def send_frames(group: str, port: int, frames: list[Frame], **kw: Any) -> None:
    out = MulticastOutput(config(group, port, **kw))
    out.open()
    try:
        for f in frames:
            out.send(f)
    finally:
        out.close()


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["summary", "raw", "json"])
def test_listen_prints_the_frames_sent(mode: str) -> None:
    group, port = unique_group()
    frames = mixed_frames()
    fmt = "json" if mode == "json" else "influx"
    args = ["--group", group, "--port", str(port), "--interface", LOOPBACK, "--count", str(len(frames))]
    p = listen(*args, "--timeout", "15", *(["--raw"] if mode == "raw" else []))
    try:
        p.wait_stderr("listening on")
        send_frames(group, port, frames, format=fmt)
        assert p.finish() == 0, p.err
    finally:
        p.kill()
    if mode == "json":
        assert p.out == [compact(f.to_json()) for f in frames]
    elif mode == "raw":
        assert p.out == [line for f in frames for line in frame_to_lines(f, "teleinfo", "ns")]
    else:
        assert len(p.out) == len(frames)
        for line, f in zip(p.out, frames, strict=True):
            when = datetime.fromtimestamp(frame_time(f)).strftime("%H:%M:%S")
            assert line.startswith(f"{when} teleinfo meter={f.meter} mode={f.mode}  "), line
            power = ("SINSTS", "sinsts") if f.mode == "standard" else ("PAPP", "papp")
            assert f"{power[1]}={f.values[power[0]]} VA" in line
            assert "fields)" in line


@pytest.mark.slow
@pytest.mark.integration
def test_listen_reports_errors_and_timeouts() -> None:
    group, port = unique_group()
    cases = [
        (["--group", "10.0.0.1"], 2, "teleinfo listen: 10.0.0.1 is not a multicast group"),
        (["--group", group, "--port", str(port), "--interface", "192.0.2.77"], 2, "cannot join"),
        (["--group", group, "--port", str(port), "--interface", "nosuchif0"], 2, "does not exist"),
        (
            ["--group", group, "--port", str(port), "--interface", LOOPBACK, "--count", "2", "--timeout", "0.5"],
            1,
            "timeout: 0 of 2 frames received",
        ),
    ]
    for args, rc, text in cases:
        p = listen(*args)
        assert p.finish(15) == rc, (args, p.err)
        assert p.out == []
        assert any(text in line for line in p.err), (text, p.err)
        assert not any("Traceback" in line for line in p.err)
    # --timeout alone is a normal end
    p = listen("--group", group, "--port", str(port), "--interface", LOOPBACK, "--timeout", "0.3")
    assert p.finish(15) == 0


@pytest.mark.integration
def test_listen_stops_cleanly_on_ctrl_c() -> None:
    group, port = unique_group()
    p = listen("--group", group, "--port", str(port), "--interface", LOOPBACK, "--format", "influx", "--timeout", "30")
    try:
        p.wait_stderr("listening on")
        send_frames(group, port, sim_frames(1, mode="historique"))
        wait_until(lambda: len(p.out) == 1, 10)
        p.proc.send_signal(signal.SIGINT)
        assert p.finish(10) == 0
    finally:
        p.kill()
    assert not any("Traceback" in line for line in p.err), p.err


SENDER = """
import sys
from appliance.outputs.multicast.config import MulticastConfig
from appliance.outputs.multicast.output import MulticastOutput
from appliance.tic import Decoder
group, port, interface, fmt, path, base = sys.argv[1:7]
out = MulticastOutput(MulticastConfig(group=group, port=int(port), interface=interface, format=fmt))
out.open()
frames = Decoder().feed(open(path, "rb").read())
for i, frame in enumerate(frames):
    out.send(frame.received(float(base) + i))
out.close()
print(len(frames))
"""


def raw_capture(tmp_path: Path) -> tuple[Path, list[Frame], float]:
    """The bytes of a few simulated frames (big and small), and those frames as the sender will stamp them."""
    data = b""
    for kw in (
        {"mode": "standard", "phases": 3, "contract": "TEMPO", "producer": True},
        {"mode": "historique", "phases": 1, "contract": "BASE"},
    ):
        sim = MeterSimulator(start=datetime(2024, 1, 16, 20, 30, tzinfo=PARIS), **kw)
        frames = sim.frames(step=2.0)
        data += b"".join(next(frames).data for _ in range(3))
    path = tmp_path / "capture.tic"
    path.write_bytes(data)
    base = 1_705_433_400.5
    frames = Decoder().feed(data)
    return path, [replace(f, received_at=base + i) for i, f in enumerate(frames)], base


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.integration
@pytest.mark.parametrize(("fmt", "by_name"), [("json", False), ("influx", True)])
def test_veth_two_receivers_in_another_namespace(veth_pair: VethPair, tmp_path: Path, fmt: str, by_name: bool) -> None:
    pair = veth_pair
    group, port = unique_group()
    path, frames, base = raw_capture(tmp_path)
    args = ["--group", group, "--port", str(port), "--interface", pair.addr_b, "--format", fmt]
    args += ["--count", str(len(frames)), "--timeout", "20", *(["--raw"] if fmt == "influx" else [])]
    receivers = [listen(*args, cmd=("ip", "netns", "exec", pair.b)) for _ in range(2)]
    try:
        for r in receivers:
            r.wait_stderr("listening on")
        iface = pair.va if by_name else pair.addr_a
        sender = subprocess.run(
            ["ip", "netns", "exec", pair.a, sys.executable, "-c", SENDER, group, str(port), iface, fmt, str(path),
             str(base)],
            capture_output=True, text=True, timeout=20, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert sender.returncode == 0, sender.stderr
        assert sender.stdout.strip() == str(len(frames))
        for r in receivers:
            assert r.finish() == 0, r.err
    finally:
        for r in receivers:
            r.kill()
    if fmt == "json":
        expected = [compact(f.to_json()) for f in frames]
    else:
        expected = [line for f in frames for line in frame_to_lines(f, "teleinfo", "ns")]
    for r in receivers:
        assert r.out == expected  # every frame, once, in order


WORKER = """
import json, subprocess, sys, time
from appliance.outputs.multicast.config import MulticastConfig
from appliance.outputs.base import OutputWorker
from appliance.outputs.multicast.output import MulticastOutput
from appliance.stats import Stats
from appliance.tic import Frame

def wait(pred):
    deadline = time.monotonic() + 10
    while not pred():
        assert time.monotonic() < deadline, "timeout"
        time.sleep(0.01)

def ip(*args):
    subprocess.run(["ip", *args], check=True)

def frame(i):
    return Frame("historique", {"ADCO": "012345678901", "PAPP": i}, received_at=time.time())

stats = Stats()
o = stats.output("multicast")
report = {}
# 1. no interface configured and no multicast route in this namespace: ENETUNREACH at every send
w = OutputWorker(MulticastOutput(MulticastConfig(group=sys.argv[1], port=int(sys.argv[2]))), stats,
                 backoff_initial=0.01, backoff_max=0.02)
w.start()
for i in range(3):
    w.submit(frame(i))
wait(lambda: o.failed == 3)
report["noroute"] = {"failed": o.failed, "sent": o.sent, "state": o.state, "error": o.last_error,
                     "alive": w._thread.is_alive()}
w.stop(2)
# 2. an interface given by name that vanishes, then comes back with a new index
stats = Stats()
o = stats.output("multicast")
ip("link", "add", "x0", "type", "veth", "peer", "name", "x1")
ip("addr", "add", "198.51.100.9/24", "dev", "x0")
ip("link", "set", "x0", "up")
ip("link", "set", "x1", "up")
w = OutputWorker(MulticastOutput(MulticastConfig(group=sys.argv[1], port=int(sys.argv[2]), interface="x0")), stats,
                 backoff_initial=0.01, backoff_max=0.02)
w.start()
w.submit(frame(0))
wait(lambda: o.sent == 1)
ip("link", "del", "x0")
for i in range(2):
    w.submit(frame(i))
wait(lambda: o.failed == 2)
report["vanished"] = {"failed": o.failed, "state": o.state, "error": o.last_error}
ip("link", "add", "x0", "type", "veth", "peer", "name", "x1")
ip("addr", "add", "198.51.100.9/24", "dev", "x0")
ip("link", "set", "x0", "up")
ip("link", "set", "x1", "up")
w.submit(frame(9))
wait(lambda: o.sent == 2)
report["back"] = {"sent": o.sent, "failed": o.failed, "state": o.state}
print(json.dumps(report))
w.stop(2)
"""


def report_in_netns(netns: str, script: str, timeout: float) -> Any:
    """Run ``script`` (given a fresh group and port as arguments) in the namespace; the JSON it prints."""
    group, port = unique_group()
    run = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script, group, str(port)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.root
@pytest.mark.integration
def test_worker_counts_send_failures_and_recovers(netns: str) -> None:
    report = report_in_netns(netns, WORKER, timeout=30)
    noroute = report["noroute"]
    assert (noroute["failed"], noroute["sent"], noroute["state"], noroute["alive"]) == (3, 0, "failing", True)
    assert "Network is unreachable" in noroute["error"] and "system's multicast route" in noroute["error"]
    vanished = report["vanished"]
    assert vanished["failed"] == 2 and vanished["state"] == "failing" and "x0" in vanished["error"]
    assert report["back"] == {"sent": 2, "failed": 2, "state": "up"}


FULL_BUFFER = """
import json, socket, subprocess, sys, tempfile, time
from pathlib import Path
from appliance.outputs.base import Fanout, OutputWorker
from appliance.outputs.mqtt.config import MqttConfig
from appliance.outputs.mqtt.output import MqttOutput
from appliance.outputs.multicast.config import MulticastConfig
from appliance.outputs.multicast.output import SEND_TIMEOUT, MulticastOutput
from appliance.stats import Stats
from appliance.tic import Frame
from tests.mosquitto import Mosquitto, Subscriber
from tests.util import wait_until

def ip(*args):
    subprocess.run(["ip", *args], check=True)

def frame(i):
    return Frame("historique", {"ADCO": "012345678901", "PAPP": i}, received_at=time.time())

ip("link", "add", "x0", "type", "veth", "peer", "name", "x1")
ip("addr", "add", "198.51.100.9/24", "dev", "x0")
ip("link", "set", "x0", "up")
ip("link", "set", "x1", "up")
# 8 kbit/s out of x0, and a queue long enough to hold more than the socket's buffer: that buffer fills for real
subprocess.run(["tc", "qdisc", "add", "dev", "x0", "root", "tbf", "rate", "8kbit", "burst", "1600", "limit", "4000000"],
               check=True)
report = {}
with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
    sub = Subscriber(broker.port, ["t16/#"])
    stats = Stats()
    mc = MulticastOutput(MulticastConfig(group=sys.argv[1], port=int(sys.argv[2]), interface="x0"))
    mq = MqttOutput(MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, client_id="t", base_topic="t16",
                               discovery=False))
    fan = Fanout([OutputWorker(mq, stats), OutputWorker(mc, stats, queue_size=3)])
    fan.start()
    fan.submit(frame(0))
    wait_until(lambda: stats.output("multicast").sent == 1 and stats.output("mqtt").sent == 1, 10)
    with mc._lock:  # fill the output's own socket until the kernel says it is full
        junk = 0
        while True:
            try:
                mc._sock.sendto(b"x" * 1400, (sys.argv[1], int(sys.argv[2])))
                junk += 1
            except BlockingIOError:
                break
    report["junk"] = junk
    t0 = time.monotonic()
    for i in range(1, 11):  # the reader's hand-off, one frame a second on a meter, all at once here
        fan.submit(frame(i))
    report["submit_s"] = time.monotonic() - t0
    report["send_timeout"] = SEND_TIMEOUT
    wait_until(lambda: len(sub.on("t16/012345678901/state")) == 11, 10)
    report["mqtt_at_s"] = time.monotonic() - t0
    report["mqtt"] = [json.loads(p)["values"]["PAPP"] for p in sub.on("t16/012345678901/state")]
    wait_until(lambda: stats.output("multicast").state == "failing", 10)
    o = stats.output("multicast")
    report["full"] = {"sent": o.sent, "failed": o.failed, "dropped": o.dropped, "error": o.last_error}
    subprocess.run(["tc", "qdisc", "del", "dev", "x0", "root"], check=True)  # the link drains: room again
    wait_until(lambda: stats.output("multicast").queued == 0, 10)
    fan.submit(frame(11))
    wait_until(lambda: stats.output("multicast").state == "up", 10)
    o = stats.output("multicast")
    report["back"] = {"sent": o.sent, "failed": o.failed, "dropped": o.dropped}
    fan.stop(3)
    sub.close()
print(json.dumps(report))
"""


@pytest.mark.root
@pytest.mark.integration
def test_full_socket_buffer_delays_neither_the_reader_nor_mqtt(netns: str) -> None:
    """A multicast socket whose buffer is full for real (a link throttled to 8 kbit/s in a namespace): the reader's
    hand-off never waits for it (the direct send sees EAGAIN and queues; the worker waits, up to SEND_TIMEOUT, on
    its own thread), MQTT gets every frame meanwhile, and multicast recovers once the link drains."""
    report = report_in_netns(netns, FULL_BUFFER, timeout=60)
    assert report["junk"] > 0
    # Ten hand-offs took less than one wait for room in the socket (what a reader sending itself would block for).
    assert report["submit_s"] < report["send_timeout"]
    assert report["mqtt"] == list(range(11))  # every frame, in order, while multicast was stuck
    assert report["mqtt_at_s"] < report["send_timeout"]  # MQTT did not wait for the multicast worker either
    full = report["full"]
    assert full["sent"] == 1 and full["failed"] >= 1 and "buffer full" in full["error"]
    assert full["sent"] + full["failed"] + full["dropped"] <= 11  # the rest still queued (bounded at 3)
    back = report["back"]
    assert back["sent"] >= 2 and back["sent"] + back["failed"] + back["dropped"] == 12  # every frame accounted for


# --- a real InfluxDB behind a multicast relay ---------------------------------------------------------------
@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[InfluxD]:
    server = InfluxD()
    try:
        server.start(tmp_path)
        yield server
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.parametrize("relay_kind", ["socat", "python"])
def test_influxd_stores_the_points_sent_to_the_group(influxd: InfluxD, relay_kind: str) -> None:
    group, port = unique_group()
    frames = mixed_frames()
    relay = MulticastRelay(group, port, influxd.udp_port, kind=relay_kind)
    relay.start()
    try:
        send_frames(group, port, frames, format="influx", precision="ns")
        wait_until(lambda: len(influxd.rows("udpdb", "SELECT * FROM teleinfo")) == len(frames), 10)
    finally:
        relay.stop()
    rows = influxd.rows("udpdb", "SELECT * FROM teleinfo")
    by_key = {(r["meter"], r["mode"], r["time"]): r for r in rows}
    assert len(by_key) == len(frames)
    for f in frames:
        if "DATE" in f.timestamps:  # DATA_FORMAT.md §2: the meter's DATE when sane, else the reception time
            stamp = int(datetime.fromisoformat(f.timestamps["DATE"]).timestamp())
        else:
            stamp = int(f.received_at or 0)
        assert frame_time(f) == stamp
        row = by_key[(f.meter, f.mode, stamp * 1_000_000_000)]
        fields = expected_fields(f)
        assert {k: row[k] for k in fields} == fields  # integers as integers, strings as strings
        others = set(row) - set(fields) - {"time", "meter", "mode"}
        assert all(row[k] is None for k in others)
