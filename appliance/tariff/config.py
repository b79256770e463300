"""``[tariff]``: prices per period, dated price sets, the currency, how often the state is saved, the clock rule.

Declared with the configuration engine of :mod:`appliance.config` (``opt()``, ``build_section``), so it reads, reports
and documents itself exactly like the other sections: every problem at once with its key path, unknown keys
refused.  Prices are refused when NaN or infinite (TOML allows ``nan`` and ``inf``), negative or absurd.

Example::

    [tariff]
    contract = "auto"             # from the meter: OPTARIF (historique) or NGTF (standard)

    [[tariff.prices]]
    since = 2026-02-01            # a TOML date or "2026-02-01"
    subscription_per_month = 15.68
    base = 0.19398

A price set is in force from local midnight of ``since`` until the next set's ``since``.  A key a set leaves out
keeps the value of the set before it, so a later set names only what changed.  A period priced by no set takes
the built-in regulated price (:mod:`appliance.tariff.defaults`) while ``default_prices`` is true, else its cost
stays unknown (its energy is still counted).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.config import ConfigError, IsoDate, build_section, opt
from appliance.tariff.periods import CONTRACT_PERIODS, PERIODS

__all__ = ["MAX_PRICE", "PriceSetConfig", "TariffConfig", "parse_tariff"]

MAX_PRICE = 100.0  # per kWh: EJP's peak is ~1.09 EUR; anything near 100 is a unit mistake (cents, MWh)
MAX_SUBSCRIPTION = 10_000.0  # per month


def _price(value: float | None) -> str | None:
    if value is None:
        return None
    if not math.isfinite(value):
        return f"must be a finite number (got {value!r})"
    if not 0 <= value <= MAX_PRICE:
        return f"must be between 0 and {MAX_PRICE:g} per kWh (got {value!r})"
    return None


def _subscription(value: float | None) -> str | None:
    if value is None:
        return None
    if not math.isfinite(value):
        return f"must be a finite number (got {value!r})"
    if not 0 <= value <= MAX_SUBSCRIPTION:
        return f"must be between 0 and {MAX_SUBSCRIPTION:g} per month (got {value!r})"
    return None


def _date(value: str) -> str | None:
    try:
        date.fromisoformat(value)
    except ValueError:
        return f"must be a date YYYY-MM-DD (got {value!r})"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return f"must be a date YYYY-MM-DD (got {value!r})"
    return None


def _timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r} (an IANA name such as Europe/Paris)"
    return None


def _currency(value: str) -> str | None:
    if not re.fullmatch(r"[A-Z]{3}", value):
        return f"must be an ISO 4217 code such as EUR (got {value!r})"
    return None


def _periods(value: list[str]) -> str | None:
    bad = [p for p in value if p not in PERIODS]
    if bad:
        return f"unknown period(s) {bad} (expected some of: {', '.join(PERIODS)})"
    if len(value) > 10:
        return f"at most 10 indexes (EASF01-EASF10), got {len(value)}"
    return None


def _p(doc: str) -> Any:
    return opt(None, doc + " (per kWh)", check=_price, example="0.2")


@dataclass(frozen=True)
class PriceSetConfig:
    """Prices in force from ``since`` until the next set.  Every price is per kWh, taxes included as billed."""

    since: IsoDate = opt(
        IsoDate(""), "Local date from which these prices apply (YYYY-MM-DD).", check=_date, example="2026-02-01"
    )
    subscription_per_month: float | None = opt(
        None, "Subscription (abonnement) per month.", check=_subscription, example="15.68"
    )
    base: float | None = _p("BASE")
    hc: float | None = _p("HC/HP: heures creuses")
    hp: float | None = _p("HC/HP: heures pleines")
    tempo_blue_hc: float | None = _p("Tempo: blue days, heures creuses")
    tempo_blue_hp: float | None = _p("Tempo: blue days, heures pleines")
    tempo_white_hc: float | None = _p("Tempo: white days, heures creuses")
    tempo_white_hp: float | None = _p("Tempo: white days, heures pleines")
    tempo_red_hc: float | None = _p("Tempo: red days, heures creuses")
    tempo_red_hp: float | None = _p("Tempo: red days, heures pleines")
    ejp_normal: float | None = _p("EJP: heures normales")
    ejp_peak: float | None = _p("EJP: heures de pointe mobile")

    def validate(self) -> list[tuple[str, str]]:
        return [] if self.since else [("since", "is required: the date these prices start")]

    @property
    def start(self) -> date:
        """``since`` as a date (only called on a validated set)."""
        return date.fromisoformat(self.since)

    def prices(self) -> dict[str, float]:
        """The per-kWh prices this set gives, by period."""
        out: dict[str, float] = {}
        for period in PERIODS:
            value = getattr(self, period)
            if value is not None:
                out[period] = float(value)
        return out


@dataclass(frozen=True)
class TariffConfig:
    """Energy and cost per tariff period, computed from the meter's own indexes (docs/TARIFF.md)."""

    enabled: bool = opt(True, "Compute energy and cost per period, per day and per month.")
    contract: Literal["auto", "BASE", "HCHP", "TEMPO", "EJP"] = opt(
        "auto", "The contract: auto reads it from the meter (OPTARIF in historique mode, NGTF in standard mode)."
    )
    subscribed_kva: int = opt(
        0,
        "Subscribed power in kVA, for the default prices and the check of impossible jumps "
        "(0: from the meter, PREF or ISOUSC).",
        lo=0,
        hi=36,
    )
    currency: str = opt("EUR", "ISO 4217 code of the prices.", check=_currency)
    timezone: str = opt("Europe/Paris", "Where days and months begin and end (IANA time zone).", check=_timezone)
    default_prices: bool = opt(
        True,
        "Use the built-in regulated prices (tarif bleu, dated: docs/TARIFF.md) for periods no price set covers.",
    )
    standard_indexes: list[str] = opt(
        [],
        "Standard mode: the period EASF01, EASF02... count, in order ([] = the regulated contract's calendar).",
        check=_periods,
        example='["hc", "hp"]',
    )
    save_interval: float = opt(
        900.0, "Seconds between two writes of the state (and one at a clean stop).", lo=60, hi=86_400
    )
    wait_for_clock_sync: bool = opt(
        True,
        "Count frames only once the kernel says the clock is synchronised (NTP, as timedatectl shows it): a Raspberry "
        "Pi has no real-time clock and starts with the time it stopped at, so a frame stamped before the sync would "
        "land on the wrong day; the meter's indexes keep that energy until then. false: trust the clock as it is "
        "(a machine with a real-time clock, or without any time server).",
    )
    prices: list[PriceSetConfig] = opt(
        [], "Prices from a date on ([[tariff.prices]], one table per date; later tables name what changed)."
    )

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        dates = [p.since for p in self.prices if p is not None and p.since and _date(p.since) is None]
        if len(set(dates)) != len(dates):
            errors.append(("prices", f"two price sets start on the same date ({sorted(dates)})"))
        if self.default_prices and self.currency != "EUR" and _currency(self.currency) is None:
            errors.append(("currency", "the built-in prices are in EUR: set default_prices = false to use another"))
        if self.contract != "auto" and self.standard_indexes:
            allowed = set(CONTRACT_PERIODS[self.contract])
            other = [p for p in self.standard_indexes if p not in allowed]
            if other:
                errors.append(("standard_indexes", f"{other} are not periods of the {self.contract} contract"))
        return errors

    def price_sets(self) -> list[PriceSetConfig]:
        """The price sets, oldest first."""
        return sorted(self.prices, key=lambda p: p.since)


def parse_tariff(data: Any, prefix: str = "tariff") -> TariffConfig:
    """Validate the ``[tariff]`` table (as ``tomllib`` returns it); raise :class:`ConfigError` listing every problem.

    >>> parse_tariff({"prices": [{"since": "2026-02-01", "base": 0.19398}]}).prices[0].base
    0.19398
    """
    errors: list[str] = []
    cfg = build_section(TariffConfig, data, prefix, errors)
    if errors:
        raise ConfigError(errors, prefix)
    assert isinstance(cfg, TariffConfig)
    return cfg
