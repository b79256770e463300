"""Energy and cost per tariff period, from the meter's own indexes (docs/TARIFF.md).

Pure parts: :mod:`~appliance.tariff.config` (the ``[tariff]`` schema), :mod:`~appliance.tariff.periods`,
:mod:`~appliance.tariff.meter` (what a frame says), :mod:`~appliance.tariff.pricebook` and
:mod:`~appliance.tariff.defaults` (which price applies), :mod:`~appliance.tariff.engine` (the ledger).
:mod:`~appliance.tariff.store` is the only one that touches the disk; :mod:`~appliance.tariff.publisher` decides
when the record goes to the fan-out, :mod:`~appliance.tariff.lines` writes it as line protocol.
"""

from appliance.tariff.config import PriceSetConfig, TariffConfig, parse_tariff
from appliance.tariff.defaults import DEFAULTS, DefaultPrices, default_prices
from appliance.tariff.engine import Counters, TariffEngine
from appliance.tariff.meter import MeterReading, read_meter
from appliance.tariff.periods import CONTRACT_PERIODS, CONTRACTS, PERIODS, UNATTRIBUTED
from appliance.tariff.pricebook import Price, PriceBook
from appliance.tariff.publisher import TariffPublisher
from appliance.tariff.store import TariffKeeper, TariffStore, atomic_write

__all__ = [
    "CONTRACTS",
    "CONTRACT_PERIODS",
    "DEFAULTS",
    "PERIODS",
    "UNATTRIBUTED",
    "Counters",
    "DefaultPrices",
    "MeterReading",
    "Price",
    "PriceBook",
    "PriceSetConfig",
    "TariffConfig",
    "TariffEngine",
    "TariffKeeper",
    "TariffPublisher",
    "TariffStore",
    "atomic_write",
    "default_prices",
    "parse_tariff",
    "read_meter",
]
