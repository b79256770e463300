"""A Linky meter, simulated: the exact TIC bytes it sends, and the readings those bytes stand for.

Pure like :mod:`appliance.tic`: no I/O, no threads, no wall clock.  Time is an argument (``start``), every
random choice comes from a hash of ``seed`` and the instant or day it concerns, so any instant of any day can be
replayed and two runs with the same arguments give the same bytes.  :mod:`appliance.simulator.output` puts the
frames on a wire.

What a frame carries, and why (TIC.md §1.2-1.9):

* **Load.** Apparent power follows a daily curve (low at night, peaks in the morning, at lunch and in the
  evening, higher in winter), with seeded appliance events (kettle, cooking, washing machine, and on HC
  contracts the water heater that the dry contact starts at 22:00) and slow seeded noise.  Now and then a short
  heavy load pushes one phase over its setting current: ADPS (single-phase historique), ADIR short frames
  (three-phase historique), STGE bit 7 (standard).  Producers get a solar curve; the net power decides whether
  the meter draws (SINSTS, EAST) or injects (SINSTI, EAIT, STGE bit 9).
* **Indexes** integrate active power (apparent x power factor) frame by frame into the register of the tariff
  period in force, as whole Wh with the fraction carried over, so they never decrease and EAST is exactly the sum
  of EASF01-10 and of EASD01-04.
* **Tariffs** follow the meter's local clock (Europe/Paris, with DST): HC 22:00-06:00 (HCHP and Tempo); Tempo
  colours per day from the seed (red only on winter weekdays, never white on Sundays), the Tempo day running
  06:00-06:00 and tomorrow's colour announced from 20:00; EJP "pointe mobile" on some winter weekdays, 07:00 to
  01:00 the next day, with a 30-minute notice (PEJP).
* **Standard frames** carry every group a real meter sends, in the spec's order (54E §6.2.2, checked against the
  captures): all ten EASF and four EASD registers even when unused, SMAXSN with the time of the maximum, the
  30-minute load curve (CCASN), 10-minute mean voltages (UMOY), STGE, DPM/FPM on mobile peak days (PM1 = white and
  PM2 = red Tempo days, PM1 = EJP days, as in the captures), the next day's profile.
* **Three-phase historique** switches to cycles of 20 short frames (ADIRn, ADCO, IINST1-3) and one long frame
  while a phase is over its setting current and for one minute after, with EOT on each long-to-short switch
  (02E §2.5.4, Tableau 6).  The EOT goes between the last long frame's ETX and the first short frame's STX.

Every :class:`SimFrame` carries the decoded content the frame must produce (``values`` typed as the decoder
types them, ``timestamps`` in the decoder's ISO 8601), built from the model's own numbers, not by decoding, so a
round trip through :class:`appliance.tic.Decoder` is a real check.

>>> from datetime import datetime
>>> sim = MeterSimulator(start=datetime(2024, 1, 15, 23, 0, tzinfo=PARIS), contract="HCHP")
>>> frame = next(sim.frames())
>>> frame.values["PTEC"], frame.values["OPTARIF"], frame.data[:1]
('HC..', 'HC..', b'\\x02')
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Final, Literal
from zoneinfo import ZoneInfo

from appliance.tic import BAUDRATES
from appliance.tic.encode import EOT, encode_frame, encode_group

__all__ = [
    "BAUDRATES",
    "CONTRACTS",
    "PARIS",
    "ErrorInjector",
    "Injection",
    "LoadEvent",
    "MeterSimulator",
    "Period",
    "SimFrame",
]

Mode = Literal["historique", "standard"]
Contract = Literal["BASE", "HCHP", "TEMPO", "EJP"]
CONTRACTS: Final = ("BASE", "HCHP", "TEMPO", "EJP")
PARIS: Final = ZoneInfo("Europe/Paris")
#: Line speed per mode (02E §1.3.1.1, 54E §5.3.5); 7E1 is 10 bits on the wire per byte.
BITS_PER_BYTE: Final = 10
#: Silence between two frames (02E §1.5.2; 54E §5.3.6).
GAP_MIN, GAP_MAX = 0.0167, 0.0334
SHORT_CYCLE: Final = 20  # short frames per long frame while a phase is over (02E §2.5.4)
OVERRUN_HOLD: Final = timedelta(minutes=1)  # short frames go on one minute after the last overrun
LOAD_CURVE_PERIOD: Final = timedelta(minutes=30)  # CCASN/CCAIN
UMOY_PERIOD: Final = timedelta(minutes=10)  # 54E §6.2.3.13
MSG1: Final = "PAS DE          MESSAGE         "  # what every captured meter sends
_NONUTILE: Final = "NONUTILE"
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_LINKY: Final = datetime(2015, 1, 1, tzinfo=UTC)

# Tempo colours use the STGE code (bits 24-27): 1 blue, 2 white, 3 red; index 0 is "not announced".
_COLOUR_NAME: Final = ("", "BLEU", "BLANC", "ROUGE")
_DEMAIN: Final = ("----", "BLEU", "BLAN", "ROUG")
_PTEC_COLOUR: Final = ("", "B", "W", "R")


# --- deterministic randomness ------------------------------------------------------------------------------
# A stateless hash (splitmix64) instead of a random.Random stream: the value at an instant must not depend on
# which instants were simulated before it, or frames(start=t) would differ from the same instant reached later.

_M64: Final = (1 << 64) - 1
_TAG_LOAD, _TAG_FLICKER, _TAG_PF, _TAG_VOLT, _TAG_SKY, _TAG_CLOUD = 1, 2, 3, 4, 5, 6
_TAG_DAY, _TAG_TEMPO, _TAG_EJP, _TAG_EVENT, _TAG_GAP, _TAG_INDEX, _TAG_ID = 7, 8, 9, 10, 11, 12, 13


def _mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _unit(*keys: int) -> float:
    """A uniform number in [0, 1) that depends only on ``keys``."""
    h = 0
    for k in keys:
        h = _mix(h ^ (k & _M64))
    return (h >> 11) / float(1 << 53)


def _smooth(seed: int, tag: int, t: float, knot: float) -> float:
    """Value noise in [0, 1): random at every ``knot`` seconds, smoothly interpolated in between."""
    x = t / knot
    k = math.floor(x)
    f = x - k
    f = f * f * (3.0 - 2.0 * f)
    a = _unit(seed, tag, k)
    return a + (_unit(seed, tag, k + 1) - a) * f


def _bump(h: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((h - centre) / width) ** 2)


def _shape(h: float) -> float:
    """The household's typical apparent power (VA) at local hour ``h``: standby, morning, lunch, evening."""
    return 320 + 1400 * _bump(h, 7.4, 0.7) + 900 * _bump(h, 12.6, 0.9) + 2300 * _bump(h, 19.8, 1.4)


