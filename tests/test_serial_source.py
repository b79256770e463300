"""SerialSource against real pseudo-terminals: reading, unplug/replug, the no-data watchdog, auto-detection.

No mock of pyserial: the source opens a real tty (a pty slave behind a by-id-like symlink, see ``ptyutil``), and a
reader thread shaped like the service's loop decodes what it returns and reports verified frames back.  A pty
does not emulate the baud rate, so frames of either mode decode at any speed; what the tests check about speed
is the logic (lock, relock, alternation) and the speed the source actually set on the tty (``termios``).

Tests that are about the passing of time use an injected clock, so they run in well under a second each; the
no-data watchdog and the garbage flood run on the real clock with the shortest allowed timeout (3 s).
"""

from __future__ import annotations

import logging
import random
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.sources.serial.config import SourceConfig
from appliance.sources.serial.source import DETECT_WINDOW, SerialSource
from appliance.stats import Stats
from appliance.tic import Decoder, Frame, encode_frame, encode_group

from .ptyutil import PtyMeter
from .util import wait_until

pytestmark = pytest.mark.timeout(60)

LOGGER = "appliance.sources.serial.source"


# --- meter bytes -------------------------------------------------------------------------------------------
def historique_frame(n: int) -> bytes:
    """A single-phase BASE historique frame whose BASE index is ``n`` (so each frame is identifiable)."""

    def g(label: str, data: str) -> bytes:
        return encode_group("historique", label, data)

    return encode_frame(
        [
            g("ADCO", "021728123456"),
            g("OPTARIF", "BASE"),
            g("ISOUSC", "30"),
            g("BASE", f"{n:09d}"),
            g("PTEC", "TH.."),
            g("IINST", "002"),
            g("IMAX", "090"),
            g("PAPP", "00450"),
            g("HHPHC", "A"),
            g("MOTDETAT", "000000"),
        ]
    )


def standard_frame(n: int) -> bytes:
    """A single-phase standard frame whose EAST index is ``n``."""

    def g(label: str, data: str, horodate: str | None = None) -> bytes:
        return encode_group("standard", label, data, horodate)

    return encode_frame(
        [
            g("ADSC", "021728123456"),
            g("VTIC", "02"),
            g("DATE", "", "E240924225642"),
            g("NGTF", "      BASE      "),
            g("EAST", f"{n:09d}"),
            g("IRMS1", "002"),
            g("URMS1", "231"),
            g("SINSTS", "00450"),
            g("STGE", "003A0001"),
        ]
    )


BAD_FRAME = encode_frame([b"\nXXXX YYYY Z\r"])  # a frame whose only group fails its checksum


# --- harness -----------------------------------------------------------------------------------------------
class RecordingStats(Stats):
    """Stats that also keep the sequence of source states, to check each change is reported once."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[tuple[str, str | None]] = []

    def source(
        self,
        state: str | None = None,
        detail: str | None = None,
        *,
        mode: str | None = None,
        reconnect: bool = False,
        nbytes: int = 0,
    ) -> None:
        super().source(state, detail, mode=mode, reconnect=reconnect, nbytes=nbytes)
        if state is not None:
            self.states.append((state, detail))

    def transitions(self) -> list[str]:
        """The states, with repeats of the same state collapsed."""
        out: list[str] = []
        for state, _ in self.states:
            if not out or out[-1] != state:
                out.append(state)
        return out

    @property
    def src(self) -> dict[str, object]:
        return self.snapshot().source.to_json()


class FakeClock:
    """A monotonic clock the test moves by hand (the source only compares its readings)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Reader:
    """The service's reader loop in miniature: read, decode, report verified and unverified frames."""

    def __init__(self, source: SerialSource, mode: str = "auto") -> None:
        self.source = source
        self.decoder = Decoder(mode)
        self.frames: list[Frame] = []
        self.ok = 0
        self.bad = 0
        self.errors: list[BaseException] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._done.is_set():
                for frame in self.decoder.feed(self.source.read()):
                    if frame.verified:
                        self.ok += 1
                        self.source.frame_ok(frame.mode)
                    else:
                        self.bad += 1
                        self.source.frame_bad()
                    self.frames.append(frame)
        except BaseException as e:  # the source must never raise: keep it for the test to report
            self.errors.append(e)

    def indexes(self) -> list[int]:
        """The identifying index (BASE or EAST) of every verified frame, in order."""
        out = []
        for f in list(self.frames):
            v = f.values.get("BASE", f.values.get("EAST"))
            if isinstance(v, int):
                out.append(v)
        return out

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "read() did not return"
        assert not self.errors, f"the reader loop raised: {self.errors!r}"


