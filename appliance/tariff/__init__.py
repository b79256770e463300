"""Energy and cost per tariff period, from the meter's own indexes (docs/TARIFF.md).

:mod:`~appliance.tariff.settings` is the ``[tariff]`` schema, :mod:`~appliance.tariff.periods` the period names,
:mod:`~appliance.tariff.pricebook` and :mod:`~appliance.tariff.defaults` say which price applies on a day.
"""

from appliance.tariff.defaults import DEFAULTS, DefaultPrices, default_prices
from appliance.tariff.periods import CONTRACT_PERIODS, CONTRACTS, PERIODS, UNATTRIBUTED
from appliance.tariff.pricebook import Price, PriceBook
from appliance.tariff.settings import PriceSetConfig, TariffConfig, parse_tariff

__all__ = [
    "CONTRACTS",
    "CONTRACT_PERIODS",
    "DEFAULTS",
    "PERIODS",
    "UNATTRIBUTED",
    "DefaultPrices",
    "Price",
    "PriceBook",
    "PriceSetConfig",
    "TariffConfig",
    "default_prices",
    "parse_tariff",
]