def _winter(day: date) -> float:
    """1.0 in mid-January, 0.0 in mid-July."""
    return 0.5 + 0.5 * math.cos(2 * math.pi * (day.timetuple().tm_yday - 15) / 365.25)


def _local(day: date, hours: float) -> datetime:
    """The UTC instant of ``hours`` (may exceed 24) after local midnight of ``day``, on the wall clock."""
    wall = datetime.combine(day, time(), tzinfo=PARIS) + timedelta(hours=hours)
    return wall.astimezone(UTC)


# --- calendars -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _tempo_colour(seed: int, day: date) -> int:
    """The Tempo colour of the Tempo day starting at 06:00 on ``day``: about 22 red and 43 white days a year."""
    u = _unit(seed, _TAG_TEMPO, day.toordinal())
    weekday = day.weekday()
    winter = day.month in (11, 12, 1, 2, 3)
    if winter and weekday < 5 and u < 0.2:
        return 3
    if weekday != 6 and u < (0.4 if winter else 0.06):
        return 2
    return 1


@lru_cache(maxsize=64)
def _ejp_day(seed: int, day: date) -> bool:
    """EJP "pointe mobile" days: about 22 a year, winter weekdays only."""
    return day.month in (11, 12, 1, 2, 3) and day.weekday() < 5 and _unit(seed, _TAG_EJP, day.toordinal()) < 0.2


@dataclass(frozen=True, slots=True)
class Period:
    """One tariff period of a contract: what PTEC, NTARF, LTARF and STGE say while it is in force."""

    ptec: str  # historique PTEC
    supplier_index: int  # NTARF and the EASFxx register that counts (1..10)
    distributor_index: int  # the EASDxx register that counts (1..4)
    label: str  # LTARF, before centring
    off_peak: bool  # heures creuses: the dry contact (relay 1) is closed to start the water heater


_BASE = Period("TH..", 1, 1, "BASE", False)
_HC = Period("HC..", 1, 1, "HEURE  CREUSE", True)
_HP = Period("HP..", 2, 2, "HEURE  PLEINE", False)
_HN = Period("HN..", 1, 1, "HEURE  NORMALE", False)
_PM = Period("PM..", 2, 1, "POINTE  MOBILE", False)

# Standard NGTF (real values where a capture has one) and historique OPTARIF / index labels per contract.
_NGTF: Final = {"BASE": "BASE", "HCHP": "H PLEINE/CREUSE", "TEMPO": "TEMPO", "EJP": "EJP"}
_OPTARIF: Final = {"BASE": "BASE", "HCHP": "HC..", "TEMPO": "BBR(", "EJP": "EJP."}
_INDEXES: Final[dict[str, tuple[str, ...]]] = {  # historique labels, by supplier index 1..n
    "BASE": ("BASE",),
    "HCHP": ("HCHC", "HCHP"),
    "TEMPO": ("BBRHCJB", "BBRHPJB", "BBRHCJW", "BBRHPJW", "BBRHCJR", "BBRHPJR"),
    "EJP": ("EJPHN", "EJPHPM"),
}
# How a lifetime's consumption splits between the supplier registers (for the initial indexes).
_SHARES: Final[dict[str, tuple[float, ...]]] = {
    "BASE": (1.0,),
    "HCHP": (0.42, 0.58),
    "TEMPO": (0.3, 0.45, 0.07, 0.1, 0.03, 0.05),
    "EJP": (0.95, 0.05),
}


def _profile(*slots: str) -> str:
    """PJOURF+1 / PPOINTE: 11 blocks ``HHMMSSSS``, unused ones NONUTILE (54E §6.2.3.22)."""
    return " ".join([*slots, *[_NONUTILE] * (11 - len(slots))])


def _tempo_profile(colour: int) -> str:
    hc, hp = 2 * colour - 1, 2 * colour
    return _profile(f"0000400{hc}", f"0600400{hp}", f"2200400{hc}")  # the shape of the captured Tempo meter


