"""The household behind the meter: apparent power per phase, voltages and power factor at any instant, from the
seed alone.

Apparent power follows a daily curve (low at night, peaks in the morning, at lunch and in the evening, higher in
winter), with seeded appliance events (kettle, cooking, washing machine, and on HC contracts the water heater
that the dry contact starts at 22:00) and slow seeded noise.  Now and then a short heavy load pushes one phase
over its setting current, so that ADPS (single-phase historique), ADIR short frames (three-phase historique) and
STGE bit 7 (standard) occur in the stream.  Producers get a solar curve; the net power decides whether the meter
draws (SINSTS, EAST) or injects (SINSTI, EAIT, STGE bit 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from appliance.simulator.seeded import (
    PARIS,
    TAG_CLOUD,
    TAG_DAY,
    TAG_FLICKER,
    TAG_LOAD,
    TAG_PF,
    TAG_VOLT,
    local,
    smooth,
    unit,
)

__all__ = ["Household", "LoadEvent", "Sample"]


def _bump(h: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((h - centre) / width) ** 2)


def _shape(h: float) -> float:
    """The household's typical apparent power (VA) at local hour ``h``: standby, morning, lunch, evening."""
    return 320 + 1400 * _bump(h, 7.4, 0.7) + 900 * _bump(h, 12.6, 0.9) + 2300 * _bump(h, 19.8, 1.4)


def _winter(day: date) -> float:
    """1.0 in mid-January, 0.0 in mid-July."""
    return 0.5 + 0.5 * math.cos(2 * math.pi * (day.timetuple().tm_yday - 15) / 365.25)


@dataclass(frozen=True, slots=True)
class LoadEvent:
    """An appliance running on one phase from ``start`` to ``end`` (UTC); ``overload`` ones exceed the phase's
    setting current on purpose, so that ADPS, ADIR short frames and STGE bit 7 occur in the stream."""

    name: str
    start: datetime
    end: datetime
    phase: int
    power: float  # VA

    @property
    def overload(self) -> bool:
        return self.name == "overload"


@dataclass(frozen=True, slots=True)
class _DayPlan:
    """One simulated day's consumption pattern, drawn once per day."""

    scale: float
    split: tuple[float, ...]
    events: tuple[LoadEvent, ...]
    sky: float  # clear-sky fraction for producers
    volt_offset: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """The meter's measurements at one instant."""

    net: tuple[float, ...]  # VA per phase: positive drawn, negative injected
    volts: tuple[float, ...]
    pf: float

    @property
    def total(self) -> float:
        return sum(self.net)

    def series(self, producer: bool) -> dict[str, int]:
        """The powers a meter keeps daily maxima of: S (SMAXSN), S1-S3 (three-phase), I (SMAXIN, producers)."""
        out = {"S": round(max(self.total, 0.0))}
        if len(self.net) == 3:
            out.update({f"S{i + 1}": round(max(x, 0.0)) for i, x in enumerate(self.net)})
        if producer:
            out["I"] = round(max(-self.total, 0.0))
        return out