@dataclass
class Rig:
    source: SerialSource
    stats: RecordingStats
    stop: threading.Event
    reader: Reader | None = None


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[PtyMeter]:
    with PtyMeter(tmp_path) as m:
        yield m


@pytest.fixture
def rig() -> Iterator[Callable[..., Rig]]:
    """Build a source (and optionally its reader thread); everything is stopped and closed at teardown."""
    rigs: list[Rig] = []

    def make(device: Path | str, *, read: bool = True, clock: Callable[[], float] | None = None, **cfg: object) -> Rig:
        settings: dict[str, object] = {"no_data_timeout": 30.0, "reconnect_max_backoff": 1.0, **cfg}
        config = SourceConfig(device=str(device), **settings)  # type: ignore[arg-type]
        stats = RecordingStats()
        stop = threading.Event()
        kwargs = {} if clock is None else {"clock": clock}
        source = SerialSource(config, stats, stop, **kwargs)  # type: ignore[arg-type]
        r = Rig(source, stats, stop)
        rigs.append(r)
        if read:
            r.reader = Reader(source, config.mode)
        return r

    yield make
    for r in rigs:
        r.stop.set()
        if r.reader is not None:
            r.reader.stop()
        r.source.close()


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


def tty_speed(meter: PtyMeter) -> int:
    """The speed the tty really is set to, read through the test's own slave fd (a termios ``B...`` constant).

    (A pty keeps the speed but forces CS8 and no parity, so the character format is checked on the source's
    pyserial object instead.)
    """
    return termios.tcgetattr(meter.slave)[5]  # type: ignore[no-any-return]


