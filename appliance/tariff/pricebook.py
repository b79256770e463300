"""Which price applies to a period on a day: the configured dated sets first, then the built-in defaults.

Pure: the configuration in, prices out.  Days are local dates (the engine turns instants into days).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from appliance.tariff.config import TariffConfig
from appliance.tariff.defaults import default_prices

__all__ = ["Price", "PriceBook", "days_in_month"]

Origin = Literal["config", "default"]


@dataclass(frozen=True, slots=True)
class Price:
    """A per-kWh price (or a monthly subscription), where it comes from and the date it has been in force since.

    ``current`` is False for a built-in grid known to be older than the regulated price in force.
    """

    value: float
    origin: Origin
    since: date
    current: bool = True

    def to_json(self) -> dict[str, object]:
        return {"value": self.value, "origin": self.origin, "since": self.since.isoformat(), "current": self.current}


class PriceBook:
    """Prices of a configuration.

    >>> from appliance.tariff.config import parse_tariff
    >>> book = PriceBook(parse_tariff({"prices": [{"since": "2026-01-01", "hc": 0.15, "hp": 0.2},
    ...                                           {"since": "2026-08-01", "hp": 0.21}]}))
    >>> book.price(date(2026, 9, 1), "hc", "HCHP", 6).value, book.price(date(2026, 9, 1), "hp", "HCHP", 6).value
    (0.15, 0.21)
    """

    def __init__(self, cfg: TariffConfig) -> None:
        self.cfg = cfg
        # Each set with what it inherits: a set names only what changed.
        self._sets: list[tuple[date, dict[str, Price], Price | None]] = []
        prices: dict[str, Price] = {}
        subscription: Price | None = None
        for s in cfg.price_sets():
            start = s.start
            prices = {**prices, **{p: Price(v, "config", start) for p, v in s.prices().items()}}
            if s.subscription_per_month is not None:
                subscription = Price(float(s.subscription_per_month), "config", start)
            self._sets.append((start, prices, subscription))

    def _set(self, day: date) -> tuple[dict[str, Price], Price | None]:
        found: tuple[dict[str, Price], Price | None] = ({}, None)
        for start, prices, subscription in self._sets:
            if start > day:
                break
            found = (prices, subscription)
        return found

    def price(self, day: date, period: str, contract: str | None, kva: int | None) -> Price | None:
        """The per-kWh price of ``period`` on ``day``, or None when nothing prices it."""
        prices, _ = self._set(day)
        if period in prices:
            return prices[period]
        if not self.cfg.default_prices:
            return None
        grid = default_prices(contract, day)
        if grid is None:
            return None
        value = grid.prices_for(kva).get(period)
        return None if value is None else Price(value, "default", grid.since, grid.current)

    def subscription(self, day: date, contract: str | None, kva: int | None) -> Price | None:
        """The subscription per month in force on ``day``, or None when unknown."""
        _, configured = self._set(day)
        if configured is not None:
            return configured
        if not self.cfg.default_prices or kva is None:
            return None
        grid = default_prices(contract, day)
        if grid is None or kva not in grid.subscription_per_month:
            return None
        return Price(grid.subscription_per_month[kva], "default", grid.since, grid.current)

    def subscription_share(self, day: date, contract: str | None, kva: int | None) -> float | None:
        """The part of the monthly subscription one day carries: monthly / days in that month."""
        monthly = self.subscription(day, contract, kva)
        if monthly is None:
            return None
        return monthly.value / days_in_month(day)


def days_in_month(day: date) -> int:
    """The number of days of ``day``'s month (``calendar.monthrange`` without the calendar and locale modules).

    >>> days_in_month(date(2024, 2, 10)), days_in_month(date(2025, 12, 31))
    (29, 31)
    """
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return (following - first).days
