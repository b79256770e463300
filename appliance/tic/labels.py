"""Declarative table of every TIC label of both Enedis specifications.

Sources: ERDF-NOI-CPT_02E v4 §2.3-2.5 (historique: single-phase, three-phase long and short frames) and
Enedis-NOI-CPT_54E v3 §6.2.2 (standard: all 71 labels).  ``docs/PROTOCOL.md`` §6-§7 summarises both.

Each :class:`LabelSpec` says how long the data field is, which characters it may hold, how to turn it into a
typed value, and whether the group carries a horodate.  Validation is part of decoding: a single bit-6 flip
changes a byte by 64, which leaves the 6-bit checksum intact ('0' becomes 'p'), so the data's charset and length
are the second line of defence, and a group that breaks them is rejected like a checksum failure.

Values stay exactly as the meter counts them: no unit conversion (PREF stays in kVA, indexes in Wh).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = ["HISTORIQUE", "STANDARD", "Kind", "LabelSpec", "spec_for"]


class Kind(Enum):
    """How a data field becomes a value."""

    INT = "int"  # decimal digits -> int (indexes, powers, currents, voltages, counters)
    ID = "id"  # decimal digits kept as a string with leading zeros (ADCO, ADSC, PRM)
    TEXT = "text"  # printable text, space padding removed (NGTF, LTARF, MSG1, MOTDETAT...)
    ENUM = "enum"  # a closed set of words (PTEC, DEMAIN, HHPHC)
    HEX = "hex"  # hexadecimal register kept as text and decoded apart (STGE, PPOT)
    OPTARIF = "optarif"  # historique tariff option, BBRx carries Tempo auxiliary programs
    PROFILE = "profile"  # PJOURF+1 / PPOINTE: 11 time slots
    NONE = "none"  # DATE: the value is the horodate, the data field is empty


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """One label of the TIC.

    ``pattern`` is matched against the whole data field (bytes), so length and charset are checked at once.
    ``tri_only`` and ``producer_only`` are the spec's own flags; they document which frames carry the label
    and are not enforced (a meter that sends a tri-phase label is, by definition, tri-phase).
    """

    label: str
    meaning: str
    kind: Kind
    length: int
    unit: str | None = None
    horodate: bool = False
    tri_only: bool = False
    producer_only: bool = False
    choices: tuple[str, ...] = ()
    pattern: re.Pattern[bytes] | None = None

    def __post_init__(self) -> None:
        if self.pattern is None:
            object.__setattr__(self, "pattern", re.compile(_default_pattern(self)))


_PRINTABLE = rb"[\x20-\x7e]"


def _default_pattern(spec: LabelSpec) -> bytes:
    n = spec.length
    if spec.kind in (Kind.INT, Kind.ID):
        return rb"[0-9]{%d}" % n
    if spec.kind is Kind.ENUM:
        return b"|".join(re.escape(c.encode()) for c in spec.choices)
    if spec.kind is Kind.HEX:
        return rb"[0-9A-F]{%d}" % n
    if spec.kind is Kind.NONE:
        return b""
    if spec.kind is Kind.OPTARIF:
        # 02E §2.3: BBRx, x has bit 6 = 0 and bit 5 = 1, so it lies in 0x20-0x3F.
        return rb"BASE|HC\.\.|EJP\.|BBR[\x20-\x3f]"
    if spec.kind is Kind.PROFILE:
        slot = rb"(?:[0-9]{4}[0-9A-F]{4}|NONUTILE)"
        return slot + rb"(?: " + slot + rb"){10}"
    return _PRINTABLE + rb"{%d}" % n


def _h(label: str, meaning: str, kind: Kind, length: int, unit: str | None = None, **kw: object) -> LabelSpec:
    return LabelSpec(label, meaning, kind, length, unit, **kw)  # type: ignore[arg-type]


_PTEC = ("TH..", "HC..", "HP..", "HN..", "PM..", "HCJB", "HCJW", "HCJR", "HPJB", "HPJW", "HPJR")

_HISTORIQUE_LIST: list[LabelSpec] = [
    _h("ADCO", "Adresse du compteur", Kind.ID, 12),
    _h("OPTARIF", "Option tarifaire choisie", Kind.OPTARIF, 4),
    _h("ISOUSC", "Intensité souscrite", Kind.INT, 2, "A"),
    _h("BASE", "Index option Base", Kind.INT, 9, "Wh"),
    _h("HCHC", "Index option Heures Creuses: heures creuses", Kind.INT, 9, "Wh"),
    _h("HCHP", "Index option Heures Creuses: heures pleines", Kind.INT, 9, "Wh"),
    _h("EJPHN", "Index option EJP: heures normales", Kind.INT, 9, "Wh"),
    _h("EJPHPM", "Index option EJP: heures de pointe mobile", Kind.INT, 9, "Wh"),
    _h("BBRHCJB", "Index option Tempo: heures creuses jours bleus", Kind.INT, 9, "Wh"),
    _h("BBRHPJB", "Index option Tempo: heures pleines jours bleus", Kind.INT, 9, "Wh"),
    _h("BBRHCJW", "Index option Tempo: heures creuses jours blancs", Kind.INT, 9, "Wh"),
    _h("BBRHPJW", "Index option Tempo: heures pleines jours blancs", Kind.INT, 9, "Wh"),
    _h("BBRHCJR", "Index option Tempo: heures creuses jours rouges", Kind.INT, 9, "Wh"),
    _h("BBRHPJR", "Index option Tempo: heures pleines jours rouges", Kind.INT, 9, "Wh"),
    _h("PEJP", "Préavis début EJP (30 min)", Kind.INT, 2, "min"),
    _h("PTEC", "Période tarifaire en cours", Kind.ENUM, 4, choices=_PTEC),
    _h("DEMAIN", "Couleur du lendemain", Kind.ENUM, 4, choices=("----", "BLEU", "BLAN", "ROUG")),
    _h("IINST", "Intensité instantanée", Kind.INT, 3, "A"),
    _h("IINST1", "Intensité instantanée phase 1", Kind.INT, 3, "A", tri_only=True),
    _h("IINST2", "Intensité instantanée phase 2", Kind.INT, 3, "A", tri_only=True),
    _h("IINST3", "Intensité instantanée phase 3", Kind.INT, 3, "A", tri_only=True),
    _h("ADPS", "Avertissement de dépassement de puissance souscrite", Kind.INT, 3, "A"),
    _h("ADIR1", "Avertissement de dépassement d'intensité de réglage phase 1", Kind.INT, 3, "A", tri_only=True),
    _h("ADIR2", "Avertissement de dépassement d'intensité de réglage phase 2", Kind.INT, 3, "A", tri_only=True),
    _h("ADIR3", "Avertissement de dépassement d'intensité de réglage phase 3", Kind.INT, 3, "A", tri_only=True),
    _h("IMAX", "Intensité maximale appelée", Kind.INT, 3, "A"),
    _h("IMAX1", "Intensité maximale phase 1", Kind.INT, 3, "A", tri_only=True),
    _h("IMAX2", "Intensité maximale phase 2", Kind.INT, 3, "A", tri_only=True),
    _h("IMAX3", "Intensité maximale phase 3", Kind.INT, 3, "A", tri_only=True),
    _h("PMAX", "Puissance maximale triphasée atteinte", Kind.INT, 5, "W", tri_only=True),
    _h("PAPP", "Puissance apparente", Kind.INT, 5, "VA"),
    _h("HHPHC", "Horaire heures pleines / heures creuses", Kind.ENUM, 1, choices=("A", "C", "D", "E", "Y")),
    _h("MOTDETAT", "Mot d'état du compteur", Kind.TEXT, 6),
    _h("PPOT", "Présence des potentiels", Kind.HEX, 2, tri_only=True),
]


_STANDARD_LIST: list[LabelSpec] = [
    _h("ADSC", "Adresse secondaire du compteur", Kind.ID, 12),
    _h("VTIC", "Version de la TIC", Kind.ID, 2),
    _h("DATE", "Date et heure courante", Kind.NONE, 0, horodate=True),
    _h("NGTF", "Nom du calendrier tarifaire fournisseur", Kind.TEXT, 16),
    _h("LTARF", "Libellé tarif fournisseur en cours", Kind.TEXT, 16),
    _h("EAST", "Energie active soutirée totale", Kind.INT, 9, "Wh"),
    *(
        _h(f"EASF{i:02d}", f"Energie active soutirée fournisseur, index {i:02d}", Kind.INT, 9, "Wh")
        for i in range(1, 11)
    ),
    *(
        _h(f"EASD{i:02d}", f"Energie active soutirée distributeur, index {i:02d}", Kind.INT, 9, "Wh")
        for i in range(1, 5)
    ),
    _h("EAIT", "Energie active injectée totale", Kind.INT, 9, "Wh", producer_only=True),
    *(_h(f"ERQ{i}", f"Energie réactive Q{i} totale", Kind.INT, 9, "VArh", producer_only=True) for i in range(1, 5)),
    _h("IRMS1", "Courant efficace, phase 1", Kind.INT, 3, "A"),
    _h("IRMS2", "Courant efficace, phase 2", Kind.INT, 3, "A", tri_only=True),
    _h("IRMS3", "Courant efficace, phase 3", Kind.INT, 3, "A", tri_only=True),
    _h("URMS1", "Tension efficace, phase 1", Kind.INT, 3, "V"),
    _h("URMS2", "Tension efficace, phase 2", Kind.INT, 3, "V", tri_only=True),
    _h("URMS3", "Tension efficace, phase 3", Kind.INT, 3, "V", tri_only=True),
    _h("PREF", "Puissance app. de référence", Kind.INT, 2, "kVA"),
    _h("PCOUP", "Puissance app. de coupure", Kind.INT, 2, "kVA"),
    _h("SINSTS", "Puissance app. instantanée soutirée", Kind.INT, 5, "VA"),
    *(
        _h(f"SINSTS{i}", f"Puissance app. instantanée soutirée phase {i}", Kind.INT, 5, "VA", tri_only=True)
        for i in range(1, 4)
    ),
    _h("SMAXSN", "Puissance app. max. soutirée n", Kind.INT, 5, "VA", horodate=True),
    *(
        _h(f"SMAXSN{i}", f"Puissance app. max. soutirée n phase {i}", Kind.INT, 5, "VA", horodate=True, tri_only=True)
        for i in range(1, 4)
    ),
    _h("SMAXSN-1", "Puissance app. max. soutirée n-1", Kind.INT, 5, "VA", horodate=True),
    *(
        _h(
            f"SMAXSN{i}-1",
            f"Puissance app. max. soutirée n-1 phase {i}",
            Kind.INT,
            5,
            "VA",
            horodate=True,
            tri_only=True,
        )
        for i in range(1, 4)
    ),
    _h("SINSTI", "Puissance app. instantanée injectée", Kind.INT, 5, "VA", producer_only=True),
    _h("SMAXIN", "Puissance app. max. injectée n", Kind.INT, 5, "VA", horodate=True, producer_only=True),
    _h("SMAXIN-1", "Puissance app. max. injectée n-1", Kind.INT, 5, "VA", horodate=True, producer_only=True),
    _h("CCASN", "Point n de la courbe de charge active soutirée", Kind.INT, 5, "W", horodate=True),
    _h("CCASN-1", "Point n-1 de la courbe de charge active soutirée", Kind.INT, 5, "W", horodate=True),
    _h("CCAIN", "Point n de la courbe de charge active injectée", Kind.INT, 5, "W", horodate=True, producer_only=True),
    _h(
        "CCAIN-1",
        "Point n-1 de la courbe de charge active injectée",
        Kind.INT,
        5,
        "W",
        horodate=True,
        producer_only=True,
    ),
    _h("UMOY1", "Tension moy. phase 1", Kind.INT, 3, "V", horodate=True),
    _h("UMOY2", "Tension moy. phase 2", Kind.INT, 3, "V", horodate=True, tri_only=True),
    _h("UMOY3", "Tension moy. phase 3", Kind.INT, 3, "V", horodate=True, tri_only=True),
    _h("STGE", "Registre de statuts", Kind.HEX, 8),
    *(
        spec
        for i in range(1, 4)
        for spec in (
            _h(f"DPM{i}", f"Début pointe mobile {i}", Kind.INT, 2, horodate=True),
            _h(f"FPM{i}", f"Fin pointe mobile {i}", Kind.INT, 2, horodate=True),
        )
    ),
    _h("MSG1", "Message court", Kind.TEXT, 32),
    _h("MSG2", "Message ultra court", Kind.TEXT, 16),
    _h("PRM", "PRM", Kind.ID, 14),
    _h("RELAIS", "Relais", Kind.INT, 3, pattern=re.compile(rb"[01][0-9]{2}|2[0-4][0-9]|25[0-5]")),
    _h("NTARF", "Numéro de l'index tarifaire en cours", Kind.INT, 2),
    _h("NJOURF", "Numéro du jour en cours calendrier fournisseur", Kind.INT, 2),
    _h("NJOURF+1", "Numéro du prochain jour calendrier fournisseur", Kind.INT, 2),
    _h("PJOURF+1", "Profil du prochain jour calendrier fournisseur", Kind.PROFILE, 98),
    _h("PPOINTE", "Profil du prochain jour de pointe", Kind.PROFILE, 98),
]

HISTORIQUE: dict[str, LabelSpec] = {s.label: s for s in _HISTORIQUE_LIST}
STANDARD: dict[str, LabelSpec] = {s.label: s for s in _STANDARD_LIST}

assert len(STANDARD) == 71, len(STANDARD)  # the spec's count; a typo in the table would change it


def spec_for(mode: str, label: str) -> LabelSpec | None:
    """The spec of ``label`` in ``mode`` (``"historique"`` or ``"standard"``), or None if unknown."""
    return (STANDARD if mode == "standard" else HISTORIQUE).get(label)
