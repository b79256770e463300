"""The [tariff] schema (every error at once, with its key path; NaN and infinities refused) and which price
applies on a day: configured dated sets, inherited keys, the built-in dated defaults."""

from __future__ import annotations

import tomllib
from datetime import date
from typing import Any

import pytest

from appliance.config import ConfigError
from appliance.tariff import DEFAULTS, PERIODS, PriceBook, TariffConfig, default_prices, parse_tariff


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_tariff(data)
    return e.value.errors


# --- the [tariff] schema ---------------------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    cfg = parse_tariff({})
    assert cfg == TariffConfig()
    assert cfg.contract == "auto" and cfg.timezone == "Europe/Paris" and cfg.save_interval == 900.0


def test_toml_section_with_dated_price_sets() -> None:
    text = """
[tariff]
contract = "HCHP"
subscribed_kva = 9
[[tariff.prices]]
since = 2026-08-01
hp = 0.21
[[tariff.prices]]
since = "2026-02-01"
subscription_per_month = 19.5
hc = 0.1579
hp = 0.2065
"""
    cfg = parse_tariff(tomllib.loads(text)["tariff"])
    assert [p.since for p in cfg.price_sets()] == ["2026-02-01", "2026-08-01"]
    book = PriceBook(cfg)
    assert book.price(date(2026, 7, 31), "hp", "HCHP", 9).value == 0.2065  # type: ignore[union-attr]
    aug = book.price(date(2026, 8, 1), "hp", "HCHP", 9)
    assert aug is not None and aug.value == 0.21 and aug.origin == "config" and aug.since == date(2026, 8, 1)
    assert book.price(date(2026, 8, 1), "hc", "HCHP", 9).value == 0.1579  # type: ignore[union-attr]  # inherited
    assert book.subscription(date(2026, 9, 1), "HCHP", 9).value == 19.5  # type: ignore[union-attr]


def test_every_error_at_once_with_its_key_path() -> None:
    errs = errors_of(
        {
            "contract": "FLAT",
            "currency": "euros",
            "timezone": "Mars/Olympus",
            "save_interval": 10,
            "colour": "blue",
            "standard_indexes": ["hc", "night"],
            "prices": [
                {"since": "2026-02-30", "base": float("nan")},
                {"base": float("inf"), "hc": -0.1, "subscription_per_month": float("-inf")},
                {"since": "2026-03-01", "hp": 250.0, "ejp_peak": "1.0"},
            ],
        }
    )
    assert errs == [
        "tariff.colour: unknown key (expected one of: enabled, contract, subscribed_kva, currency, timezone, "
        "default_prices, standard_indexes, save_interval, wait_for_clock_sync, prices)",
        "tariff.contract: must be 'auto' or 'BASE' or 'HCHP' or 'TEMPO' or 'EJP' (got 'FLAT')",
        "tariff.currency: must be an ISO 4217 code such as EUR (got 'euros')",
        "tariff.timezone: unknown time zone 'Mars/Olympus' (an IANA name such as Europe/Paris)",
        "tariff.standard_indexes: unknown period(s) ['night'] (expected some of: " + ", ".join(PERIODS) + ")",
        "tariff.save_interval: must be at least 60 (got 10.0)",
        "tariff.prices[0].since: must be a date YYYY-MM-DD (got '2026-02-30')",
        "tariff.prices[0].base: must be a finite number (got nan)",
        "tariff.prices[1].subscription_per_month: must be a finite number (got -inf)",
        "tariff.prices[1].base: must be a finite number (got inf)",
        "tariff.prices[1].hc: must be between 0 and 100 per kWh (got -0.1)",
        "tariff.prices[1].since: is required: the date these prices start",
        "tariff.prices[2].hp: must be between 0 and 100 per kWh (got 250.0)",
        "tariff.prices[2].ejp_peak: must be a number (got str '1.0')",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prices": [{"since": "2026-01-01"}, {"since": "2026-01-01"}]}, "tariff.prices: two price sets start"),
        ({"currency": "USD"}, "tariff.currency: the built-in prices are in EUR"),
        ({"contract": "BASE", "standard_indexes": ["hc"]}, "tariff.standard_indexes: ['hc'] are not periods"),
        ({"prices": [{"since": "20260101"}]}, "must be a date YYYY-MM-DD"),
        ({"subscribed_kva": 40}, "tariff.subscribed_kva: must be at most 36"),
        ({"prices": "0.2"}, "tariff.prices: must be a list"),
    ],
)
def test_individual_errors(data: Any, message: str) -> None:
    assert any(message in e for e in errors_of(data)), errors_of(data)


