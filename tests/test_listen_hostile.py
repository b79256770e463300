"""Issue 15 on ``teleinfo listen``: every datagram that used to kill it, the flood that used to fill its memory,
and the escape sequences it used to print raw; then a fuzzer (hypothesis) on the printer itself.  Datagrams go to
a group of our own out of 127.0.0.1 (IP_MULTICAST_IF), never a real interface.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import socket
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.commands import listen as listen_module
from appliance.outputs.multicast.parts import JsonReassembler

from .test_multicast import LOOPBACK, listen, unique_group
from .util import wait_until

pytestmark = pytest.mark.timeout(120)

#: What must never reach a terminal: C0 controls (newlines end lines, they are not inside them), DEL, C1, surrogates.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e]")

VALID_JSON = b'{"mode":"standard","meter":"1","values":{"SINSTS":42},"invalid":[]}'
VALID_LINE = b"teleinfo,meter=1,mode=standard sinsts=42i 17000000%02d"  # % n: each a point of its own

HOSTILE = [
    b"[" * 65_000,  # nested too deep for json (RecursionError)
    b"{" + b'"a":{' * 10_000 + b"}" * 10_000 + b"}",
    b'{"mode":"\\ud800","meter":"\\udc80","values":{"X":"\\udfff"}}',  # lone surrogates, printed to UTF-8
    b"teleinfo,meter=1 sinsts=1i " + b"1" + b"0" * 22,  # 10^22: beyond int64
    b"teleinfo,meter=1 sinsts=1i " + b"9" * 4300,  # 4,300 digits: int() takes it, floats cannot
    b"teleinfo,meter=1 sinsts=1i -9223372036854775808",  # int64, but before year 1
    b'{"part":[1,2],"mode":[1],"meter":{},"seq":0}',  # unhashable mode/meter in a part
    b'{"part":[1,2],"mode":"standard","meter":"1","seq":[0]}',
    b'{"mode":"standard","meter":"\\u001b[2J\\u001b]0;owned\\u0007","values":{"X":"\\u009b31m\\u202eevil"}}',
    b'teleinfo,meter=\x1b[2J sinsts=1i,msg="\x1b]0;owned\x07\xc2\x9b31m" 1700000000',
    b"\x1b[2J\x1b]0;owned\x07 not line protocol",
    b"\xff\xfe\x00 not UTF-8",
    b'{"part":[1,10001],"mode":"s","meter":"1","seq":1}',
]


def sender() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return s


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def assert_safe(lines: list[str]) -> None:
    for line in lines:
        assert not UNSAFE.search(line), ascii(line)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["auto", "json", "influx"])
def test_no_single_datagram_stops_listen_and_nothing_raw_is_printed(fmt: str) -> None:
    group, port = unique_group()
    n = [0]

    def valid() -> bytes:
        n[0] += 1
        return VALID_LINE % (n[0] % 100) if fmt == "influx" else VALID_JSON

    count = 3 * len(HOSTILE)  # more than the valid frames plus the hostile datagrams that are frames too
    p = listen("--group", group, "--port", str(port), "--interface", LOOPBACK, "--format", fmt,
               "--count", str(count), "--timeout", "60")  # fmt: skip
    try:
        p.wait_stderr("listening on")
        s = sender()
        good = 0
        for i, datagram in enumerate(HOSTILE):
            s.sendto(datagram, (group, port))
            time.sleep(0.05)
            s.sendto(valid(), (group, port))  # it is still there, and still prints good frames
            good += 1
            wait_until(lambda g=good: sum("42" in line for line in p.out) >= g or p.proc.poll() is not None, 10)
            assert p.proc.poll() is None, f"died on datagram {i}: {p.err[-5:]}"
        while p.proc.poll() is None:  # the rest of --count: it ends normally
            s.sendto(valid(), (group, port))
            time.sleep(0.01)
        assert p.finish() == 0, p.err
    finally:
        p.kill()
    assert "Traceback" not in "\n".join(p.err), p.err
    assert_safe(p.out)
    assert_safe(p.err)
    assert sum("42" in line for line in p.out) >= len(HOSTILE)


@pytest.mark.integration
@pytest.mark.slow
def test_a_flood_of_json_parts_stays_bounded() -> None:
    group, port = unique_group()
    p = listen("--group", group, "--port", str(port), "--interface", LOOPBACK, "--timeout", "30")
    try:
        p.wait_stderr("listening on")
        time.sleep(0.5)
        base = rss_kib(p.proc.pid)
        s = sender()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        pad = "x" * 60_000
        peak = base
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 5:  # 60 kB parts of frames that never complete, as fast as it reads
            if n % 2:  # the one frame of 10,000 parts, every part of it different
                part = {"mode": "standard", "meter": "1", "part": [n // 2 % 9999 + 1, 10_000], "seq": 0, "pad": pad}
            else:  # and many frames of 64 parts
                part = {"mode": "standard", "meter": "1", "part": [n % 63 + 1, 64], "seq": 1 + n // 63, "pad": pad}
            s.sendto(json.dumps(part).encode(), (group, port))
            n += 1
            if n % 200 == 0:
                peak = max(peak, rss_kib(p.proc.pid))
                time.sleep(0.01)
        peak = max(peak, rss_kib(p.proc.pid))
        assert p.proc.poll() is None
    finally:
        p.kill()
    assert n > 2000
    assert peak - base < 10_000, f"RSS went from {base} to {peak} KiB after {n} parts"


@pytest.mark.slow
def test_incomplete_frames_are_released_while_nothing_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    printers: list[Any] = []
    original = listen_module._Printer.__init__

    def capture(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, **kw)
        self.reassembler.max_age = 0.5
        printers.append(self)

    monkeypatch.setattr(listen_module._Printer, "__init__", capture)
    group, port = unique_group()
    args = argparse.Namespace(
        group=group, port=port, interface=LOOPBACK, fmt="auto", count=None, timeout=4.0, raw=False
    )
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(listen_module.run(args)), daemon=True)
    thread.start()
    wait_until(lambda: printers, 5)
    time.sleep(0.3)
    s = sender()
    for i in range(5):
        s.sendto(json.dumps({"mode": "s", "meter": "1", "part": [1, 3], "seq": i, "pad": "y" * 1000}).encode(),
                 (group, port))  # fmt: skip
    wait_until(lambda: printers[0].reassembler.pending == 5, 5)
    assert printers[0].reassembler.pending_bytes > 5000
    wait_until(lambda: printers[0].reassembler.pending == 0, 3)  # no further datagram: the timer released them
    assert printers[0].reassembler.pending_bytes == 0 and printers[0].reassembler.dropped == 5
    thread.join(10)
    assert done == [0]


def test_reassembler_bounds_bytes_and_parts() -> None:
    r = JsonReassembler(max_pending=100, max_bytes=10_000)
    for seq in range(50):
        r.feed(json.dumps({"mode": "s", "meter": "1", "part": [1, 2], "seq": seq, "pad": "z" * 900}).encode())
    assert r.pending_bytes <= 10_000 and r.pending <= 11 and r.dropped >= 39
    assert r.feed(b'{"mode":"s","meter":"1","part":[1,65],"seq":0}') == [] and r.invalid == 1  # max_parts 64
    assert r.feed(b'{"mode":"s","meter":"1","part":[1,1],"seq":0,"v":1}')[0]["v"] == 1


# --- a fuzzer on the printer -------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
datagrams = st.one_of(
    st.binary(max_size=2000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["mode", "meter", "part", "seq", "values"]), json_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    st.text(max_size=300).map(lambda t: ("teleinfo,meter=1 " + t).encode("utf-8", "surrogatepass")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(datagrams, max_size=8), st.sampled_from(["auto", "json", "influx"]), st.booleans())
def test_the_printer_survives_anything_and_prints_nothing_unsafe(data: list[bytes], fmt: str, raw: bool) -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = listen_module._Printer(fmt, raw, out, err)
    for datagram in data:
        printer.feed(datagram, ("192.0.2.1", 4242))
    printer.flush()
    out.getvalue().encode("utf-8")  # printable on a UTF-8 terminal: no lone surrogate left
    assert_safe(out.getvalue().splitlines())
    assert_safe(err.getvalue().splitlines())