_PROFILES: Final = {
    "BASE": _profile("00008001"),
    "HCHP": _profile("0000C001", "06008002", "2200C001"),  # dry contact closed (C) in HC, as Enedis's fixture
    "EJP": _profile("00004001"),
}
_EJP_PEAK_PROFILE: Final = _profile("00004001", "07004002")


@dataclass(frozen=True, slots=True)
class _Calendar:
    """Mobile peaks and Tempo colours at an instant (STGE bits 24-31, DPMn/FPMn, PEJP, DEMAIN, PPOINTE)."""

    today: int = 0  # Tempo colour of the current Tempo day
    tomorrow: int = 0  # announced colour of the next one, 0 until 20:00
    notice: int = 0  # PMn announced
    peak: int = 0  # PMn in progress
    pointes: tuple[tuple[int, datetime, datetime], ...] = ()  # (n, start, end), local wall time, naive
    next_profile: str | None = None  # PPOINTE, while a peak is announced


def _wall(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour))


# --- the load ----------------------------------------------------------------------------------------------------


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
    scale: float
    split: tuple[float, ...]
    events: tuple[LoadEvent, ...]
    sky: float  # clear-sky fraction for producers
    volt_offset: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class _Sample:
    """The meter's measurements at one instant."""

    net: tuple[float, ...]  # VA per phase: positive drawn, negative injected
    volts: tuple[float, ...]
    pf: float

    @property
    def total(self) -> float:
        return sum(self.net)


@dataclass(frozen=True, slots=True)
class SimFrame:
    """One simulated frame: the bytes on the wire and the decoded content they must give.

    ``values`` and ``timestamps`` are what :class:`appliance.tic.Frame` holds for these bytes (ints for numeric
    labels, strings for ids and text, padding stripped; ISO 8601 horodates).  ``at`` is the local time the frame
    starts (Europe/Paris); ``duration`` the seconds it holds the line: 10 bits per byte at the mode's baud rate,
    plus the silence before the next frame.
    """

    data: bytes
    values: dict[str, int | str]
    timestamps: dict[str, str]
    at: datetime
    duration: float
    mode: Mode
    short: bool = False  # a three-phase historique short frame (ADIR)