# --- tests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("framing", "bytesize", "parity"), [("7E1", 7, "E"), ("8N1", 8, "N")])
def test_reads_frames_raw_in_the_configured_framing(
    meter: PtyMeter, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture, framing: str, bytesize: int, parity: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    data = b"".join(standard_frame(n) for n in (1, 2, 3))
    meter.write(data)  # before the source opens: the bytes wait in the tty and must not be flushed
    r = rig(meter.path, mode="standard", framing=framing)
    assert r.reader is not None
    wait_until(lambda: r.reader.indexes() == [1, 2, 3], 5)

    assert r.source.first_open.is_set() and r.source.is_open
    assert r.source.state == "open" and r.source.baudrate == 9600
    assert tty_speed(meter) == termios.B9600
    port = r.source._serial
    if messages(caplog, "refuses 7E1"):  # a kernel where even the first 7E1 open of a pty fails: 8N1 it is
        bytesize, parity = 8, "N"
    assert port is not None and (port.bytesize, port.parity, port.stopbits) == (bytesize, parity, 1)
    port_framing = f"{bytesize}{parity}1"
    assert not termios.tcgetattr(meter.slave)[3] & termios.ICANON  # raw: ETX and CR survive (docs/PROTOCOL.md §10.7)
    src = r.stats.src
    assert src["state"] == "open" and src["bytes"] == len(data) and src["mode"] == "standard"
    assert messages(caplog, "opened") == [f"serial {meter.path} ({meter.slave_name}) opened at 9600 Bd {port_framing}"]


@pytest.mark.slow
def test_unplug_and_replug_under_a_by_id_link(
    meter: PtyMeter, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    r = rig(meter.path, mode="historique")
    assert r.reader is not None
    meter.write(b"".join(historique_frame(n) for n in (1, 2, 3)))
    wait_until(lambda: r.reader.indexes() == [1, 2, 3], 5)
    first_node = meter.slave_name

    meter.unplug()
    wait_until(lambda: r.source.state == "lost" and not r.source.is_open, 5)
    # Let a few attempts fail on the missing link (0.5 s, then 1 s apart).
    wait_until(lambda: r.source._failures >= 2, 5)
    assert messages(caplog, "cannot open") == [
        f"cannot open {meter.path}: No such file or directory (retrying every 0.5 to 1 s)"
    ]

    meter.replug()
    assert meter.slave_name != first_node  # the adapter came back as another device node
    sent = list(range(4, 12))
    meter.write(b"".join(historique_frame(n) for n in sent))  # before the source reopens: must all arrive
    wait_until(lambda: r.reader.indexes()[3:] == sent, 8)

    assert r.source.is_open and r.source.state == "open"
    assert len(messages(caplog, "serial device lost")) == 1
    assert len(messages(caplog, "cannot open")) == 1
    (reopened,) = messages(caplog, "reopened after")
    assert meter.slave_name in reopened
    assert r.stats.transitions() == ["starting", "open", "lost", "open"]
    assert r.stats.src["reconnects"] == 1


@pytest.mark.slow
def test_a_by_id_link_repointed_while_open_is_followed(
    tmp_path: Path, meter: PtyMeter, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    r = rig(meter.path, mode="standard")
    assert r.reader is not None
    meter.write(standard_frame(1))
    wait_until(lambda: r.reader.indexes() == [1], 5)
    # Another device takes the link over while the old one stays alive (no EIO ever comes from it).
    with PtyMeter(tmp_path, meter.path.name) as other:
        other.write(standard_frame(2))
        wait_until(lambda: r.reader.indexes() == [1, 2], 8)
        assert messages(caplog, "serial device lost") == [
            f"serial device lost: {meter.path}: {meter.path} now points to {other.slave_name} (retrying)"
        ]
        assert r.stats.src["reconnects"] == 1


@pytest.mark.slow
def test_no_data_timeout_reopens_and_recovers(
    meter: PtyMeter, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    r = rig(meter.path, mode="standard", no_data_timeout=3.0)
    assert r.reader is not None
    meter.write(standard_frame(1))
    wait_until(lambda: r.reader.indexes() == [1], 5)

    # Two silent periods: two reopens, one warning.
    wait_until(lambda: r.stats.src["reconnects"] >= 2, 12)
    assert r.source.state == "no_data" and r.stats.src["state"] == "no_data"
    assert messages(caplog, "no valid frame for") == [f"no valid frame for 3 s on {meter.path}; reopening"]
    wait_until(lambda: r.source.is_open, 2)

    meter.write(standard_frame(2))
    wait_until(lambda: r.reader.indexes() == [1, 2], 5)
    assert r.source.state == "open"
    assert len(messages(caplog, "valid frames again")) == 1
    assert r.stats.transitions() == ["starting", "open", "no_data", "open"]


def test_auto_locks_on_the_first_verifying_mode_and_remembers_it(
    meter: PtyMeter, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = FakeClock()
    r = rig(meter.path, mode="auto", clock=clock)
    assert r.reader is not None
    wait_until(lambda: r.source.is_open, 5)
    assert r.source.baudrate == 9600 and r.source.mode is None  # nothing known yet: standard first
    assert r.stats.src["mode"] is None

    meter.write(b"".join(historique_frame(n) for n in (1, 2, 3)))
    wait_until(lambda: r.reader.indexes() == [1, 2, 3], 5)
    assert r.source.mode == "historique" and r.source.baudrate == 1200
    assert tty_speed(meter) == termios.B1200
    assert r.stats.src["mode"] == "historique"
    assert len(messages(caplog, "detected")) == 1  # once, not per frame

    # Locked: the detection windows no longer apply.
    clock.advance(DETECT_WINDOW[1200] + DETECT_WINDOW[9600] + 1)
    meter.write(historique_frame(4))
    wait_until(lambda: r.reader.indexes() == [1, 2, 3, 4], 5)
    assert r.source.baudrate == 1200

    # Unplug, replug: the remembered mode's speed is the one the port reopens at.
    meter.unplug()
    wait_until(lambda: r.source.state == "lost", 5)
    meter.replug()
    clock.advance(5)  # past any backoff
    wait_until(lambda: r.source.is_open, 5)
    assert r.source.baudrate == 1200 and tty_speed(meter) == termios.B1200


@pytest.mark.slow
def test_auto_alternates_speeds_and_relocks_when_the_meter_switches_mode(
    meter: PtyMeter, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = FakeClock()
    # 12 s: longer than one 9600 + 1200 detection cycle (9 s), so the first part sees no no-data reopen.
    r = rig(meter.path, mode="auto", clock=clock, no_data_timeout=12.0)
    assert r.reader is not None
    wait_until(lambda: r.source.is_open, 5)

    # Unlocked: 9600 Bd for its window, then 1200 Bd for its window, then 9600 again.
    assert r.source.baudrate == 9600
    clock.advance(DETECT_WINDOW[9600])
    wait_until(lambda: r.source.baudrate == 1200, 2)
    assert tty_speed(meter) == termios.B1200
    clock.advance(DETECT_WINDOW[1200])
    wait_until(lambda: r.source.baudrate == 9600, 2)
    assert r.stats.src["reconnects"] == 0  # switching speed is not a reopen

    # Frames that arrive but never verify are evidence of the wrong speed: switch before the window ends.
    meter.write(BAD_FRAME + BAD_FRAME)
    wait_until(lambda: r.source.baudrate == 1200, 5)
    assert r.reader.bad == 2 and r.source.mode is None

    meter.write(historique_frame(1))
    wait_until(lambda: r.source.mode == "historique", 5)

    # The meter is reprogrammed to standard.  On a real line nothing verifies at 1200 Bd any more: after
    # no_data_timeout the port is reopened, the remembered mode first, then the other speed.
    clock.advance(12.0)
    wait_until(lambda: r.source.state == "no_data" and r.source.is_open, 5)
    assert r.source.mode is None and r.source.baudrate == 1200 and r.stats.src["reconnects"] == 1
    clock.advance(DETECT_WINDOW[1200])
    wait_until(lambda: r.source.baudrate == 9600, 5)
    meter.write(standard_frame(2))
    wait_until(lambda: r.source.mode == "standard", 5)
    assert r.source.state == "open" and r.stats.src["mode"] == "standard"
    assert tty_speed(meter) == termios.B9600

    # A verified frame of the other mode relocks at once (a pty decodes both modes at any speed).
    meter.write(historique_frame(3))
    wait_until(lambda: r.source.mode == "historique" and r.source.baudrate == 1200, 5)
    assert messages(caplog, "TIC mode standard detected") == [
        f"TIC mode standard detected on {meter.path} (was historique); locked at 9600 Bd"
    ]
    assert messages(caplog, "TIC mode changed from standard to historique")
    assert r.reader.indexes() == [1, 2, 3]


@pytest.mark.slow
def test_garbage_flood_never_raises_and_keeps_reopening(
    meter: PtyMeter, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    r = rig(meter.path, mode="standard", no_data_timeout=3.0)
    assert r.reader is not None
    done = threading.Event()

    def flood() -> None:
        rng = random.Random(42)
        while not done.is_set():
            chunk = bytearray(rng.randbytes(96))
            chunk[rng.randrange(96)] = 0x02  # plenty of frame starts and ends, so "frames" do come
            chunk[rng.randrange(96)] = 0x03
            try:
                meter.write_paced(bytes(chunk), 9600)
            except (TimeoutError, OSError):
                return

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    try:
        wait_until(lambda: r.stats.src["reconnects"] >= 2, 15)
    finally:
        done.set()
        writer.join(5)
    assert not r.reader.errors
    assert r.reader.ok == 0 and r.reader.bad > 0
    assert r.stats.src["bytes"] > 0 and r.source.state == "no_data"
    assert len(messages(caplog, "no valid frame for 3 s")) == 1
    wait_until(lambda: r.source.is_open, 2)  # still up, still trying


@pytest.mark.slow
def test_missing_device_retries_quietly_and_stops_promptly(
    tmp_path: Path, rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    device = tmp_path / "ttyUSB-nothing"
    r = rig(device, read=False)

    def read_once() -> bool:
        assert r.source.read() == b""
        return r.source._failures >= 3

    wait_until(read_once, 10)  # attempts at 0, 0.5 and 1.5 s
    assert messages(caplog, "cannot open") == [
        f"cannot open {device}: No such file or directory (retrying every 0.5 to 1 s)"
    ]
    assert not r.source.first_open.is_set() and not r.source.is_open
    assert r.source.state == "lost" and r.stats.src["state"] == "lost"
    assert r.stats.transitions() == ["starting", "lost"]

    # A read waiting for the next attempt returns as soon as stop is set, and every later one at once.
    returned = threading.Event()

    def reader() -> None:
        while not r.stop.is_set():
            r.source.read()
        returned.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.1)  # let it get into the wait (not a timing assertion)
    r.stop.set()
    assert returned.wait(2)
    assert r.source.read() == b""

    r.source.close()
    assert r.source.state == "closed" and r.stats.src["state"] == "closed"
    assert r.source.read() == b""


@pytest.mark.parametrize(
    ("tree", "opened", "detail"),
    [
        # The header UART of Debian's Pi 3 device tree: the mini UART, ttyS1, 8N1 (no such tty on this machine).
        ("debian-pi3b", "/dev/ttyS1", "cannot open /dev/ttyS1: No such file or directory"),
        # Not a Raspberry Pi: nothing is guessed, the reason is the state's detail (and the health line's).
        ("qemu-virt", "auto", "cannot open auto: no header UART: not a Raspberry Pi (linux,dummy-virt)"),
    ],
)
def test_auto_device_is_the_header_uart_of_the_device_tree(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tree: str, opened: str, detail: str
) -> None:
    from appliance.sources.serial import source as serial_source
    from appliance.sources.serial import uart

    caplog.set_level(logging.INFO, logger=LOGGER)
    data = Path(__file__).resolve().parent / "data" / "uart" / tree
    monkeypatch.setattr(serial_source, "resolve_header_uart", lambda: uart.resolve_header_uart(data))
    stats = RecordingStats()
    source = SerialSource(SourceConfig(device="auto", reconnect_max_backoff=1.0), stats, threading.Event())
    try:
        assert source.read() == b""
        assert source.state == "lost" and str(stats.src["detail"]).startswith(detail)
        if opened != "auto":
            (line,) = messages(caplog, "source.device auto")
            assert "/dev/ttyS1: the mini UART /soc/serial@7e215040" in line and "8N1" in line
            assert source._framing == "8N1"
    finally:
        source.close()
