"""Built-in prices: the French regulated tariff (tarif réglementé de vente, "tarif bleu"), taxes included.

These are *dated defaults*, so that the appliance shows costs out of the box; every record and the live page
say when a cost was computed with one of them, and from which date it is.  ``docs/TARIFF.md`` lists each figure
with its source.  What could be confirmed when this table was written (the primary source is the CRE's open data,
files ``Option_Base.csv`` and ``Option_Tempo.csv`` of the data set "Historique des tarifs réglementés de vente
d'électricité pour les consommateurs résidentiels"):

* **BASE from 2026-02-01** (CRE open data): 6 kVA 0.19398 EUR/kWh and 188.20 EUR/year; 9 kVA 0.19266 EUR/kWh
  and 235.90 EUR/year (from 2026-02-01 the kWh of 9 kVA and above is cheaper than below).
* **TEMPO from 2025-08-01** (CRE open data): the six prices below, 186.46 EUR/year at 6 kVA, 235.12 at 9 kVA.
  The grid of 2026-02-01 (a rise reported around +6 %) could not be confirmed from a primary source: this set
  is older than the current grid, and marked so (``current = False``).
* **HC/HP from 2026-02-01**: HC 0.1579, HP 0.2065 EUR/kWh as reported from the CRE's deliberation n° 2026-06
  (secondary source); the subscription could not be confirmed, so none is counted.
* **EJP from 2025-08-01**: normal 0.1418, peak 1.0867 EUR/kWh (secondary source; EJP is closed to new
  customers); no subscription counted.

The per-kWh prices of a grid are the same for every subscribed power except BASE from 2026-02-01 (below 9 kVA
and from 9 kVA); the subscription is only known for 6 and 9 kVA here, so another power gets no subscription.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Final

__all__ = ["DEFAULTS", "DefaultPrices", "default_prices"]


@dataclass(frozen=True, slots=True)
class DefaultPrices:
    """One dated grid of one contract: per-kWh prices by period, the subscription per subscribed power."""

    contract: str
    since: date
    prices: dict[str, float]
    subscription_per_month: dict[int, float] = field(default_factory=dict)  # kVA -> per month
    #: Prices for 9 kVA and above when they differ (BASE from 2026-02-01).
    prices_from_9kva: dict[str, float] = field(default_factory=dict)
    source: str = ""
    #: False when a newer grid exists that could not be confirmed: the figures are older than the regulated price.
    current: bool = True

    def prices_for(self, kva: int | None) -> dict[str, float]:
        if kva is not None and kva >= 9 and self.prices_from_9kva:
            return self.prices_from_9kva
        return self.prices


_CRE = "CRE open data, Historique des tarifs réglementés de vente d'électricité (résidentiels)"

DEFAULTS: Final[tuple[DefaultPrices, ...]] = (
    DefaultPrices(
        "BASE",
        date(2026, 2, 1),
        {"base": 0.19398},
        {6: round(188.20 / 12, 4), 9: round(235.90 / 12, 4)},
        {"base": 0.19266},
        source=f"{_CRE}, Option_Base.csv",
    ),
    DefaultPrices(
        "TEMPO",
        date(2025, 8, 1),
        {
            "tempo_blue_hc": 0.1232,
            "tempo_blue_hp": 0.1494,
            "tempo_white_hc": 0.1391,
            "tempo_white_hp": 0.1730,
            "tempo_red_hc": 0.1460,
            "tempo_red_hp": 0.6468,
        },
        {6: round(186.46 / 12, 4), 9: round(235.12 / 12, 4)},
        source=f"{_CRE}, Option_Tempo.csv",
        current=False,
    ),
    DefaultPrices(
        "HCHP",
        date(2026, 2, 1),
        {"hc": 0.1579, "hp": 0.2065},
        source="CRE deliberation n° 2026-06 of 14 January 2026, as reported (secondary source)",
    ),
    DefaultPrices(
        "EJP",
        date(2025, 8, 1),
        {"ejp_normal": 0.1418, "ejp_peak": 1.0867},
        source="EDF tarif bleu option EJP, as reported for the 2025-2026 season (secondary source)",
    ),
)


def default_prices(contract: str | None, day: date) -> DefaultPrices | None:
    """The built-in grid of ``contract`` in force on ``day`` (the latest one starting on or before it), or None.

    Before the oldest built-in grid there is none: a past day is never priced with a later price.

    >>> default_prices("BASE", date(2026, 3, 1)).prices
    {'base': 0.19398}
    >>> default_prices("BASE", date(2025, 3, 1)) is None
    True
    """
    best: DefaultPrices | None = None
    for grid in DEFAULTS:
        if grid.contract == contract and grid.since <= day and (best is None or grid.since > best.since):
            best = grid
    return best