class _Builder:
    """Collects groups and the values the decoder must read back from them."""

    __slots__ = ("groups", "mode", "stamps", "values")

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.groups: list[bytes] = []
        self.values: dict[str, int | str] = {}
        self.stamps: dict[str, str] = {}

    def _add(self, label: str, data: str, value: int | str | None, when: datetime | None = None) -> None:
        horodate = None
        if when is not None:
            horodate = _horodate(when)
            self.stamps[label] = when.replace(microsecond=0).isoformat()
        self.groups.append(encode_group(self.mode, label, data, horodate))
        if value is not None:
            self.values[label] = value

    def number(self, label: str, value: int, width: int, when: datetime | None = None) -> None:
        if not 0 <= value < 10**width:
            raise ValueError(f"{label}={value} does not fit in {width} digits")
        self._add(label, f"{value:0{width}d}", value, when)

    def word(self, label: str, text: str) -> None:
        """Ids, closed sets, hex registers, profiles: the decoder keeps them as sent."""
        self._add(label, text, text)

    def text(self, label: str, text: str, width: int) -> None:
        """Free text, centred in its field with spaces as meters do; the decoder strips the padding."""
        pad = width - len(text)
        self._add(label, " " * (pad // 2) + text + " " * (pad - pad // 2), text.strip(" "))

    def date(self, when: datetime) -> None:
        self._add("DATE", "", None, when)


def _horodate(when: datetime) -> str:
    """``SAAMMJJhhmmss``: H/E for a local winter/summer time, a space for a naive (season-less) one."""
    if when.tzinfo is None:
        season = " "
    else:
        season = "E" if when.dst() else "H"
    return season + when.strftime("%y%m%d%H%M%S")


@dataclass(slots=True)
class _State:
    """What the meter remembers from frame to frame."""

    t: datetime  # UTC
    supplier: list[int]
    distributor: list[int]
    injected: int
    reactive: list[int]
    carry: list[float]  # fractions of Wh / VArh not yet counted: import, export, Q1, Q3
    day: date
    smax: dict[str, tuple[int, datetime]]
    smax_prev: dict[str, tuple[int, datetime]]
    curve: tuple[datetime, dict[str, int]] | None = None
    umoy: tuple[datetime, list[int]] | None = None
    burst_until: datetime | None = None
    shorts: int = 0
    last_short: bool | None = None
    count: int = 0


# --- the meter -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterSimulator:
    """A Linky meter's TIC output, configured like the real thing.

    ``start`` (timezone-aware) is where :meth:`frames` begins unless told otherwise; ``meter_id`` is the ADCO/ADSC
    (12 digits, derived from the seed if omitted), ``prm`` the delivery point (14 digits), ``subscribed_kva`` the
    subscribed power (PREF; default 6 kVA single-phase, 12 kVA three-phase).  Producer data exists in standard
    mode only (TIC.md §1.9), so ``producer`` with ``mode="historique"`` is a ValueError.
    """

    start: datetime
    mode: Mode = "historique"
    phases: int = 1
    contract: Contract = "BASE"
    producer: bool = False
    seed: int = 0
    meter_id: str | None = None
    prm: str | None = None
    subscribed_kva: int | None = None
    _id: str = field(init=False, repr=False)
    _prm: str = field(init=False, repr=False)
    _kva: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in BAUDRATES:
            raise ValueError(f"mode must be historique or standard, not {self.mode!r}")
        if self.phases not in (1, 3):
            raise ValueError(f"phases must be 1 or 3, not {self.phases!r}")
        if self.contract not in CONTRACTS:
            raise ValueError(f"contract must be one of {', '.join(CONTRACTS)}, not {self.contract!r}")
        if self.producer and self.mode == "historique":
            raise ValueError("a producer needs standard mode: historique TIC carries no production data")
        _check_start(self.start)
        ident = self.meter_id or _default_address(self.seed, self.phases)
        prm = self.prm or _digits(self.seed, 2, 14)
        if len(ident) != 12 or not ident.isdigit():
            raise ValueError(f"meter id must be 12 digits, not {ident!r}")
        if len(prm) != 14 or not prm.isdigit():
            raise ValueError(f"PRM must be 14 digits, not {prm!r}")
        kva = self.subscribed_kva or (12 if self.phases == 3 else 6)
        if not 3 <= kva <= 36:
            raise ValueError(f"subscribed power must be 3 to 36 kVA, not {kva}")
        object.__setattr__(self, "_id", ident)
        object.__setattr__(self, "_prm", prm)
        object.__setattr__(self, "_kva", kva)

    # -- public helpers -----------------------------------------------------------------------------------------

    @property
    def baudrate(self) -> int:
        """1200 (historique) or 9600 (standard)."""
        return BAUDRATES[self.mode]

    @property
    def address(self) -> str:
        """ADCO / ADSC."""
        return self._id

    @property
    def isousc(self) -> int:
        """ISOUSC, and the per-phase setting current: PREF / 200 V, a third of it per phase on three-phase meters
        (TIC.md §1.6)."""
        return self._kva * 1000 // 200 // self.phases

    def period(self, at: datetime) -> Period:
        """The tariff period in force at ``at``."""
        return self._period(at.astimezone(PARIS), self._calendar(at.astimezone(PARIS)))

    def events(self, day: date) -> tuple[LoadEvent, ...]:
        """The appliance events planned for ``day`` (local), including the seeded overloads."""
        return _day_plan(self.seed, day, self.phases, self.contract, self.isousc).events

    def frames(self, start: datetime | None = None, step: float | None = None) -> Iterator[SimFrame]:
        """Frames from ``start`` (default: the configured start), forever.

        Each frame advances the simulated clock by its wire time, so a writer that paces bytes at the baud rate
        keeps simulated and real time together.  ``step`` (seconds) advances the clock by that much instead,
        to cover a day in a few thousand frames.
        """
        t0 = self.start if start is None else start
        _check_start(t0)
        if step is not None and step <= 0:
            raise ValueError("step must be positive")
        return self._run(self._initial_state(t0.astimezone(UTC)), step)

    def _run(self, st: _State, step: float | None) -> Iterator[SimFrame]:
        while True:
            t = st.t
            lt = t.astimezone(PARIS)
            sample = self._sample(t)
            cal = self._calendar(lt)
            period = self._period(lt, cal)
            self._track_maxima(st, lt, sample)
            frame = self._frame(st, lt, sample, cal, period)
            yield frame
            dt = frame.duration if step is None else step
            self._integrate(st, sample, period, dt)
            st.t = t + timedelta(seconds=dt)
            st.count += 1

    # -- tariffs ------------------------------------------------------------------------------------------------

    def _calendar(self, lt: datetime) -> _Calendar:
        if self.contract == "TEMPO":
            return self._tempo_calendar(lt)
        if self.contract == "EJP":
            return self._ejp_calendar(lt)
        return _Calendar()

    def _tempo_calendar(self, lt: datetime) -> _Calendar:
        shifted = lt.replace(tzinfo=None) - timedelta(hours=6)  # the Tempo day runs 06:00 to 06:00
        day = shifted.date()
        today = _tempo_colour(self.seed, day)
        tomorrow = _tempo_colour(self.seed, day + timedelta(days=1)) if shifted.hour >= 14 else 0
        pointes = []
        if today >= 2:
            end = day + timedelta(days=2 if tomorrow == today else 1)
            pointes.append((today - 1, _wall(day, 6), _wall(end, 6)))
        if tomorrow >= 2 and tomorrow != today:
            pointes.append((tomorrow - 1, _wall(day + timedelta(days=1), 6), _wall(day + timedelta(days=2), 6)))
        return _Calendar(
            today=today,
            tomorrow=tomorrow,
            notice=tomorrow - 1 if tomorrow >= 2 else 0,
            peak=today - 1 if today >= 2 else 0,
            pointes=tuple(sorted(pointes)),
            next_profile=_tempo_profile(tomorrow) if tomorrow >= 2 else None,
        )

    def _ejp_calendar(self, lt: datetime) -> _Calendar:
        day = lt.date()
        minutes = lt.hour * 60 + lt.minute
        yesterday = day - timedelta(days=1)
        if _ejp_day(self.seed, day) and minutes >= 7 * 60:
            return _Calendar(peak=1, pointes=((1, _wall(day, 7), _wall(day + timedelta(days=1), 1)),))
        if lt.hour < 1 and _ejp_day(self.seed, yesterday):
            return _Calendar(peak=1, pointes=((1, _wall(yesterday, 7), _wall(day, 1)),))
        if _ejp_day(self.seed, day) and minutes >= 6 * 60 + 30:
            return _Calendar(
                notice=1,
                pointes=((1, _wall(day, 7), _wall(day + timedelta(days=1), 1)),),
                next_profile=_EJP_PEAK_PROFILE,
            )
        return _Calendar()

    def _period(self, lt: datetime, cal: _Calendar) -> Period:
        off_peak = lt.hour >= 22 or lt.hour < 6
        if self.contract == "HCHP":
            return _HC if off_peak else _HP
        if self.contract == "TEMPO":
            colour = cal.today
            kind = "HC" if off_peak else "HP"
            index = 2 * colour - (1 if off_peak else 0)
            return Period(f"{kind}J{_PTEC_COLOUR[colour]}", index, 1, f"{kind}  {_COLOUR_NAME[colour]}", off_peak)
        if self.contract == "EJP":
            return _PM if cal.peak else _HN
        return _BASE

    # -- load ---------------------------------------------------------------------------------------------------

    def _sample(self, t: datetime) -> _Sample:
        """Measurements at ``t`` (UTC): a pure function of the seed and the instant."""
        lt = t.astimezone(PARIS)
        day = lt.date()
        seed = self.seed
        plan = _day_plan(seed, day, self.phases, self.contract, self.isousc)
        h = lt.hour + lt.minute / 60 + (lt.second + lt.microsecond / 1e6) / 3600
        ts = t.timestamp()
        shape = _shape(h)
        wobble = 0.8 + 0.4 * _smooth(seed, _TAG_LOAD, ts, 20.0)
        flicker = 0.97 + 0.06 * _unit(seed, _TAG_FLICKER, int(ts))
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
            + 1.6 * (_smooth(seed, _TAG_VOLT + 100 * i, ts, 10.0) - 0.5)
            - load[i] / 2500
            for i in range(self.phases)
        )
        pf = 0.93 + 0.05 * _smooth(seed, _TAG_PF, ts, 60.0)
        return _Sample(tuple(load), volts, pf)

    def _production(self, t: datetime, day: date, sky: float, ts: float) -> float:
        """Solar output (VA): a sine over the day length, scaled by season and seeded clouds."""
        summer = 1.0 - _winter(day)
        length = 12.0 - 3.8 * math.cos(2 * math.pi * (day.timetuple().tm_yday + 10) / 365.25)  # hours of sun
        x = (t.hour + t.minute / 60 + t.second / 3600 - (11.8 - length / 2)) / length  # 11:48 UTC: solar noon
        if not 0.0 < x < 1.0:
            return 0.0
        peak = 3000.0 * math.pow(self.phases, 2 / 3)  # 3 kVA single-phase, 6 kVA three-phase
        clouds = sky * (0.6 + 0.4 * _smooth(self.seed, _TAG_CLOUD, ts, 90.0))
        return peak * math.pow(math.sin(math.pi * x), 1.3) * (0.5 + 0.5 * summer) * clouds

    # -- state --------------------------------------------------------------------------------------------------

    def _initial_state(self, t: datetime) -> _State:
        # Linky meters went in from 2015: a few MWh from the seed, plus a household's yearly use since then.
        years = max(0.0, (t - _LINKY).total_seconds() / (365.25 * 86400))
        per_year = 4.5e6 * (1.5 if self.phases == 3 else 1.0)
        total = int(1e6 + 9e6 * _unit(self.seed, _TAG_INDEX) + years * per_year)
        supplier = [int(total * share) for share in _SHARES[self.contract]]
        supplier[0] += total - sum(supplier)
        supplier += [0] * (10 - len(supplier))
        distributor = [supplier[0], supplier[1], 0, 0] if self.contract == "HCHP" else [total, 0, 0, 0]
        injected = int(years * 2.0e6 * _unit(self.seed, _TAG_INDEX, 1)) if self.producer else 0
        reactive = [total // 4, injected // 50, injected // 20, total // 50]
        lt = t.astimezone(PARIS)
        day = lt.date()
        st = _State(t, supplier, distributor, injected, reactive, [0.0] * 4, day, {}, {})
        st.smax = self._sampled_maxima(_local(day, 0), t)
        st.smax_prev = self._sampled_maxima(_local(day - timedelta(days=1), 0), _local(day, 0))
        return st

    def _series(self, sample: _Sample) -> dict[str, int]:
        """The powers the meter keeps daily maxima of (SMAXSN, SMAXSNn, SMAXIN)."""
        out = {"S": round(max(sample.total, 0.0))}
        if self.phases == 3:
            out.update({f"S{i + 1}": round(max(x, 0.0)) for i, x in enumerate(sample.net)})
        if self.producer:
            out["I"] = round(max(-sample.total, 0.0))
        return out

    def _sampled_maxima(self, begin: datetime, end: datetime) -> dict[str, tuple[int, datetime]]:
        """Daily maxima before the simulation started, from the load every five minutes (the meter's history)."""
        best: dict[str, tuple[int, datetime]] = {}
        t = begin
        while True:
            for key, value in self._series(self._sample(t)).items():
                if key not in best or value > best[key][0]:
                    best[key] = (value, t)
            t += timedelta(minutes=5)
            if t >= end:
                break
        return best

    def _track_maxima(self, st: _State, lt: datetime, sample: _Sample) -> None:
        day = lt.date()
        if day != st.day:
            if day == st.day + timedelta(days=1):
                st.smax_prev = st.smax
            else:
                st.smax_prev = self._sampled_maxima(_local(day - timedelta(days=1), 0), _local(day, 0))
            st.smax = {}
            st.day = day
        for key, value in self._series(sample).items():
            if key not in st.smax or value > st.smax[key][0]:
                st.smax[key] = (value, st.t)

    def _integrate(self, st: _State, sample: _Sample, period: Period, dt: float) -> None:
        """Count the energy of ``dt`` seconds at ``sample`` into the registers of ``period``."""
        total = sample.total
        active = abs(total) * sample.pf * dt / 3600
        reactive = abs(total) * math.sqrt(1 - sample.pf**2) * dt / 3600
        slot = 0 if total >= 0 else 1
        st.carry[slot] += active
        st.carry[2 + slot] += reactive if slot == 0 else reactive * 0.1  # inverters inject at almost unity pf
        whole = int(st.carry[slot])
        st.carry[slot] -= whole
        if slot == 0:
            st.supplier[period.supplier_index - 1] += whole
            st.distributor[period.distributor_index - 1] += whole
        else:
            st.injected += whole
        q = int(st.carry[2 + slot])
        st.carry[2 + slot] -= q
        st.reactive[0 if slot == 0 else 2] += q

    # -- frames -------------------------------------------------------------------------------------------------

    def _frame(self, st: _State, lt: datetime, sample: _Sample, cal: _Calendar, period: Period) -> SimFrame:
        short = False
        if self.mode == "standard":
            b = self._standard(st, lt, sample, cal, period)
        else:
            currents = [round(abs(x) / u) for x, u in zip(sample.net, sample.volts, strict=True)]
            over = [i for i, amps in enumerate(currents) if amps > self.isousc]
            short = self.phases == 3 and self._short_next(st, over)
            b = self._short(currents, over) if short else self._historique(st, sample, cal, period, currents)
        data = encode_frame(b.groups)
        if short and st.last_short is False:
            data = EOT + data  # 02E Tableau 6: EOT on the switch from long to short frames
        st.last_short = short
        gap = GAP_MIN + (GAP_MAX - GAP_MIN) * _unit(self.seed, _TAG_GAP, st.count)
        duration = len(data) * BITS_PER_BYTE / self.baudrate + gap
        return SimFrame(data, b.values, b.stamps, lt, duration, self.mode, short)

    def _short_next(self, st: _State, over: list[int]) -> bool:
        """20 short frames, then one long, while a phase is over its setting current and a minute after."""
        if over:
            st.burst_until = st.t + OVERRUN_HOLD
        if st.burst_until is None or st.t > st.burst_until:
            st.burst_until = None
            st.shorts = 0
            return False
        if st.shorts < SHORT_CYCLE:
            st.shorts += 1
            return True
        st.shorts = 0
        return False

    def _short(self, currents: list[int], over: list[int]) -> _Builder:
        b = _Builder("historique")
        for i in over:
            b.number(f"ADIR{i + 1}", currents[i], 3)
        b.word("ADCO", self._id)
        for i, amps in enumerate(currents):
            b.number(f"IINST{i + 1}", amps, 3)
        return b

    def _historique(self, st: _State, sample: _Sample, cal: _Calendar, period: Period, currents: list[int]) -> _Builder:
        b = _Builder("historique")
        b.word("ADCO", self._id)
        b.word("OPTARIF", _OPTARIF[self.contract])
        b.number("ISOUSC", self.isousc, 2)
        for label, value in zip(_INDEXES[self.contract], st.supplier, strict=False):
            b.number(label, value, 9)
        if self.contract == "EJP" and (cal.notice or cal.peak):
            b.number("PEJP", 30, 2)  # sent from the 30-minute notice to the end of the peak
        b.word("PTEC", period.ptec)
        if self.contract == "TEMPO":
            b.word("DEMAIN", _DEMAIN[cal.tomorrow])
        if self.phases == 1:
            b.number("IINST", currents[0], 3)
            if currents[0] > self.isousc:
                b.number("ADPS", currents[0], 3)
            b.number("IMAX", 90, 3)  # Linky: always 090 (TIC.md §1.6)
        else:
            for i, amps in enumerate(currents):
                b.number(f"IINST{i + 1}", amps, 3)
            for i in range(3):
                b.number(f"IMAX{i + 1}", 60, 3)  # Linky: always 060
            b.number("PMAX", st.smax_prev["S"][0], 5)  # Linky: Smax of day n-1
        b.number("PAPP", round(max(sample.total, 0.0) / 10) * 10, 5)  # rounded to 10 VA
        b.word("HHPHC", "A")  # Linky: always A
        b.text("MOTDETAT", "000000", 6)
        if self.phases == 3:
            b.word("PPOT", "00")  # all three potentials present
        return b

    def _standard(self, st: _State, lt: datetime, sample: _Sample, cal: _Calendar, period: Period) -> _Builder:
        b = _Builder("standard")
        n = self.phases
        b.word("ADSC", self._id)
        b.word("VTIC", "02")
        b.date(lt)
        b.text("NGTF", _NGTF[self.contract], 16)
        b.text("LTARF", period.label, 16)
        b.number("EAST", sum(st.supplier), 9)
        for i, value in enumerate(st.supplier):
            b.number(f"EASF{i + 1:02d}", value, 9)
        for i, value in enumerate(st.distributor):
            b.number(f"EASD{i + 1:02d}", value, 9)
        if self.producer:
            b.number("EAIT", st.injected, 9)
            for i, value in enumerate(st.reactive):
                b.number(f"ERQ{i + 1}", value, 9)
        for i in range(n):
            b.number(f"IRMS{i + 1}", round(abs(sample.net[i]) / sample.volts[i]), 3)
        for i in range(n):
            b.number(f"URMS{i + 1}", round(sample.volts[i]), 3)
        b.number("PREF", self._kva, 2)
        b.number("PCOUP", self._kva, 2)
        series = self._series(sample)
        b.number("SINSTS", series["S"], 5)
        per_phase = [f"{i}" for i in range(1, 4)] if n == 3 else []
        for suffix in per_phase:
            b.number(f"SINSTS{suffix}", series[f"S{suffix}"], 5)
        phases = ["", *per_phase]
        for suffix in phases:
            value, when = st.smax[f"S{suffix}"]
            b.number(f"SMAXSN{suffix}", value, 5, when.astimezone(PARIS))
        for suffix in phases:
            value, when = st.smax_prev[f"S{suffix}"]
            b.number(f"SMAXSN{suffix}-1", value, 5, when.astimezone(PARIS))
        if self.producer:
            b.number("SINSTI", series["I"], 5)
            for label, table in (("SMAXIN", st.smax), ("SMAXIN-1", st.smax_prev)):
                value, when = table["I"]
                b.number(label, value, 5, when.astimezone(PARIS))
        end, curve = self._load_curve(st)
        ends = (end.astimezone(PARIS), (end - LOAD_CURVE_PERIOD).astimezone(PARIS))
        for name in ("CCASN", "CCAIN") if self.producer else ("CCASN",):
            b.number(name, curve[name], 5, ends[0])
            b.number(f"{name}-1", curve[f"{name}-1"], 5, ends[1])
        end, means = self._mean_voltages(st)
        for i, volts in enumerate(means):
            b.number(f"UMOY{i + 1}", volts, 3, end.astimezone(PARIS))
        b.word("STGE", self._stge(sample, cal, period))
        for number, begin, finish in cal.pointes:
            b.number(f"DPM{number}", 0, 2, begin)
            b.number(f"FPM{number}", 0, 2, finish)
        b.text("MSG1", MSG1, 32)
        b.word("PRM", self._prm)
        b.number("RELAIS", 1 if period.off_peak else 0, 3)  # relay 1 is the dry contact
        b.number("NTARF", period.supplier_index, 2)
        b.number("NJOURF", 0, 2)
        b.number("NJOURF+1", 0, 2)
        if self.contract == "TEMPO":
            b.word("PJOURF+1", _tempo_profile(cal.tomorrow or 1))
        else:
            b.word("PJOURF+1", _PROFILES[self.contract])
        if cal.next_profile is not None:
            b.word("PPOINTE", cal.next_profile)
        return b

    def _stge(self, sample: _Sample, cal: _Calendar, period: Period) -> str:
        """The status register (54E §6.2.3.14, TIC.md §1.8)."""
        v = 0x3A << 16  # standard TIC output, Euridis on with security, CPL New/Lock: every captured meter
        if not period.off_peak:
            v |= 1  # dry contact open outside HC
        if sample.total > self._kva * 1000:
            v |= 1 << 7  # over the reference power
        if self.producer:
            v |= 1 << 8
        if sample.total < 0:
            v |= 1 << 9  # active energy flowing out
        v |= (period.supplier_index - 1) << 10 | (period.distributor_index - 1) << 14
        v |= cal.today << 24 | cal.tomorrow << 26 | cal.notice << 28 | cal.peak << 30
        return f"{v:08X}"

    def _load_curve(self, st: _State) -> tuple[datetime, dict[str, int]]:
        """CCASN/CCAIN: mean active power of the last two complete 30-minute periods, stamped with their end."""
        end = _floor(st.t, LOAD_CURVE_PERIOD)
        if st.curve is None or st.curve[0] != end:
            now = self._mean_power(end - LOAD_CURVE_PERIOD, end)
            before = self._mean_power(end - 2 * LOAD_CURVE_PERIOD, end - LOAD_CURVE_PERIOD)
            st.curve = (end, {"CCASN": now[0], "CCAIN": now[1], "CCASN-1": before[0], "CCAIN-1": before[1]})
        return st.curve

    def _mean_power(self, begin: datetime, end: datetime) -> tuple[int, int]:
        drawn = injected = 0.0
        minutes = int((end - begin).total_seconds() // 60)
        for k in range(minutes):
            s = self._sample(begin + timedelta(minutes=k))
            p = s.total * s.pf
            drawn += max(p, 0.0)
            injected += max(-p, 0.0)
        return round(drawn / minutes), round(injected / minutes)

    def _mean_voltages(self, st: _State) -> tuple[datetime, list[int]]:
        """UMOYn: mean voltage of the last complete 10-minute period, stamped with its end."""
        end = _floor(st.t, UMOY_PERIOD)
        if st.umoy is None or st.umoy[0] != end:
            samples = [self._sample(end - timedelta(minutes=k + 1)).volts for k in range(10)]
            st.umoy = (end, [round(sum(v[i] for v in samples) / len(samples)) for i in range(self.phases)])
        return st.umoy


def _floor(t: datetime, period: timedelta) -> datetime:
    """``t`` rounded down to a multiple of ``period`` (UTC; French offsets are whole hours)."""
    return t - (t - _EPOCH) % period


def _default_address(seed: int, phases: int) -> str:
    """An ADS shaped like a real one (54E §2.2): manufacturer, year, meter type (64 mono, 76 tri), serial."""
    year = 18 + int(_unit(seed, _TAG_ID) * 6)
    return f"04{year:02d}{'76' if phases == 3 else '64'}{_digits(seed, 1, 6)}"


def _digits(seed: int, salt: int, n: int) -> str:
    return "".join(str(int(_unit(seed, _TAG_ID, salt, k) * 10)) for k in range(n))


def _check_start(start: datetime) -> None:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware (a meter's clock is local time with a DST season)")
    if not 2001 <= start.astimezone(PARIS).year <= 2098:
        raise ValueError("start must lie in 2001-2098: horodates carry a two-digit year (20YY)")


@lru_cache(maxsize=64)
def _day_plan(seed: int, day: date, phases: int, contract: str, isousc: int) -> _DayPlan:
    """The seeded shape of one day: level, phase split, appliance events, sky."""
    key = day.toordinal()

    def u(*k: int) -> float:
        return _unit(seed, _TAG_DAY, key, *k)

    scale = (0.8 + 0.4 * u(0)) * (0.8 + 0.8 * _winter(day)) * (1.5 if phases == 3 else 1.0)
    if phases == 3:
        weights = [0.8 + 0.6 * u(1, i) for i in range(3)]
        split = tuple(w / sum(weights) for w in weights)
    else:
        split = (1.0,)

    def event(name: str, at: float, minutes: float, power: float, phase_key: int) -> LoadEvent:
        start = _local(day, at)
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


# --- error injection -------------------------------------------------------------------------------------------

InjectionKind = Literal["bitflip", "eot", "truncate"]
INJECTION_KINDS: Final = ("bitflip", "eot", "truncate")


@dataclass(frozen=True, slots=True)
class Injection:
    """What :class:`ErrorInjector` did to one frame.

    ``offset`` is the byte flipped (bitflip) or where the frame was cut (eot, truncate: bytes from there on were
    not sent).  ``field`` says what the flipped byte was: ``stx``, ``etx``, ``lf``, ``cr``, ``label``,
    ``separator``, ``horodate``, ``data`` or ``checksum``; ``label`` names the group it belonged to, if any.
    """

    kind: InjectionKind
    offset: int
    bit: int | None = None
    field: str | None = None
    label: str | None = None


class ErrorInjector:
    """Corrupts frames the way a noisy line or a busy meter does, with probability ``rate`` per frame.

    * ``bitflip``: one of bits 0-6 of one byte between STX and ETX inclusive.  A bit-6 flip changes a byte by
      64 and leaves the 6-bit checksum valid, so only the label table's length and charset checks catch it
      (and nothing can catch it inside free text, where ``' '`` becoming ``'`'`` is still printable text).
    * ``eot``: the meter interrupts the frame and sends EOT (02E §1.5.2); the next frame starts with STX.
    * ``truncate``: the frame stops mid-way (a reconnect); the next frame starts with STX.

    Bit 7 is never flipped: it is the parity bit the receiver masks away, so flipping it would change nothing.
    ``counts`` holds how many frames got each kind of damage.

    >>> inj = ErrorInjector(1.0, seed=3)
    >>> data, what = inj.inject(b"\\x02\\nPTEC HP..  \\r\\x03")
    >>> what.kind in INJECTION_KINDS and data != b"\\x02\\nPTEC HP..  \\r\\x03"
    True
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate must be between 0 and 1, not {rate}")
        self.rate = rate
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)  # noqa: S311 - test noise, not cryptography

    def inject(self, data: bytes) -> tuple[bytes, Injection | None]:
        """``data`` (one frame, STX to ETX, possibly after an EOT) corrupted or not, and what was done."""
        rng = self._rng
        if rng.random() >= self.rate:
            return data, None
        stx = data.find(b"\x02")
        last = len(data) - 1
        kind: InjectionKind = rng.choices(INJECTION_KINDS, weights=(6, 2, 2))[0]
        self.counts[kind] += 1
        if kind == "bitflip":
            offset = rng.randint(stx, last)
            bit = rng.randint(0, 6)
            corrupted = bytearray(data)
            corrupted[offset] ^= 1 << bit
            where, label = _locate(data, offset)
            return bytes(corrupted), Injection(kind, offset, bit, where, label)
        offset = rng.randint(stx + 1, last)  # cut after STX and before ETX
        return data[:offset] + (EOT if kind == "eot" else b""), Injection(kind, offset)


def _locate(data: bytes, offset: int) -> tuple[str, str | None]:
    """Which part of which group byte ``offset`` of a frame is."""
    byte = data[offset]
    if offset == data.find(b"\x02"):
        return "stx", None
    if offset == len(data) - 1:
        return "etx", None
    if byte == 0x0A:
        return "lf", None
    start = data.rfind(b"\n", 0, offset) + 1
    end = data.find(b"\r", offset)
    group = data[start:end]
    sep = b"\t" if b"\t" in group else b" "
    label = group.split(sep, 1)[0].decode("ascii")
    pos = offset - start
    if offset == end:
        return "cr", label
    if pos == len(group) - 1:
        return "checksum", label
    seps = [i for i, c in enumerate(group[:-1]) if c == sep[0]]
    if sep == b" ":  # historique: label SP data SP chk (data never holds a space)
        seps = [seps[0], len(group) - 2]
    if pos in seps:
        return "separator", label
    if pos < seps[0]:
        return "label", label
    if len(seps) == 3 and pos < seps[1]:
        return "horodate", label
    return "data", label
