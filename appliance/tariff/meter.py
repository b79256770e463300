"""What a decoded frame says about tariffs: its per-period indexes, the period now, the Tempo colours.

Pure: a frame's mode and values in, a :class:`MeterReading` out.  Nothing here guesses: a register whose period
the frame (or the configured calendar) does not name maps to None, and the engine counts its energy as
unattributed; a label the frame lacks is simply absent.

* **Contract.**  Historique: OPTARIF (``BASE``, ``HC..``, ``EJP.``, ``BBRx``).  Standard: NGTF is free text set
  by the supplier (docs/PROTOCOL.md §7), read by keyword (``TEMPO``/``BBR``, ``EJP``, ``CREUSE``/``PLEINE``/``HC``,
  ``BASE``); anything else leaves the contract unknown unless ``tariff.contract`` names it.
* **Indexes.**  Historique: the labels of 02E (BASE, HCHC/HCHP, BBRH*, EJPHN/EJPHPM) name their period.
  Standard: EASF01-10, index n counting the n-th period of the contract's calendar.
* **Period now.**  Historique: PTEC.  Standard: NTARF through the same calendar.  LTARF is free text and
  is only carried along as the label people read.
* **Tempo colours.**  Historique: the colour letter of PTEC (today) and DEMAIN (tomorrow, ``----`` = not
  announced).  Standard: STGE bits 24-25 and 26-27 (54E §6.2.3.14), with the colour of the NTARF period as the
  fallback for today.  PJOURF+1 is not used: it describes the next day's profile even before any announcement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from appliance.tariff.periods import (
    CONTRACT_PERIODS,
    DEMAIN_COLOURS,
    HISTORIQUE_REGISTERS,
    PTEC_PERIODS,
    colour_of,
)
from appliance.tic.fields import decode_optarif, decode_stge

__all__ = ["MeterReading", "contract_from_ngtf", "read_meter"]

_OPTARIF_CONTRACTS = {"BASE": "BASE", "HC": "HCHP", "EJP": "EJP", "TEMPO": "TEMPO"}
#: Without a subscribed power from the meter or the configuration: the largest of the tarif bleu.
FALLBACK_VA = 36_000


@dataclass(frozen=True, slots=True)
class MeterReading:
    """The tariff side of one frame.

    ``registers`` maps each index label the frame carried (``BBRHCJB``, ``EASF03``) to its value in Wh, and
    ``register_periods`` the same labels to their period (None: the frame does not say).  ``max_va`` is the most
    apparent power the meter lets through as the meter states it (PREF/PCOUP, ISOUSC), for the physics check.
    """

    mode: str
    meter: str | None
    contract: str | None
    registers: Mapping[str, int] = field(default_factory=dict)
    register_periods: Mapping[str, str | None] = field(default_factory=dict)
    period: str | None = None
    period_label: str | None = None
    tempo_today: str | None = None
    tempo_tomorrow: str | None = None
    max_va: int | None = None
    kva: int | None = None


def contract_from_ngtf(ngtf: str) -> str | None:
    """The contract a standard-mode NGTF names, by keyword; None when it names none we know.

    >>> contract_from_ngtf("H PLEINE/CREUSE"), contract_from_ngtf("TEMPO"), contract_from_ngtf("PRODUCTEUR")
    ('HCHP', 'TEMPO', None)
    """
    text = ngtf.upper()
    if "TEMPO" in text or "BBR" in text:
        return "TEMPO"
    if "EJP" in text:
        return "EJP"
    if "CREUSE" in text or "PLEINE" in text or "HC" in text.split():
        return "HCHP"
    if "BASE" in text:
        return "BASE"
    return None


def read_meter(
    mode: str,
    values: Mapping[str, object],
    meter: str | None = None,
    *,
    contract: str = "auto",
    standard_indexes: Sequence[str] = (),
    subscribed_kva: int = 0,
) -> MeterReading:
    """The tariff reading of a frame (``mode`` and ``values`` as :class:`appliance.tic.Frame` holds them).

    ``contract`` and ``standard_indexes`` are the configuration's (``auto`` and ``()`` read the meter).

    >>> r = read_meter("historique", {"OPTARIF": "HC..", "HCHC": 1000, "HCHP": 2000, "PTEC": "HP..", "ISOUSC": 30})
    >>> r.contract, dict(r.register_periods), r.period, r.max_va
    ('HCHP', {'HCHC': 'hc', 'HCHP': 'hp'}, 'hp', 6900)
    """
    if mode == "standard":
        return _standard(values, meter, contract, standard_indexes, subscribed_kva)
    return _historique(values, meter, contract, subscribed_kva)


def _int(values: Mapping[str, object], label: str) -> int | None:
    v = values.get(label)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _text(values: Mapping[str, object], label: str) -> str | None:
    v = values.get(label)
    return v if isinstance(v, str) else None


def _historique(values: Mapping[str, object], meter: str | None, contract: str, kva_cfg: int) -> MeterReading:
    found = contract if contract != "auto" else None
    optarif = _text(values, "OPTARIF")
    if found is None and optarif is not None:
        found = _OPTARIF_CONTRACTS.get(str(decode_optarif(optarif)["contract"]))
    registers: dict[str, int] = {}
    periods: dict[str, str | None] = {}
    for label, register_period in HISTORIQUE_REGISTERS.items():
        v = _int(values, label)
        if v is not None:
            registers[label] = v
            periods[label] = register_period
    ptec = _text(values, "PTEC")
    period = PTEC_PERIODS.get(ptec) if ptec is not None else None
    demain = _text(values, "DEMAIN")
    tomorrow = DEMAIN_COLOURS.get(demain) if demain is not None else None
    three_phase = any(label in values for label in ("IINST2", "IINST3", "IMAX2", "PPOT"))
    isousc = _int(values, "ISOUSC")
    kva = kva_cfg or None
    max_va: int | None = kva * 1000 if kva else None
    if max_va is None and isousc:
        # Linky: ISOUSC = PREF / 200 V, a third of it per phase (docs/PROTOCOL.md §6); older meters count at 230 V.
        # The check of impossible jumps wants an upper bound, so the larger reading (230 V) is taken.
        max_va = isousc * 230 * (3 if three_phase else 1)
        kva = round(isousc * 200 * (3 if three_phase else 1) / 1000)
    return MeterReading(
        "historique",
        meter,
        found,
        registers,
        periods,
        period,
        ptec,
        colour_of(period),
        tomorrow,
        max_va,
        kva,
    )


def _standard(
    values: Mapping[str, object], meter: str | None, contract: str, indexes: Sequence[str], kva_cfg: int
) -> MeterReading:
    found = contract if contract != "auto" else None
    ngtf = _text(values, "NGTF")
    if found is None and ngtf is not None:
        found = contract_from_ngtf(ngtf)
    table: Sequence[str] = indexes or (CONTRACT_PERIODS[found] if found is not None else ())
    registers: dict[str, int] = {}
    periods: dict[str, str | None] = {}
    for n in range(1, 11):
        label = f"EASF{n:02d}"
        v = _int(values, label)
        if v is not None:
            registers[label] = v
            periods[label] = table[n - 1] if n <= len(table) else None
    ntarf = _int(values, "NTARF")
    period = table[ntarf - 1] if ntarf is not None and 1 <= ntarf <= len(table) else None
    today = tomorrow = None
    stge = _text(values, "STGE")
    if stge is not None:
        bits = decode_stge(stge)
        today, tomorrow = bits["tempo_today"], bits["tempo_tomorrow"]
    today = today or colour_of(period)
    pref, pcoup = _int(values, "PREF"), _int(values, "PCOUP")
    kva = kva_cfg or pref or None
    limits = [x for x in (kva_cfg, pref, pcoup) if x]
    max_va = max(limits) * 1000 if limits else None
    return MeterReading(
        "standard",
        meter,
        found,
        registers,
        periods,
        period,
        _text(values, "LTARF"),
        today,
        tomorrow,
        max_va,
        kva,
    )
