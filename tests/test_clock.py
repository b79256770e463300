"""The clock rule (appliance.clock): a Raspberry Pi has no real-time clock, so a ledger waits for a synchronised
one; synchronised is told by systemd-timesyncd's flag file, else by the kernel (adjtimex, as timedatectl reads it)."""

from __future__ import annotations

import doctest
from pathlib import Path

import appliance.clock
from appliance.clock import FLOOR, TIME_ERROR, ClockGate, clock_synchronised, kernel_clock_state

NOW = 1_750_000_000.0


class Clock:
    """Whether the clock is synchronised, as the test says, counting how often it is asked."""

    def __init__(self, synced: bool | None) -> None:
        self.synced = synced
        self.asked = 0

    def __call__(self) -> bool | None:
        self.asked += 1
        return self.synced


def test_waits_for_a_synchronised_clock_then_stays_open() -> None:
    clock = Clock(False)
    mono = [0.0]
    gate = ClockGate(require_sync=True, synchronised=clock, monotonic=lambda: mono[0])
    assert not gate.plausible(NOW) and gate.waiting and gate.last is False
    for _ in range(100):  # every frame of the next second: nobody is asked again
        assert not gate.plausible(NOW)
    assert clock.asked == 1
    mono[0] = 1.5
    clock.synced = True  # timesyncd reached a server
    assert gate.plausible(NOW) and not gate.waiting
    clock.synced = False  # the server is lost later: the clock only drifts, counting goes on
    mono[0] = 10.0
    assert gate.plausible(NOW + 10) and clock.asked == 2


def test_when_nothing_tells_it_waits() -> None:
    """Under the unit's ProtectClock=yes adjtimex is refused: without timesyncd's flag, nothing says the clock is
    right, so nothing is counted (and the feed says what to set)."""
    gate = ClockGate(require_sync=True, synchronised=lambda: None)
    assert not gate.plausible(NOW) and gate.waiting and gate.last is None


def test_an_instant_before_2024_is_never_plausible() -> None:
    for gate in (ClockGate(require_sync=False), ClockGate(require_sync=True, synchronised=lambda: True)):
        assert not gate.plausible(86_400.0)  # 1970: a clock nobody set
        assert not gate.plausible(FLOOR - 1)
        assert gate.plausible(FLOOR)


def test_what_tells_synchronised(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    assert clock_synchronised(flag, lambda: TIME_ERROR) is False
    assert clock_synchronised(flag, lambda: 0) is True  # TIME_OK
    assert clock_synchronised(flag, lambda: None) is None  # adjtimex refused (ProtectClock) and no flag
    flag.touch()  # systemd-timesyncd: synchronised at least once since boot
    assert clock_synchronised(flag, lambda: None) is True
    assert clock_synchronised(flag, lambda: TIME_ERROR) is True


def test_the_kernel_state_is_readable_here() -> None:
    state = kernel_clock_state()
    assert state is not None and 0 <= state <= TIME_ERROR  # TIME_OK ... TIME_ERROR


def test_docstring_examples() -> None:
    assert doctest.testmod(appliance.clock).failed == 0
