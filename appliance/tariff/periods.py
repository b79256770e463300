"""Tariff periods, and how each mode of the TIC names them.  Pure data: no I/O, no clock.

A *period* is what a price applies to.  Its key is the same everywhere: in ``[[tariff.prices]]``, in the cost
records, on the live page.

=================  ==========================  =====================  ==========================
period             historique index (02E)      historique PTEC        standard, EDF calendar
=================  ==========================  =====================  ==========================
``base``           BASE                        ``TH..``               EASF01 (NTARF 1)
``hc`` / ``hp``    HCHC / HCHP                 ``HC..`` / ``HP..``    EASF01 / EASF02
``tempo_<c>_hc``   BBRHCJB / BBRHCJW / BBRHCJR ``HCJB/HCJW/HCJR``     EASF01 / EASF03 / EASF05
``tempo_<c>_hp``   BBRHPJB / BBRHPJW / BBRHPJR ``HPJB/HPJW/HPJR``     EASF02 / EASF04 / EASF06
``ejp_normal``     EJPHN                       ``HN..``               EASF01
``ejp_peak``       EJPHPM                      ``PM..``               EASF02
=================  ==========================  =====================  ==========================

A historique index names its period itself.  A standard EASFxx register does not: what index n counts is the
supplier's calendar (NGTF), so the table is per contract, the regulated-tariff one by default (the one the
simulator follows and Domoticz's NTARF table documents) and configurable (``tariff.standard_indexes``).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COLOURS",
    "CONTRACTS",
    "CONTRACT_PERIODS",
    "DEMAIN_COLOURS",
    "HISTORIQUE_REGISTERS",
    "PERIODS",
    "PERIOD_NAMES",
    "PTEC_PERIODS",
    "UNATTRIBUTED",
    "colour_of",
    "is_off_peak",
]

CONTRACTS: Final = ("BASE", "HCHP", "TEMPO", "EJP")
COLOURS: Final = ("blue", "white", "red")

CONTRACT_PERIODS: Final[dict[str, tuple[str, ...]]] = {
    "BASE": ("base",),
    "HCHP": ("hc", "hp"),
    "TEMPO": (
        "tempo_blue_hc",
        "tempo_blue_hp",
        "tempo_white_hc",
        "tempo_white_hp",
        "tempo_red_hc",
        "tempo_red_hp",
    ),
    "EJP": ("ejp_normal", "ejp_peak"),
}
PERIODS: Final = tuple(p for periods in CONTRACT_PERIODS.values() for p in periods)
#: What people call each period (French, like the meter's own labels): Home Assistant states, dashboards.
PERIOD_NAMES: Final[dict[str, str]] = {
    "base": "Toutes heures",
    "hc": "Heures creuses",
    "hp": "Heures pleines",
    "tempo_blue_hc": "Heures creuses jours bleus",
    "tempo_blue_hp": "Heures pleines jours bleus",
    "tempo_white_hc": "Heures creuses jours blancs",
    "tempo_white_hp": "Heures pleines jours blancs",
    "tempo_red_hc": "Heures creuses jours rouges",
    "tempo_red_hp": "Heures pleines jours rouges",
    "ejp_normal": "Heures normales",
    "ejp_peak": "Heures de pointe mobile",
}
#: Energy the meter counted in a register whose period nobody said (a standard index outside the calendar).
UNATTRIBUTED: Final = "unattributed"

HISTORIQUE_REGISTERS: Final[dict[str, str]] = {
    "BASE": "base",
    "HCHC": "hc",
    "HCHP": "hp",
    "EJPHN": "ejp_normal",
    "EJPHPM": "ejp_peak",
    "BBRHCJB": "tempo_blue_hc",
    "BBRHPJB": "tempo_blue_hp",
    "BBRHCJW": "tempo_white_hc",
    "BBRHPJW": "tempo_white_hp",
    "BBRHCJR": "tempo_red_hc",
    "BBRHPJR": "tempo_red_hp",
}

PTEC_PERIODS: Final[dict[str, str]] = {
    "TH..": "base",
    "HC..": "hc",
    "HP..": "hp",
    "HN..": "ejp_normal",
    "PM..": "ejp_peak",
    "HCJB": "tempo_blue_hc",
    "HPJB": "tempo_blue_hp",
    "HCJW": "tempo_white_hc",
    "HPJW": "tempo_white_hp",
    "HCJR": "tempo_red_hc",
    "HPJR": "tempo_red_hp",
}

DEMAIN_COLOURS: Final[dict[str, str | None]] = {"----": None, "BLEU": "blue", "BLAN": "white", "ROUG": "red"}


def colour_of(period: str | None) -> str | None:
    """The Tempo colour a period belongs to (``tempo_white_hp`` -> ``white``), None for other periods."""
    if period is None or not period.startswith("tempo_"):
        return None
    return period.split("_")[1]


def is_off_peak(period: str | None) -> bool | None:
    """True for heures creuses periods, False for the others of a two-period day, None when it does not apply."""
    if period is None:
        return None
    if period == "hc" or period.endswith("_hc"):
        return True
    if period == "hp" or period.endswith("_hp"):
        return False
    return None
