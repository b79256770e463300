"""A Linky meter, simulated: its configuration, what it remembers from frame to frame, and the frames it sends.

Pure like :mod:`appliance.tic`: no I/O, no threads, no wall clock.  Time is an argument (``start``), every
random choice comes from a hash of ``seed`` and the instant or day it concerns, so any instant of any day can be
replayed and two runs with the same arguments give the same bytes.  :mod:`appliance.simulator.output` puts the
frames on a wire.

The parts, each in its module (what a frame carries, and why: docs/PROTOCOL.md §2-§9):

* :mod:`~appliance.simulator.load`: the household's power, voltages and appliance events at any instant;
* :mod:`~appliance.simulator.tariffs`: the period in force, Tempo colours, EJP days, day profiles;
* :mod:`~appliance.simulator.groups`: the groups of each kind of frame and the readings they stand for;
* :mod:`~appliance.simulator.injection`: bit flips, EOT interruptions and cut frames, on demand;
* here, the meter itself.  **Indexes** integrate active power (apparent x power factor) frame by frame into the
  register of the tariff period in force, as whole Wh with the fraction carried over, so they never decrease and
  EAST is exactly the sum of EASF01-10 and of EASD01-04.  Daily maxima (SMAXSN) and the load curve (CCASN, UMOY)
  come from the same samples.  **Three-phase historique** switches to cycles of 20 short frames and one long frame
  while a phase is over its setting current and for one minute after, with EOT on each long-to-short switch
  (02E §2.5.4, Tableau 6), between the last long frame's ETX and the first short frame's STX.

Every :class:`SimFrame` carries the decoded content the frame must produce, built from the model's own numbers,
not by decoding, so a round trip through :class:`appliance.tic.Decoder` is a real check.

>>> from datetime import datetime
>>> sim = MeterSimulator(start=datetime(2024, 1, 15, 23, 0, tzinfo=PARIS), contract="HCHP")
>>> frame = next(sim.frames())
>>> frame.values["PTEC"], frame.values["OPTARIF"], frame.data[:1]
('HC..', 'HC..', b'\\x02')
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal

from appliance.simulator import groups, tariffs
from appliance.simulator.groups import LOAD_CURVE_PERIOD, UMOY_PERIOD, Builder, Nameplate
from appliance.simulator.load import Household, LoadEvent, Sample
from appliance.simulator.seeded import PARIS, TAG_GAP, TAG_ID, TAG_INDEX, floor, local, unit
from appliance.simulator.tariffs import CONTRACTS, SHARES, Calendar, Contract, Period
from appliance.tic import BAUDRATES
from appliance.tic.encode import EOT, encode_frame

__all__ = ["BAUDRATES", "BITS_PER_BYTE", "MeterSimulator", "MeterState", "Mode", "SimFrame"]

Mode = Literal["historique", "standard"]
#: Line speed per mode (02E §1.3.1.1, 54E §5.3.5); 7E1 is 10 bits on the wire per byte.
BITS_PER_BYTE: Final = 10
#: Silence between two frames (02E §1.5.2; 54E §5.3.6).
GAP_MIN, GAP_MAX = 0.0167, 0.0334
SHORT_CYCLE: Final = 20  # short frames per long frame while a phase is over (02E §2.5.4)
OVERRUN_HOLD: Final = timedelta(minutes=1)  # short frames go on one minute after the last overrun
_LINKY: Final = datetime(2015, 1, 1, tzinfo=UTC)


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


@dataclass(slots=True)
class MeterState:
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
    mode only (docs/PROTOCOL.md §9), so ``producer`` with ``mode="historique"`` is a ValueError.
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
    _plate: Nameplate = field(init=False, repr=False)
    _household: Household = field(init=False, repr=False)

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
        isousc = kva * 1000 // 200 // self.phases
        plate = Nameplate(ident, prm, self.contract, kva, isousc, self.phases, self.producer)
        object.__setattr__(self, "_plate", plate)
        object.__setattr__(self, "_household", Household(self.seed, self.phases, self.contract, isousc, self.producer))

    # -- public helpers -----------------------------------------------------------------------------------------

    @property
    def baudrate(self) -> int:
        """1200 (historique) or 9600 (standard)."""
        return BAUDRATES[self.mode]

    @property
    def address(self) -> str:
        """ADCO / ADSC."""
        return self._plate.address

    @property
    def isousc(self) -> int:
        """ISOUSC, and the per-phase setting current: PREF / 200 V, a third of it per phase on three-phase meters
        (docs/PROTOCOL.md §6)."""
        return self._plate.isousc

    def period(self, at: datetime) -> Period:
        """The tariff period in force at ``at``."""
        lt = at.astimezone(PARIS)
        return tariffs.period(self.contract, lt, tariffs.calendar(self.contract, self.seed, lt))

    def events(self, day: date) -> tuple[LoadEvent, ...]:
        """The appliance events planned for ``day`` (local), including the seeded overloads."""
        return self._household.events(day)

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

    def _run(self, st: MeterState, step: float | None) -> Iterator[SimFrame]:
        while True:
            t = st.t
            lt = t.astimezone(PARIS)
            sample = self._household.sample(t)
            cal = tariffs.calendar(self.contract, self.seed, lt)
            tariff = tariffs.period(self.contract, lt, cal)
            self._track_maxima(st, lt, sample)
            frame = self._frame(st, lt, sample, cal, tariff)
            yield frame
            dt = frame.duration if step is None else step
            self._integrate(st, sample, tariff, dt)
            st.t = t + timedelta(seconds=dt)
            st.count += 1

    # -- state --------------------------------------------------------------------------------------------------

    def _initial_state(self, t: datetime) -> MeterState:
        # Linky meters went in from 2015: a few MWh from the seed, plus a household's yearly use since then.
        years = max(0.0, (t - _LINKY).total_seconds() / (365.25 * 86400))
        per_year = 4.5e6 * (1.5 if self.phases == 3 else 1.0)
        total = int(1e6 + 9e6 * unit(self.seed, TAG_INDEX) + years * per_year)
        supplier = [int(total * share) for share in SHARES[self.contract]]
        supplier[0] += total - sum(supplier)
        supplier += [0] * (10 - len(supplier))
        distributor = [supplier[0], supplier[1], 0, 0] if self.contract == "HCHP" else [total, 0, 0, 0]
        injected = int(years * 2.0e6 * unit(self.seed, TAG_INDEX, 1)) if self.producer else 0
        reactive = [total // 4, injected // 50, injected // 20, total // 50]
        lt = t.astimezone(PARIS)
        day = lt.date()
        st = MeterState(t, supplier, distributor, injected, reactive, [0.0] * 4, day, {}, {})
        st.smax = self._sampled_maxima(local(day, 0), t)
        st.smax_prev = self._sampled_maxima(local(day - timedelta(days=1), 0), local(day, 0))
        return st

    def _sampled_maxima(self, begin: datetime, end: datetime) -> dict[str, tuple[int, datetime]]:
        """Daily maxima before the simulation started, from the load every five minutes (the meter's history)."""
        best: dict[str, tuple[int, datetime]] = {}
        t = begin
        while True:
            for key, value in self._household.sample(t).series(self.producer).items():
                if key not in best or value > best[key][0]:
                    best[key] = (value, t)
            t += timedelta(minutes=5)
            if t >= end:
                break
        return best

    def _track_maxima(self, st: MeterState, lt: datetime, sample: Sample) -> None:
        day = lt.date()
        if day != st.day:
            if day == st.day + timedelta(days=1):
                st.smax_prev = st.smax
            else:
                st.smax_prev = self._sampled_maxima(local(day - timedelta(days=1), 0), local(day, 0))
            st.smax = {}
            st.day = day
        for key, value in sample.series(self.producer).items():
            if key not in st.smax or value > st.smax[key][0]:
                st.smax[key] = (value, st.t)

    def _integrate(self, st: MeterState, sample: Sample, period: Period, dt: float) -> None:
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

    def _frame(self, st: MeterState, lt: datetime, sample: Sample, cal: Calendar, period: Period) -> SimFrame:
        short = False
        b: Builder
        if self.mode == "standard":
            b = groups.standard(self._plate, st, lt, sample, cal, period, self._load_curve(st), self._mean_voltages(st))
        else:
            currents = [round(abs(x) / u) for x, u in zip(sample.net, sample.volts, strict=True)]
            over = [i for i, amps in enumerate(currents) if amps > self.isousc]
            short = self.phases == 3 and self._short_next(st, over)
            if short:
                b = groups.short(self._plate, currents, over)
            else:
                b = groups.historique(self._plate, st, sample, cal, period, currents)
        data = encode_frame(b.groups)
        if short and st.last_short is False:
            data = EOT + data  # 02E Tableau 6: EOT on the switch from long to short frames
        st.last_short = short
        gap = GAP_MIN + (GAP_MAX - GAP_MIN) * unit(self.seed, TAG_GAP, st.count)
        duration = len(data) * BITS_PER_BYTE / self.baudrate + gap
        return SimFrame(data, b.values, b.stamps, lt, duration, self.mode, short)

    def _short_next(self, st: MeterState, over: list[int]) -> bool:
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

    def _load_curve(self, st: MeterState) -> tuple[datetime, dict[str, int]]:
        """CCASN/CCAIN: mean active power of the last two complete 30-minute periods, stamped with their end."""
        end = floor(st.t, LOAD_CURVE_PERIOD)
        if st.curve is None or st.curve[0] != end:
            now = self._mean_power(end - LOAD_CURVE_PERIOD, end)
            before = self._mean_power(end - 2 * LOAD_CURVE_PERIOD, end - LOAD_CURVE_PERIOD)
            st.curve = (end, {"CCASN": now[0], "CCAIN": now[1], "CCASN-1": before[0], "CCAIN-1": before[1]})
        return st.curve

    def _mean_power(self, begin: datetime, end: datetime) -> tuple[int, int]:
        drawn = injected = 0.0
        minutes = int((end - begin).total_seconds() // 60)
        for k in range(minutes):
            s = self._household.sample(begin + timedelta(minutes=k))
            p = s.total * s.pf
            drawn += max(p, 0.0)
            injected += max(-p, 0.0)
        return round(drawn / minutes), round(injected / minutes)

    def _mean_voltages(self, st: MeterState) -> tuple[datetime, list[int]]:
        """UMOYn: mean voltage of the last complete 10-minute period, stamped with its end."""
        end = floor(st.t, UMOY_PERIOD)
        if st.umoy is None or st.umoy[0] != end:
            samples = [self._household.sample(end - timedelta(minutes=k + 1)).volts for k in range(10)]
            st.umoy = (end, [round(sum(v[i] for v in samples) / len(samples)) for i in range(self.phases)])
        return st.umoy


def _default_address(seed: int, phases: int) -> str:
    """An ADS shaped like a real one (54E §2.2): manufacturer, year, meter type (64 mono, 76 tri), serial."""
    year = 18 + int(unit(seed, TAG_ID) * 6)
    return f"04{year:02d}{'76' if phases == 3 else '64'}{_digits(seed, 1, 6)}"


def _digits(seed: int, salt: int, n: int) -> str:
    return "".join(str(int(unit(seed, TAG_ID, salt, k) * 10)) for k in range(n))


def _check_start(start: datetime) -> None:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware (a meter's clock is local time with a DST season)")
    if not 2001 <= start.astimezone(PARIS).year <= 2098:
        raise ValueError("start must lie in 2001-2098: horodates carry a two-digit year (20YY)")