@dataclass(frozen=True, slots=True)
class Household:
    """What a meter of ``phases`` phases on ``contract`` measures, with setting current ``isousc`` per phase."""

    seed: int
    phases: int
    contract: str
    isousc: int
    producer: bool

    def events(self, day: date) -> tuple[LoadEvent, ...]:
        """The appliance events planned for ``day`` (local), including the seeded overloads."""
        return _day_plan(self.seed, day, self.phases, self.contract, self.isousc).events

    def sample(self, t: datetime) -> Sample:
        """Measurements at ``t`` (UTC): a pure function of the seed and the instant."""
        lt = t.astimezone(PARIS)
        day = lt.date()
        seed = self.seed
        plan = _day_plan(seed, day, self.phases, self.contract, self.isousc)
        h = lt.hour + lt.minute / 60 + (lt.second + lt.microsecond / 1e6) / 3600
        ts = t.timestamp()
        shape = _shape(h)
        wobble = 0.8 + 0.4 * smooth(seed, TAG_LOAD, ts, 20.0)
        flicker = 0.97 + 0.06 * unit(seed, TAG_FLICKER, int(ts))
        base = shape * plan.scale * wobble * flicker
        load = [base * w for w in plan.split]
        yesterday = _day_plan(seed, day - timedelta(days=1), self.phases, self.contract, self.isousc)
        for ev in (*yesterday.events, *plan.events):
            if ev.start <= t < ev.end:
                load[ev.phase - 1] += ev.power
        if self.producer:
            sun = self._production(t, day, plan.sky, ts) / self.phases
            load = [x - sun for x in load]
        # ~230 V: a dip in the evening peak, a drop with the phase's own load (a rise when it injects), noise.
        sag = 2.5 * _bump(h, 19.5, 2.0)
        volts = tuple(
            231.5
            + plan.volt_offset[i]
            - sag
            + 1.6 * (smooth(seed, TAG_VOLT + 100 * i, ts, 10.0) - 0.5)
            - load[i] / 2500
            for i in range(self.phases)
        )
        pf = 0.93 + 0.05 * smooth(seed, TAG_PF, ts, 60.0)
        return Sample(tuple(load), volts, pf)

    def _production(self, t: datetime, day: date, sky: float, ts: float) -> float:
        """Solar output (VA): a sine over the day length, scaled by season and seeded clouds."""
        summer = 1.0 - _winter(day)
        length = 12.0 - 3.8 * math.cos(2 * math.pi * (day.timetuple().tm_yday + 10) / 365.25)  # hours of sun
        x = (t.hour + t.minute / 60 + t.second / 3600 - (11.8 - length / 2)) / length  # 11:48 UTC: solar noon
        if not 0.0 < x < 1.0:
            return 0.0
        peak = 3000.0 * math.pow(self.phases, 2 / 3)  # 3 kVA single-phase, 6 kVA three-phase
        clouds = sky * (0.6 + 0.4 * smooth(self.seed, TAG_CLOUD, ts, 90.0))
        return peak * math.pow(math.sin(math.pi * x), 1.3) * (0.5 + 0.5 * summer) * clouds


@lru_cache(maxsize=64)
def _day_plan(seed: int, day: date, phases: int, contract: str, isousc: int) -> _DayPlan:
    """The seeded shape of one day: level, phase split, appliance events, sky."""
    key = day.toordinal()

    def u(*k: int) -> float:
        return unit(seed, TAG_DAY, key, *k)

    scale = (0.8 + 0.4 * u(0)) * (0.8 + 0.8 * _winter(day)) * (1.5 if phases == 3 else 1.0)
    if phases == 3:
        weights = [0.8 + 0.6 * u(1, i) for i in range(3)]
        split = tuple(w / sum(weights) for w in weights)
    else:
        split = (1.0,)

    def event(name: str, at: float, minutes: float, power: float, phase_key: int) -> LoadEvent:
        start = local(day, at)
        phase = 1 + int(u(2, phase_key) * phases)
        return LoadEvent(name, start, start + timedelta(minutes=minutes), phase, power)

    events = [
        event("kettle", 6.75 + 1.25 * u(3), 3 + 2 * u(4), 2000.0, 1),
        event("cooking", 18.5 + 1.5 * u(5), 30 + 30 * u(6), 2500.0, 2),
    ]
    if u(7) < 0.5:
        events.append(event("washing machine", 9 + 12 * u(8), 20 + 20 * u(9), 2000.0, 3))
    if contract in ("HCHP", "TEMPO"):
        events.append(event("water heater", 22 + u(10) / 6, 90 + 120 * u(11), 2400.0, 4))
    if u(12) < 0.35:
        # A heavy load in the evening peak that takes its phase 10-30 % over the setting current, for 20-60 s:
        # long enough to be seen, short enough that the real meter's breaker filter (tau ~ 125 s) would hold.
        hour = 18 + 2.5 * u(14)
        phase = 1 + int(u(2, 5) * phases)
        target = (1.1 + 0.2 * u(13)) * isousc * 230
        power = max(target - _shape(hour) * scale * split[phase - 1], 1000.0)
        events.append(event("overload", hour, (20 + 40 * u(15)) / 60, power, 5))
    sky = 0.2 + 0.8 * u(16)
    offsets = tuple(4 * (u(17, i) - 0.5) for i in range(phases))
    return _DayPlan(scale, split, tuple(sorted(events, key=lambda e: e.start)), sky, offsets)
