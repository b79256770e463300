"""What each GPIO output should be, from the decoded frames: the rules and the switching discipline.  No I/O.

A rule reads a frame and answers ON, OFF, or "this frame does not say" (``None``: the label it needs is missing
or invalid).  A :class:`Channel` then applies what every output shares:

* **Safe state.**  Every output starts OFF, goes back to OFF when its rule has had no usable data for
  ``stale_after`` seconds, and is switched OFF before the service stops.  ON always means "pin active" (relay
  energised, load powered), so OFF is also what the hardware does when the process dies and the line is released
  (with the relay board's pull resistor holding it inactive: README, "On a Raspberry Pi").  Per rule:

  ============== =================================================================================================
  rule           OFF (the safe state) means
  ============== =================================================================================================
  off_peak       the water heater is not heated: never heating at peak price is the cheap failure; the tank's
                 own thermostat and the next off-peak window catch up
  tempo          the load tied to a colour stays off: no red-day consumption by mistake
  load_shedding  the load is shed: with no reading the appliance cannot know the breaker's margin, so it keeps
                 the shed load off rather than risk tripping the main breaker
  relais         the contact the meter commands is open: the meter's own relay, which the output mirrors, keeps
                 working by itself
  ============== =================================================================================================

* **Minimum times.**  A change the rule asks for waits until the output has been ON for ``min_on`` or OFF for
  ``min_off`` seconds (the start counts as switching OFF), so a contactor or a heat pump is never short-cycled.
  Only a principal's explicit ``gpio force`` bypasses them.
* **Forcing.**  ``force(on, seconds)`` holds a state for a time whatever the rule says; when it expires (or is
  released) the rule's current wish applies, within the minimum times.

Tariff data (docs/PROTOCOL.md §6/§8, 02E/54E): historique PTEC (``HC..``/``HP..``, Tempo ``HCJB``...``HPJR``) and
DEMAIN; standard LTARF (the supplier's label, ``HEURE CREUSE``, ``HC BLEU``...) and STGE's Tempo colour bits.  Power:
historique PAPP against ISOUSC x 200 VA (the subscribed current at 200 VA per ampere, 30 A = 6 kVA), standard
SINSTS against PREF (kVA).  RELAIS (standard only): relay n is bit n-1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.schema import GpioOutputConfig
from appliance.tic import Frame
from appliance.tic.fields import decode_relais, decode_stge

__all__ = ["Channel", "apparent_power", "evaluate", "off_peak", "subscribed_power", "tempo_colour"]

_PTEC_COLOUR = {"B": "blue", "W": "white", "R": "red"}
_DEMAIN = {"BLEU": "blue", "BLAN": "white", "ROUG": "red"}
_LTARF_COLOUR = {"BLEU": "blue", "BLANC": "white", "ROUGE": "red"}


def off_peak(frame: Frame) -> bool | None:
    """True in off-peak hours (heures creuses), False in any other period, None if the frame does not say."""
    v = frame.values
    ptec = v.get("PTEC")
    if isinstance(ptec, str):
        return ptec.startswith("HC")
    ltarf = v.get("LTARF")
    if isinstance(ltarf, str):
        words = ltarf.upper().split()
        return "CREUSE" in words or "CREUSES" in words or (bool(words) and words[0] == "HC")
    return None


def tempo_colour(frame: Frame, day: str = "today") -> str | None:
    """Tempo colour of today or tomorrow (blue, white, red), or None when the frame does not carry it."""
    v = frame.values
    if day == "tomorrow":
        demain = v.get("DEMAIN")
        if isinstance(demain, str):
            return _DEMAIN.get(demain)
    else:
        ptec = v.get("PTEC")
        if isinstance(ptec, str) and len(ptec) == 4 and ptec[2] == "J":
            return _PTEC_COLOUR.get(ptec[3])
    stge = v.get("STGE")
    if isinstance(stge, str):
        colour = decode_stge(stge)["tempo_tomorrow" if day == "tomorrow" else "tempo_today"]
        if colour is not None:
            return str(colour)
    ltarf = v.get("LTARF")
    if day == "today" and isinstance(ltarf, str):
        for word in ltarf.upper().split():
            if word in _LTARF_COLOUR:
                return _LTARF_COLOUR[word]
    return None


def apparent_power(frame: Frame) -> int | None:
    """Apparent power drawn (VA): SINSTS (standard) or PAPP (historique)."""
    for label in ("SINSTS", "PAPP"):
        value = frame.values.get(label)
        if isinstance(value, int):
            return value
    return None


def subscribed_power(frame: Frame) -> int | None:
    """Subscribed power (VA): PREF kVA x 1000 (standard) or ISOUSC A x 200 (historique)."""
    pref = frame.values.get("PREF")
    if isinstance(pref, int) and pref > 0:
        return pref * 1000
    isousc = frame.values.get("ISOUSC")
    if isinstance(isousc, int) and isousc > 0:
        return isousc * 200
    return None


def evaluate(cfg: GpioOutputConfig, frame: Frame, current: bool) -> bool | None:
    """What ``cfg``'s rule wants given ``frame`` and the output's ``current`` state (for hysteresis)."""
    if cfg.rule == "off_peak":
        hc = off_peak(frame)
        if hc is None or not hc or not cfg.colours:
            return hc
        colour = tempo_colour(frame)
        return None if colour is None else colour in cfg.colours
    if cfg.rule == "tempo":
        colour = tempo_colour(frame, cfg.day)
        return None if colour is None else colour in cfg.colours
    if cfg.rule == "load_shedding":
        power = apparent_power(frame)
        limit = cfg.subscribed_va or subscribed_power(frame)
        if power is None or not limit:
            return None
        percent = 100.0 * power / limit
        if current:
            return percent < cfg.shed_above
        return percent <= cfg.restore_below
    relais = frame.values.get("RELAIS")
    if isinstance(relais, int):
        return decode_relais(relais)[cfg.relay - 1]
    return None


@dataclass
class _Force:
    """A manual override of one output, until a time."""

    on: bool
    until: float


class Channel:
    """One output's state machine; ``write(bool)`` drives the pin.  Not thread-safe: the controller locks."""

    def __init__(
        self, cfg: GpioOutputConfig, write: Callable[[bool], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self._write = write
        self._clock = clock
        now = clock()
        self.state = False
        self.wanted = False
        self.last_change = now
        self.last_data: float | None = None
        self.forced: _Force | None = None
        self.switches = 0
        write(False)

    def on_frame(self, frame: Frame) -> None:
        desired = evaluate(self.cfg, frame, self.state)
        now = self._clock()
        if desired is not None:
            self.wanted = desired
            self.last_data = now
        self._apply(now)

    def tick(self) -> None:
        """Expire a force, fall back to the safe state on stale data, apply a change the minimum times held."""
        now = self._clock()
        if self.forced is not None and now >= self.forced.until:
            self.forced = None
        stale_since = self.last_data if self.last_data is not None else self.last_change
        if now - stale_since >= self.cfg.stale_after:
            self.wanted = False
        self._apply(now)

    def force(self, on: bool, seconds: float) -> None:
        self.forced = _Force(on, self._clock() + seconds)
        self._apply(self._clock())

    def release(self) -> bool:
        """Give the output back to its rule; False if it was not forced."""
        was = self.forced is not None
        self.forced = None
        self._apply(self._clock())
        return was

    def safe(self) -> None:
        """OFF now, whatever the minimum times (the service is stopping)."""
        self.forced = None
        self.wanted = False
        self._set(False, self._clock())

    def _apply(self, now: float) -> None:
        if self.forced is not None:
            self._set(self.forced.on, now)
            return
        if self.wanted == self.state:
            return
        hold = self.cfg.min_on if self.state else self.cfg.min_off
        if now - self.last_change >= hold:
            self._set(self.wanted, now)

    def _set(self, on: bool, now: float) -> None:
        if on != self.state:
            self._write(on)
            self.state = on
            self.last_change = now
            self.switches += 1

    def describe(self) -> dict[str, Any]:
        """The output's state for the control socket and the stats snapshot."""
        now = self._clock()
        return {
            "pin": self.cfg.pin,
            "rule": self.cfg.rule,
            "state": "on" if self.state else "off",
            "rule_wants": "on" if self.wanted else "off",
            "forced": None
            if self.forced is None
            else {"state": "on" if self.forced.on else "off", "remaining_s": round(self.forced.until - now, 1)},
            "data_age_s": None if self.last_data is None else round(now - self.last_data, 1),
            "since_s": round(now - self.last_change, 1),
            "switches": self.switches,
        }
