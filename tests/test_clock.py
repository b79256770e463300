"""The clock rule (appliance.clock): a Raspberry Pi has no real-time clock, so a ledger waits for a synchronised
one; the kernel's state is read the way timedatectl reads it (adjtimex)."""

from __future__ import annotations

import doctest

import appliance.clock
from appliance.clock import FLOOR, TIME_ERROR, ClockGate, kernel_clock_state

NOW = 1_750_000_000.0


class Kernel:
    """A kernel clock state that the test sets, counting how often it is asked."""

    def __init__(self, state: int | None) -> None:
        self.state = state
        self.asked = 0

    def __call__(self) -> int | None:
        self.asked += 1
        return self.state


def test_waits_for_the_kernel_to_say_synchronised_then_stays_open() -> None:
    kernel = Kernel(TIME_ERROR)
    mono = [0.0]
    gate = ClockGate(require_sync=True, state=kernel, monotonic=lambda: mono[0])
    assert not gate.plausible(NOW) and gate.waiting
    for _ in range(100):  # every frame of the next second: the kernel is not asked again
        assert not gate.plausible(NOW)
    assert kernel.asked == 1
    mono[0] = 1.5
    kernel.state = 0  # TIME_OK: timesyncd reached a server
    assert gate.plausible(NOW) and not gate.waiting
    kernel.state = TIME_ERROR  # the server is lost later: the clock only drifts, counting goes on
    mono[0] = 10.0
    assert gate.plausible(NOW + 10) and kernel.asked == 2


def test_an_instant_before_2024_is_never_plausible() -> None:
    for gate in (ClockGate(require_sync=False), ClockGate(require_sync=True, state=lambda: 0)):
        assert not gate.plausible(86_400.0)  # 1970: a clock nobody set
        assert not gate.plausible(FLOOR - 1)
        assert gate.plausible(FLOOR)


def test_without_a_kernel_to_ask_the_floor_decides() -> None:
    assert ClockGate(require_sync=True, state=lambda: None).plausible(NOW)


def test_the_kernel_state_is_readable_here() -> None:
    state = kernel_clock_state()
    assert state is not None and 0 <= state <= TIME_ERROR  # TIME_OK ... TIME_ERROR


def test_docstring_examples() -> None:
    assert doctest.testmod(appliance.clock).failed == 0
