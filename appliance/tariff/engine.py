"""Energy and cost per tariff period, per day and per month, from the differences of the meter's own indexes.

Pure: readings and instants in, a ledger and records out; no I/O, no clock of its own (``at`` is an argument),
so every rule below is tested with hand-made instants.  :mod:`appliance.tariff.store` keeps the state on disk.

Rules (docs/TARIFF.md says the same for users):

* **The index tells.**  Each register's increase goes to the register's own period (BBRHPJW -> tempo_white_hp,
  EASF04 -> the 4th period of the calendar).  A register whose period nobody names is counted as
  ``unattributed``: its energy is real, its price is not guessed.  PTEC/NTARF only say the period *now*, for the
  current price.
* **Days** are local days of ``tariff.timezone`` (Europe/Paris by default), from one local midnight to the next,
  so DST days last 23 or 25 hours.  An increase seen across a gap (the appliance was off, frames were lost) is
  spread over the gap in proportion to time and split at each local midnight; the split per period stays exact,
  only the split per day of such a gap is an estimate.  Whole Wh: the remainder of a split goes to the day with
  the largest share, so no Wh is created or lost.
* **Resets and impossible jumps.**  An index lower than before, or higher than the meter could have counted in
  the time elapsed (twice its subscribed or cut-off power, plus 20 Wh of rounding), is *suspect*: it is not
  counted and the old value stays the reference.  When the next reading of that index goes on from the suspect
  one, the change is real: a lower one is a reset (counted from the new value), a higher one an impossible jump
  (its energy is not counted, ``rejected_wh`` says how much).  When the next reading goes on from the old value
  instead, the suspect one was a corrupted reading (``glitches``) and is forgotten.
* **Meter change** (another ADCO/ADSC) and **mode change** (historique <-> standard): the indexes of the old
  meter or mode are dropped, the ledger stays (it is the household's, not the meter's).
* **Missing indexes**: a register a frame lacks keeps its last value; its increase is counted, over the whole
  gap, when it reappears.
* **Clock**: an instant before the last one used (the clock went back) counts no energy until time has passed the
  last instant again; the indexes keep the energy meanwhile, so nothing is lost.
* **Tempo days** run 06:00 to 06:00 and are named by the date they start; at 06:00 the meter's own switch from HC
  to HP (and its colour) decides which Tempo day a frame belongs to, not the appliance's clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from appliance.tariff.config import TariffConfig
from appliance.tariff.meter import FALLBACK_VA, MeterReading, read_meter
from appliance.tariff.periods import CONTRACT_PERIODS, UNATTRIBUTED, is_off_peak
from appliance.tariff.pricebook import Price, PriceBook, days_in_month

__all__ = ["STATE_VERSION", "Counters", "TariffEngine"]

STATE_VERSION: Final = 1
DAYS_KEPT: Final = 70  # days of detail: the current and the previous month are always whole
MONTHS_KEPT: Final = 36
SLACK_WH: Final = 20  # index rounding and reception jitter allowed on top of the physical limit
PHYSICS_FACTOR: Final = 2.0  # a meter never counts twice its cut-off power for long: the breaker opens
_CONTRACT_OF: Final = {p: c for c, periods in CONTRACT_PERIODS.items() for p in periods}


@dataclass(slots=True)
class Counters:
    """What the engine refused or noticed, since the state began (persisted with it)."""

    resets: int = 0
    glitches: int = 0
    rejected_jumps: int = 0
    rejected_wh: int = 0
    meter_changes: int = 0
    mode_changes: int = 0
    clock_backwards: int = 0


@dataclass(slots=True)
class _Register:
    """The last accepted reading of one energy index, and a suspect one awaiting confirmation."""

    value: int
    at: float
    pending: tuple[int, float] | None = None  # a suspect reading waiting for the next one to decide


def _r6(x: float) -> float:
    return round(x, 6)


class TariffEngine:
    """Feed it frames (or readings) in order; ask it for records.

    >>> from appliance.tariff.config import parse_tariff
    >>> from zoneinfo import ZoneInfo
    >>> eng = TariffEngine(parse_tariff({"prices": [{"since": "2026-01-01", "base": 0.2}]}))
    >>> t = datetime(2026, 3, 2, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    >>> _ = eng.update_frame("historique", {"OPTARIF": "BASE", "BASE": 1000, "PTEC": "TH.."}, "1", t)
    >>> _ = eng.update_frame("historique", {"OPTARIF": "BASE", "BASE": 1500, "PTEC": "TH.."}, "1",
    ...                      t + timedelta(minutes=5))
    >>> today = eng.snapshot(t)["today"]
    >>> today["wh"], today["cost"]
    (500, 0.1)
    """

    def __init__(self, cfg: TariffConfig, state: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.tz = ZoneInfo(cfg.timezone)
        self.book = PriceBook(cfg)
        self.counters = Counters()
        self.live: MeterReading | None = None
        self.live_at: float | None = None
        self._meter: str | None = None
        self._mode: str | None = None
        self._contract: str | None = None
        self._kva: int | None = cfg.subscribed_kva or None
        self._regs: dict[str, _Register] = {}
        self._last_t: float | None = None
        self._backwards = False
        self._days: dict[date, dict[str, int]] = {}
        self._tempo_days: dict[date, str] = {}
        self._tempo_day: date | None = None
        self._closed: dict[str, dict[str, list[Any]]] = {}  # "YYYY-MM" -> period -> [wh, cost | None]
        if state is not None:
            self._restore(state)

    # --- input -------------------------------------------------------------------------------------------
    def read(self, mode: str, values: Mapping[str, object], meter: str | None = None) -> MeterReading:
        """The :class:`MeterReading` of a frame under this configuration."""
        return read_meter(
            mode,
            values,
            meter,
            contract=self.cfg.contract,
            standard_indexes=self.cfg.standard_indexes,
            subscribed_kva=self.cfg.subscribed_kva,
        )

    def update_frame(self, mode: str, values: Mapping[str, object], meter: str | None, at: datetime) -> MeterReading:
        """Read a frame and count what its indexes say; returns the reading."""
        reading = self.read(mode, values, meter)
        self.update(reading, at)
        return reading

    def update(self, reading: MeterReading, at: datetime) -> None:
        """Count the energy the registers of ``reading`` moved since the previous reading, at instant ``at``."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        t = at.timestamp()
        if reading.meter is not None:
            if self._meter is not None and reading.meter != self._meter:
                self.counters.meter_changes += 1
                self._regs.clear()
            self._meter = reading.meter
        if self._mode is not None and reading.mode != self._mode:
            self.counters.mode_changes += 1
            self._regs.clear()
        self._mode = reading.mode
        self.live, self.live_at = reading, t
        if reading.contract is not None:
            self._contract = reading.contract
        if reading.kva:
            self._kva = reading.kva
        if self._last_t is not None and t < self._last_t:
            if not self._backwards:
                self.counters.clock_backwards += 1
            self._backwards = True
            return
        self._backwards = False
        self._last_t = t
        va = reading.max_va or FALLBACK_VA
        for label, value in reading.registers.items():
            self._register(label, value, t, reading.register_periods.get(label), va)
        self._note_tempo(reading, t)
        self._prune()

    def _cap(self, elapsed: float, va: int) -> float:
        return va * max(elapsed, 0.0) / 3600 * PHYSICS_FACTOR + SLACK_WH

    def _register(self, label: str, value: int, t: float, period: str | None, va: int) -> None:
        r = self._regs.get(label)
        if r is None:
            self._regs[label] = _Register(value, t)
            return
        delta = value - r.value
        normal = 0 <= delta <= self._cap(t - r.at, va)
        if r.pending is not None:
            pv, pt = r.pending
            if normal:
                self.counters.glitches += 1  # the suspect reading stood alone: a corrupted value
            elif pv <= value <= pv + self._cap(t - pt, va):
                if pv < r.value:
                    self.counters.resets += 1
                else:
                    self.counters.rejected_jumps += 1
                    self.counters.rejected_wh += pv - r.value
                self._count(period, value - pv, pt, t)
                self._regs[label] = _Register(value, t)
                return
            else:
                self.counters.glitches += 1
                r.pending = (value, t)
                return
            r.pending = None
        if normal:
            self._count(period, delta, r.at, t)
            r.value, r.at = value, t
        else:
            r.pending = (value, t)

    def _count(self, period: str | None, wh: int, t0: float, t1: float) -> None:
        if wh <= 0:
            return
        key = period or UNATTRIBUTED
        for day, part in self._split(wh, t0, t1):
            if part:
                ledger = self._days.setdefault(day, {})
                ledger[key] = ledger.get(key, 0) + part

    def _day_of(self, t: float) -> date:
        return datetime.fromtimestamp(t, self.tz).date()

    def _split(self, wh: int, t0: float, t1: float) -> list[tuple[date, int]]:
        """``wh`` counted between ``t0`` and ``t1``, shared between the local days of the interval by time."""
        last = self._day_of(t1)
        day = self._day_of(t0)
        if t1 <= t0 or day == last:
            return [(last, wh)]
        spans: list[tuple[date, float]] = []
        cur = t0
        while True:
            midnight = self._midnight(day + timedelta(days=1)).timestamp()
            end = min(midnight, t1)
            spans.append((day, end - cur))
            if end >= t1:
                break
            cur, day = end, day + timedelta(days=1)
        total = t1 - t0
        exact = [wh * s / total for _, s in spans]
        parts = [math.floor(x) for x in exact]
        order = sorted(range(len(spans)), key=lambda i: exact[i] - parts[i], reverse=True)
        for i in order[: wh - sum(parts)]:
            parts[i] += 1
        return [(d, p) for (d, _), p in zip(spans, parts, strict=True)]

    def _note_tempo(self, reading: MeterReading, t: float) -> None:
        if reading.tempo_today is None:
            return
        local = datetime.fromtimestamp(t, self.tz)
        off_peak = is_off_peak(reading.period)
        # The meter's HC -> HP switch at 06:00 says when a Tempo day starts; the clock only places a day's
        # HC hours (22:00-06:00) on the right side of midnight, far from any switch.
        if off_peak is False:
            day = local.date()
        elif off_peak is True:
            day = local.date() if local.hour >= 12 else local.date() - timedelta(days=1)
        else:
            day = local.date() if local.hour >= 6 else local.date() - timedelta(days=1)
        self._tempo_day = day
        self._tempo_days[day] = reading.tempo_today
        if reading.tempo_tomorrow is not None:
            self._tempo_days[day + timedelta(days=1)] = reading.tempo_tomorrow

    def _prune(self) -> None:
        if len(self._days) <= DAYS_KEPT and len(self._tempo_days) <= DAYS_KEPT + 2:
            return
        newest = max(self._days, default=None)
        if newest is None:
            return
        limit = newest - timedelta(days=DAYS_KEPT)
        for day in [d for d in self._days if d <= limit]:
            closed = self._closed.setdefault(f"{day:%Y-%m}", {})
            for period, wh in self._days.pop(day).items():
                price = self._price(day, period)
                entry = closed.setdefault(period, [0, None])
                entry[0] += wh
                if price is not None:
                    entry[1] = _r6((entry[1] or 0.0) + wh / 1000 * price.value)
        for day in [d for d in self._tempo_days if d <= limit]:
            del self._tempo_days[day]
        for month in sorted(self._closed)[:-MONTHS_KEPT]:
            del self._closed[month]

    # --- output ------------------------------------------------------------------------------------------
    @property
    def meter(self) -> str | None:
        """The meter (ADCO/ADSC) of the last reading that named one."""
        return self._meter

    @property
    def mode(self) -> str | None:
        """The TIC mode of the last reading."""
        return self._mode

    @property
    def contract(self) -> str | None:
        """The contract: configured, else the last one a reading named."""
        return self._contract

    def _midnight(self, day: date) -> datetime:
        """The local midnight that starts ``day`` (DST-aware: days of 23 and 25 hours)."""
        return datetime.combine(day, time(), tzinfo=self.tz)

    def _price(self, day: date, period: str) -> Price | None:
        if period == UNATTRIBUTED:
            return None
        return self.book.price(day, period, _CONTRACT_OF.get(period), self._kva)

    def current_price(self, at: datetime) -> Price | None:
        """The price per kWh of the period the meter said last, on the local day of ``at``."""
        return self.price_at(self.live.period if self.live is not None else None, at)

    def price_at(self, period: str | None, at: datetime) -> Price | None:
        """The price per kWh of ``period`` on the local day of ``at``; None when nothing prices it."""
        if period is None:
            return None
        return self._price(at.astimezone(self.tz).date(), period)

    def tempo(self) -> dict[str, Any] | None:
        """The Tempo colours the meter gave last: ``{"day", "today", "tomorrow"}`` (colours or None)."""
        if self._tempo_day is None:
            return None
        day = self._tempo_day
        return {
            "day": day.isoformat(),
            "today": self._tempo_days.get(day),
            "tomorrow": self._tempo_days.get(day + timedelta(days=1)),
        }

    def _totals(self, days: Iterable[date], closed: Mapping[str, list[Any]] | None = None) -> dict[str, Any]:
        periods: dict[str, dict[str, Any]] = {}
        defaults: list[Price] = []
        configured = False
        for day in days:
            for period, wh in self._days.get(day, {}).items():
                entry = periods.setdefault(period, {"wh": 0, "cost": None, "unpriced_wh": 0})
                entry["wh"] += wh
                price = self._price(day, period)
                if price is None:
                    entry["unpriced_wh"] += wh
                    continue
                entry["cost"] = (entry["cost"] or 0.0) + wh / 1000 * price.value
                if price.origin == "default":
                    defaults.append(price)
                else:
                    configured = True
        for period, (wh, cost) in (closed or {}).items():
            entry = periods.setdefault(period, {"wh": 0, "cost": None, "unpriced_wh": 0})
            entry["wh"] += wh
            if cost is None:
                entry["unpriced_wh"] += wh
            else:
                entry["cost"] = (entry["cost"] or 0.0) + cost
        unattributed = periods.pop(UNATTRIBUTED, {"wh": 0})["wh"]
        for entry in periods.values():
            if entry["cost"] is not None:
                entry["cost"] = _r6(entry["cost"])
        costs = [e["cost"] for e in periods.values() if e["cost"] is not None]
        oldest = min(defaults, key=lambda p: p.since, default=None)
        return {
            "periods": dict(sorted(periods.items())),
            "wh": sum(e["wh"] for e in periods.values()) + unattributed,
            "cost": _r6(sum(costs)) if costs else None,
            "unpriced_wh": sum(e["unpriced_wh"] for e in periods.values()) + unattributed,
            "unattributed_wh": unattributed,
            "prices": {
                "config": configured,
                "default": None
                if oldest is None
                else {"since": oldest.since.isoformat(), "current": all(p.current for p in defaults)},
            },
        }

    def _subscription(self, days: Iterable[date]) -> float | None:
        shares = [self.book.subscription_share(d, self._contract, self._kva) for d in days]
        known = [s for s in shares if s is not None]
        return _r6(sum(known)) if known else None

    def snapshot(self, at: datetime) -> dict[str, Any]:
        """The record published for people and for Home Assistant: the period and price now, the Tempo colours,
        energy and cost today and this month per period (docs/TARIFF.md, "The record")."""
        local = at.astimezone(self.tz)
        today = local.date()
        month_key = f"{today:%Y-%m}"
        month_days = [today.replace(day=d) for d in range(1, today.day + 1)]
        day_totals = self._totals([today])
        day_totals["date"] = today.isoformat()
        day_totals["start"] = self._midnight(today).isoformat()
        day_totals["subscription"] = self._subscription([today])
        in_month = sorted(d for d in self._days if f"{d:%Y-%m}" == month_key)
        month_totals = self._totals(in_month, self._closed.get(month_key))
        month_totals["month"] = month_key
        month_totals["start"] = self._midnight(today.replace(day=1)).isoformat()
        month_totals["days"] = days_in_month(today)
        month_totals["subscription"] = self._subscription(month_days)
        for totals in (day_totals, month_totals):
            parts = [x for x in (totals["cost"], totals["subscription"]) if x is not None]
            totals["total"] = _r6(sum(parts)) if parts else None
        price = self.current_price(at)
        live = self.live
        return {
            "at": local.isoformat(timespec="seconds"),
            "currency": self.cfg.currency,
            "contract": self._contract,
            "kva": self._kva,
            "period": live.period if live else None,
            "period_label": live.period_label if live else None,
            "price": None if price is None else price.to_json(),
            "tempo": self.tempo(),
            "today": day_totals,
            "month": month_totals,
            "counters": asdict(self.counters),
        }

    def day_energy(self, day: date) -> dict[str, int]:
        """The Wh counted on a local day, by period (``unattributed`` included)."""
        return dict(self._days.get(day, {}))

    # --- state -------------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything a restart needs, as JSON-ready data: the ledger and the index values it was counted to,
        together, so that a restart from it neither counts an increase twice nor loses one."""
        return {
            "version": STATE_VERSION,
            "meter": self._meter,
            "mode": self._mode,
            "contract": self._contract,
            "kva": self._kva,
            "last_t": self._last_t,
            "registers": {k: {"wh": r.value, "at": r.at} for k, r in sorted(self._regs.items())},
            "days": {d.isoformat(): dict(sorted(p.items())) for d, p in sorted(self._days.items())},
            "tempo_days": {d.isoformat(): c for d, c in sorted(self._tempo_days.items())},
            "tempo_day": None if self._tempo_day is None else self._tempo_day.isoformat(),
            "months": {m: {p: list(v) for p, v in sorted(x.items())} for m, x in sorted(self._closed.items())},
            "counters": asdict(self.counters),
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`to_state` output; raise ValueError on anything malformed (the store starts afresh then)."""
        try:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"state version {state.get('version')!r}, expected {STATE_VERSION}")
            self._meter = _opt(state.get("meter"), str)
            self._mode = _opt(state.get("mode"), str)
            self._contract = _opt(state.get("contract"), str)
            self._kva = self.cfg.subscribed_kva or _opt(state.get("kva"), int)
            last = state.get("last_t")
            self._last_t = None if last is None else _finite(last)
            for label, r in dict(state.get("registers") or {}).items():
                self._regs[str(label)] = _Register(_wh(r["wh"]), _finite(r["at"]))
            for day, periods in dict(state.get("days") or {}).items():
                self._days[date.fromisoformat(day)] = {str(p): _wh(v) for p, v in dict(periods).items()}
            for day, colour in dict(state.get("tempo_days") or {}).items():
                self._tempo_days[date.fromisoformat(day)] = str(colour)
            tday = state.get("tempo_day")
            self._tempo_day = None if tday is None else date.fromisoformat(str(tday))
            for month, periods in dict(state.get("months") or {}).items():
                self._closed[str(month)] = {
                    str(p): [_wh(v[0]), None if v[1] is None else _finite(v[1])] for p, v in dict(periods).items()
                }
            names = {f.name for f in fields(Counters)}
            for key, value in dict(state.get("counters") or {}).items():
                if key in names:
                    setattr(self.counters, key, _wh(value))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"malformed tariff state: {e}") from None


def _opt(value: Any, kind: type) -> Any:
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{value!r} is not a {kind.__name__}")


def _wh(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{value!r} is not a count of Wh")


def _finite(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{value!r} is not a finite number")
