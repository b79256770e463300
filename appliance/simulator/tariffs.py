"""The contracts' tariff calendars: which period is in force (PTEC, NTARF, LTARF, the dry contact), the Tempo
colours, the EJP peak days and the day profiles, at any instant of the meter's local clock.

HC runs 22:00-06:00 (HCHP and Tempo).  Tempo colours are drawn per day from the seed (red only on winter weekdays,
never white on Sundays), the Tempo day runs 06:00-06:00 and tomorrow's colour is announced from 20:00.  EJP
"pointe mobile" days are some winter weekdays, 07:00 to 01:00 the next day, with a 30-minute notice (PEJP).
Mobile peaks are PM1 on white and PM2 on red Tempo days, PM1 on EJP days, as in the captured meters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Final, Literal

from appliance.simulator.seeded import TAG_EJP, TAG_TEMPO, unit, wall

__all__ = ["CONTRACTS", "Calendar", "Contract", "Period", "calendar", "period"]

Contract = Literal["BASE", "HCHP", "TEMPO", "EJP"]
CONTRACTS: Final = ("BASE", "HCHP", "TEMPO", "EJP")

# Tempo colours use the STGE code (bits 24-27): 1 blue, 2 white, 3 red; index 0 is "not announced".
_COLOUR_NAME: Final = ("", "BLEU", "BLANC", "ROUGE")
DEMAIN: Final = ("----", "BLEU", "BLAN", "ROUG")
_PTEC_COLOUR: Final = ("", "B", "W", "R")
_NONUTILE: Final = "NONUTILE"


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
NGTF: Final = {"BASE": "BASE", "HCHP": "H PLEINE/CREUSE", "TEMPO": "TEMPO", "EJP": "EJP"}
OPTARIF: Final = {"BASE": "BASE", "HCHP": "HC..", "TEMPO": "BBR(", "EJP": "EJP."}
INDEXES: Final[dict[str, tuple[str, ...]]] = {  # historique labels, by supplier index 1..n
    "BASE": ("BASE",),
    "HCHP": ("HCHC", "HCHP"),
    "TEMPO": ("BBRHCJB", "BBRHPJB", "BBRHCJW", "BBRHPJW", "BBRHCJR", "BBRHPJR"),
    "EJP": ("EJPHN", "EJPHPM"),
}
# How a lifetime's consumption splits between the supplier registers (for the initial indexes).
SHARES: Final[dict[str, tuple[float, ...]]] = {
    "BASE": (1.0,),
    "HCHP": (0.42, 0.58),
    "TEMPO": (0.3, 0.45, 0.07, 0.1, 0.03, 0.05),
    "EJP": (0.95, 0.05),
}


def _profile(*slots: str) -> str:
    """PJOURF+1 / PPOINTE: 11 blocks ``HHMMSSSS``, unused ones NONUTILE (54E §6.2.3.22)."""
    return " ".join([*slots, *[_NONUTILE] * (11 - len(slots))])


def tempo_profile(colour: int) -> str:
    """The day profile of a Tempo day of ``colour``: HC until 06:00, HP until 22:00, HC again."""
    hc, hp = 2 * colour - 1, 2 * colour
    return _profile(f"0000400{hc}", f"0600400{hp}", f"2200400{hc}")  # the shape of the captured Tempo meter


PROFILES: Final = {
    "BASE": _profile("00008001"),
    "HCHP": _profile("0000C001", "06008002", "2200C001"),  # dry contact closed (C) in HC, as Enedis's fixture
    "EJP": _profile("00004001"),
}
_EJP_PEAK_PROFILE: Final = _profile("00004001", "07004002")


@dataclass(frozen=True, slots=True)
class Calendar:
    """Mobile peaks and Tempo colours at an instant (STGE bits 24-31, DPMn/FPMn, PEJP, DEMAIN, PPOINTE)."""

    today: int = 0  # Tempo colour of the current Tempo day
    tomorrow: int = 0  # announced colour of the next one, 0 until 20:00
    notice: int = 0  # PMn announced
    peak: int = 0  # PMn in progress
    pointes: tuple[tuple[int, datetime, datetime], ...] = ()  # (n, start, end), local wall time, naive
    next_profile: str | None = None  # PPOINTE, while a peak is announced


@lru_cache(maxsize=64)
def tempo_colour(seed: int, day: date) -> int:
    """The Tempo colour of the Tempo day starting at 06:00 on ``day``: about 22 red and 43 white days a year."""
    u = unit(seed, TAG_TEMPO, day.toordinal())
    weekday = day.weekday()
    winter = day.month in (11, 12, 1, 2, 3)
    if winter and weekday < 5 and u < 0.2:
        return 3
    if weekday != 6 and u < (0.4 if winter else 0.06):
        return 2
    return 1


@lru_cache(maxsize=64)
def ejp_day(seed: int, day: date) -> bool:
    """EJP "pointe mobile" days: about 22 a year, winter weekdays only."""
    return day.month in (11, 12, 1, 2, 3) and day.weekday() < 5 and unit(seed, TAG_EJP, day.toordinal()) < 0.2


def calendar(contract: str, seed: int, lt: datetime) -> Calendar:
    """Colours and mobile peaks at the local time ``lt`` (empty for BASE and HCHP)."""
    if contract == "TEMPO":
        return _tempo_calendar(seed, lt)
    if contract == "EJP":
        return _ejp_calendar(seed, lt)
    return Calendar()


def _tempo_calendar(seed: int, lt: datetime) -> Calendar:
    shifted = lt.replace(tzinfo=None) - timedelta(hours=6)  # the Tempo day runs 06:00 to 06:00
    day = shifted.date()
    today = tempo_colour(seed, day)
    tomorrow = tempo_colour(seed, day + timedelta(days=1)) if shifted.hour >= 14 else 0
    pointes = []
    if today >= 2:
        end = day + timedelta(days=2 if tomorrow == today else 1)
        pointes.append((today - 1, wall(day, 6), wall(end, 6)))
    if tomorrow >= 2 and tomorrow != today:
        pointes.append((tomorrow - 1, wall(day + timedelta(days=1), 6), wall(day + timedelta(days=2), 6)))
    return Calendar(
        today=today,
        tomorrow=tomorrow,
        notice=tomorrow - 1 if tomorrow >= 2 else 0,
        peak=today - 1 if today >= 2 else 0,
        pointes=tuple(sorted(pointes)),
        next_profile=tempo_profile(tomorrow) if tomorrow >= 2 else None,
    )


def _ejp_calendar(seed: int, lt: datetime) -> Calendar:
    day = lt.date()
    minutes = lt.hour * 60 + lt.minute
    yesterday = day - timedelta(days=1)
    if ejp_day(seed, day) and minutes >= 7 * 60:
        return Calendar(peak=1, pointes=((1, wall(day, 7), wall(day + timedelta(days=1), 1)),))
    if lt.hour < 1 and ejp_day(seed, yesterday):
        return Calendar(peak=1, pointes=((1, wall(yesterday, 7), wall(day, 1)),))
    if ejp_day(seed, day) and minutes >= 6 * 60 + 30:
        return Calendar(
            notice=1,
            pointes=((1, wall(day, 7), wall(day + timedelta(days=1), 1)),),
            next_profile=_EJP_PEAK_PROFILE,
        )
    return Calendar()


def period(contract: str, lt: datetime, cal: Calendar) -> Period:
    """The period in force at the local time ``lt``, given that instant's calendar."""
    off_peak = lt.hour >= 22 or lt.hour < 6
    if contract == "HCHP":
        return _HC if off_peak else _HP
    if contract == "TEMPO":
        colour = cal.today
        kind = "HC" if off_peak else "HP"
        index = 2 * colour - (1 if off_peak else 0)
        return Period(f"{kind}J{_PTEC_COLOUR[colour]}", index, 1, f"{kind}  {_COLOUR_NAME[colour]}", off_peak)
    if contract == "EJP":
        return _PM if cal.peak else _HN
    return _BASE
