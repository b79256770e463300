"""Interpretation of structured TIC fields: horodates, STGE, RELAIS, day profiles, OPTARIF.

All functions are pure and total: they return None (or raise nothing) on input that a caller has already
validated with the label table, and are only handed validated data.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "decode_optarif",
    "decode_ppot",
    "decode_profile",
    "decode_relais",
    "decode_stge",
    "parse_horodate",
]

_OFFSETS = {"H": "+01:00", "h": "+01:00", "E": "+02:00", "e": "+02:00", " ": ""}
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def parse_horodate(raw: bytes) -> tuple[str, bool] | None:
    """``SAAMMJJhhmmss`` -> (ISO 8601 text, clock degraded), or None if it is not a real date.

    54E §6.2.1.1: the season letter is H (winter, UTC+1) or E (summer, UTC+2); lowercase means the meter's
    clock is in degraded mode; a space means "not applicable" (DPM/FPM), which gives local time without an
    offset.  The digits must form a real calendar date and time.

    >>> parse_horodate(b"E240924225642")
    ('2024-09-24T22:56:42+02:00', False)
    >>> parse_horodate(b" 250123060000")
    ('2025-01-23T06:00:00', False)
    >>> parse_horodate(b"H250230120000") is None, parse_horodate(b"H250101126000") is None
    (True, True)
    """
    if len(raw) != 13:
        return None
    # A standard frame has a dozen horodates and DATE changes every frame, but they share a few hours: the
    # season, date and hour are checked once per hour seen (a memo), the minutes and seconds every time.
    head = raw[:9]
    hour = _HOURS.get(head)
    if hour is None:
        hour = _hour(head)
        if len(_HOURS) >= _HOURS_MAX:
            _HOURS.clear()
        _HOURS[head] = hour
    tail = raw[9:]
    if hour is _NOT_A_DATE or not tail.isdigit() or tail[0] > 0x35 or tail[2] > 0x35:  # minutes, seconds < 60
        return None
    prefix, offset, degraded = hour
    t = tail.decode("ascii")
    return f"{prefix}{t[0:2]}:{t[2:4]}{offset}", degraded


_NOT_A_DATE: Final = ("", "", False)
_HOURS: dict[bytes, tuple[str, str, bool]] = {}
_HOURS_MAX: Final = 256  # entries of about 200 bytes: a few kB


def _hour(head: bytes) -> tuple[str, str, bool]:
    """``SAAMMJJhh`` -> (ISO 8601 up to the hour and its colon, the UTC offset, clock degraded), or
    :data:`_NOT_A_DATE`."""
    season = chr(head[0])
    offset = _OFFSETS.get(season)
    digits = head[1:]
    if offset is None or not digits.isdigit():
        return _NOT_A_DATE
    # The calendar check datetime() would do, in integers.
    v, hour = divmod(int(digits), 100)
    v, day = divmod(v, 100)
    year, month = divmod(v, 100)
    if not (1 <= month <= 12 and hour < 24):
        return _NOT_A_DATE
    if not 1 <= day <= (29 if month == 2 and year % 4 == 0 else _MONTH_DAYS[month]):  # 2000-2099: every 4th year
        return _NOT_A_DATE
    d = digits.decode("ascii")
    return f"20{d[0:2]}-{d[2:4]}-{d[4:6]}T{d[6:8]}:", offset, season in "he"


_CUT_OFF = (
    "closed",
    "open_overpower",
    "open_overvoltage",
    "open_load_shedding",
    "open_cpl_euridis_order",
    "open_overheat_over_imax",
    "open_overheat_under_imax",
    "unknown",
)
_EURIDIS = {0: "disabled", 1: "enabled_unsecured", 2: "unknown", 3: "enabled_secured"}
_CPL = {0: "new_unlock", 1: "new_lock", 2: "registered", 3: "unknown"}
_COLOUR = (None, "blue", "white", "red")


def decode_stge(hex_text: str) -> dict[str, Any]:
    """Decode the 32-bit status register STGE (54E §6.2.3.14, docs/PROTOCOL.md §8) into named fields.

    >>> decode_stge("003A0001")["supplier_index"]
    1
    """
    v = int(hex_text, 16)
    return {
        "dry_contact_open": bool(v & 1),
        "cut_off_device": _CUT_OFF[(v >> 1) & 0x7],
        "terminal_cover_open": bool(v >> 4 & 1),
        "overvoltage": bool(v >> 6 & 1),
        "over_reference_power": bool(v >> 7 & 1),
        "producer": bool(v >> 8 & 1),
        "negative_active_energy": bool(v >> 9 & 1),
        "supplier_index": (v >> 10 & 0xF) + 1,
        "distributor_index": (v >> 14 & 0x3) + 1,
        "clock_degraded": bool(v >> 16 & 1),
        "tic_mode": "standard" if v >> 17 & 1 else "historique",
        "euridis": _EURIDIS[v >> 19 & 0x3],
        "cpl_status": _CPL[v >> 21 & 0x3],
        "cpl_synchronised": bool(v >> 23 & 1),
        "tempo_today": _COLOUR[v >> 24 & 0x3],
        "tempo_tomorrow": _COLOUR[v >> 26 & 0x3],
        "mobile_peak_notice": v >> 28 & 0x3,
        "mobile_peak": v >> 30 & 0x3,
    }


def decode_relais(value: int) -> list[bool]:
    """RELAIS (54E §6.2.3.19): relay n is bit n-1; returns 8 booleans, relay 1 first.

    >>> [i + 1 for i, closed in enumerate(decode_relais(140)) if closed]
    [3, 4, 8]
    """
    return [bool(value >> bit & 1) for bit in range(8)]


def decode_profile(text: str) -> list[dict[str, Any] | None]:
    """PJOURF+1 / PPOINTE (54E §6.2.3.22-23): 11 slots ``HHMMSSSS``, unused ones ``NONUTILE`` (None).

    SSSS is a 16-bit action: bits 0-3 supplier index (1-10, 0 or >10 = unchanged), bits 4-10 virtual
    contacts 1-7, bits 14-15 dry-contact command.
    """
    slots: list[dict[str, Any] | None] = []
    for block in text.split(" "):
        if block == "NONUTILE":
            slots.append(None)
            continue
        action = int(block[4:], 16)
        index = action & 0xF
        slots.append(
            {
                "start": f"{block[0:2]}:{block[2:4]}",
                "action": block[4:],
                "supplier_index": index if 1 <= index <= 10 else None,
                "virtual_contacts": [bool(action >> (4 + i) & 1) for i in range(7)],
                "dry_contact": action >> 14 & 0x3,
            }
        )
    return slots


_CONTRACTS = {"BASE": "BASE", "HC..": "HC", "EJP.": "EJP"}
_CIRCUIT1 = {0: None, 1: "A", 2: "B", 3: "C"}


def decode_optarif(text: str) -> dict[str, Any]:
    """OPTARIF (02E §2.3): the contract, and for Tempo (``BBRx``) the auxiliary-contact programs in x.

    x: bit 6 = 0, bit 5 = 1, bits 4-3 = program of circuit 1 (A/B/C), bits 2-0 = program of circuit 2 (P0-P7).

    >>> decode_optarif("BBR(")
    {'contract': 'TEMPO', 'circuit1_program': 'A', 'circuit2_program': 'P0'}
    """
    if text.startswith("BBR"):
        x = ord(text[3])
        return {
            "contract": "TEMPO",
            "circuit1_program": _CIRCUIT1[x >> 3 & 0x3],
            "circuit2_program": f"P{x & 0x7}",
        }
    return {"contract": _CONTRACTS.get(text, text)}


def decode_ppot(hex_text: str) -> dict[str, bool]:
    """PPOT (02E §2.5.2): bit n (1..3) set means phase n's potential is missing."""
    v = int(hex_text, 16)
    return {f"phase{n}_present": not (v >> n & 1) for n in (1, 2, 3)}