def test_toml_nan_and_inf_are_refused() -> None:
    data = tomllib.loads("[[prices]]\nsince = 2026-01-01\nbase = nan\nhc = inf\n")
    assert errors_of(data) == [
        "tariff.prices[0].base: must be a finite number (got nan)",
        "tariff.prices[0].hc: must be a finite number (got inf)",
    ]


# --- prices ----------------------------------------------------------------------------------------------------


def test_default_prices_are_dated_and_never_applied_before_their_date() -> None:
    book = PriceBook(parse_tariff({}))
    base = book.price(date(2026, 3, 1), "base", "BASE", 6)
    assert base is not None and base.value == 0.19398 and base.origin == "default"
    assert base.since == date(2026, 2, 1) and base.current
    assert book.price(date(2026, 3, 1), "base", "BASE", 9).value == 0.19266  # type: ignore[union-attr]
    assert book.price(date(2026, 1, 31), "base", "BASE", 6) is None  # before the oldest built-in grid
    tempo = book.price(date(2026, 3, 1), "tempo_red_hp", "TEMPO", 6)
    assert tempo is not None and tempo.value == 0.6468 and not tempo.current  # older than the current grid
    assert book.subscription(date(2026, 3, 1), "BASE", 6).value == round(188.20 / 12, 4)  # type: ignore[union-attr]
    assert book.subscription(date(2026, 3, 1), "BASE", 12) is None  # not known for 12 kVA
    assert book.subscription(date(2026, 3, 1), "HCHP", 6) is None  # not confirmed
    assert PriceBook(parse_tariff({"default_prices": False})).price(date(2026, 3, 1), "base", "BASE", 6) is None
    for grid in DEFAULTS:
        assert grid.source and all(0 < v < 2 for v in grid.prices.values())
    assert default_prices("EJP", date(2026, 1, 1)).prices["ejp_peak"] == 1.0867  # type: ignore[union-attr]


def test_configured_price_wins_over_default_and_a_later_set_over_an_earlier_one() -> None:
    cfg = parse_tariff(
        {"prices": [{"since": "2026-02-01", "base": 0.3}, {"since": "2026-03-01", "subscription_per_month": 20.0}]}
    )
    book = PriceBook(cfg)
    assert book.price(date(2026, 3, 5), "base", "BASE", 6).value == 0.3  # type: ignore[union-attr]
    assert book.price(date(2026, 3, 5), "hc", "HCHP", 6).value == 0.1579  # type: ignore[union-attr]  # default
    assert book.subscription(date(2026, 2, 5), "BASE", 6).origin == "default"  # type: ignore[union-attr]
    assert book.subscription_share(date(2026, 3, 5), "BASE", 6) == pytest.approx(20.0 / 31)


def test_the_section_is_part_of_the_configuration_file() -> None:
    """[tariff] in teleinfo.toml: the same validation through the whole file (TOML dates, NaN refused, key paths)."""
    from appliance.config import parse_config, render_example

    cfg = parse_config('[tariff]\ncontract = "BASE"\n[[tariff.prices]]\nsince = 2026-02-01\nbase = 0.19398\n')
    assert cfg.tariff.contract == "BASE" and cfg.tariff.prices[0].since == "2026-02-01"
    assert cfg.tariff == parse_tariff({"contract": "BASE", "prices": [{"since": "2026-02-01", "base": 0.19398}]})
    with pytest.raises(ConfigError) as e:
        parse_config("[[tariff.prices]]\nsince = 2026-02-01T10:00:00\nbase = nan\n[tariff.x]\n")
    assert e.value.errors == [
        "tariff.x: unknown key (expected one of: enabled, contract, subscribed_kva, currency, timezone, "
        "default_prices, standard_indexes, save_interval, wait_for_clock_sync, prices)",
        "tariff.prices[0].since: must be a date YYYY-MM-DD (got datetime 2026-02-01 10:00:00)",
        "tariff.prices[0].base: must be a finite number (got nan)",
        "tariff.prices[0].since: is required: the date these prices start",
    ]
    example = render_example()
    assert "[tariff]" in example.splitlines() and "# [[tariff.prices]]" in example.splitlines()
