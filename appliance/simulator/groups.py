"""The groups of each kind of frame a Linky sends (historique long and short, standard), and the readings the
decoder must read back from them.

Standard frames carry every group a real meter sends, in the spec's order (54E §6.2.2, checked against the real
captures in ``tests/data/tic``): all ten EASF and four EASD registers even when unused, SMAXSN with the time of
the maximum, the 30-minute load curve (CCASN), the 10-minute mean voltages (UMOY), STGE, DPM/FPM on mobile peak
days, the next day's profile.  Three-phase historique short frames hold ADIRn, ADCO and IINST1-3 (02E §2.5.3).

Every value is recorded as the decoder types it (ints for numbers, strings for ids and text, padding stripped;
ISO 8601 horodates), from the model's own numbers, so a round trip through :class:`appliance.tic.Decoder` is a
real check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from appliance.simulator.load import Sample
from appliance.simulator.seeded import PARIS
from appliance.simulator.tariffs import DEMAIN, INDEXES, NGTF, OPTARIF, PROFILES, Calendar, Period, tempo_profile
from appliance.tic.encode import encode_group

if TYPE_CHECKING:
    from appliance.simulator.model import MeterState, Mode

__all__ = ["Builder", "Nameplate", "historique", "short", "standard"]

MSG1: Final = "PAS DE          MESSAGE         "  # what every captured meter sends
LOAD_CURVE_PERIOD: Final = timedelta(minutes=30)  # CCASN/CCAIN
UMOY_PERIOD: Final = timedelta(minutes=10)  # 54E §6.2.3.13


@dataclass(frozen=True, slots=True)
class Nameplate:
    """What a meter's frames say about the meter itself."""

    address: str  # ADCO / ADSC
    prm: str
    contract: str
    kva: int  # PREF, PCOUP
    isousc: int  # per phase
    phases: int
    producer: bool


class Builder:
    """Collects groups and the values the decoder must read back from them."""

    __slots__ = ("groups", "mode", "stamps", "values")

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.groups: list[bytes] = []
        self.values: dict[str, int | str] = {}
        self.stamps: dict[str, str] = {}

    def _add(self, label: str, data: str, value: int | str | None, when: datetime | None = None) -> None:
        horodate = None
        if when is not None:
            horodate = _horodate(when)
            self.stamps[label] = when.replace(microsecond=0).isoformat()
        self.groups.append(encode_group(self.mode, label, data, horodate))
        if value is not None:
            self.values[label] = value

    def number(self, label: str, value: int, width: int, when: datetime | None = None) -> None:
        if not 0 <= value < 10**width:
            raise ValueError(f"{label}={value} does not fit in {width} digits")
        self._add(label, f"{value:0{width}d}", value, when)

    def word(self, label: str, text: str) -> None:
        """Ids, closed sets, hex registers, profiles: the decoder keeps them as sent."""
        self._add(label, text, text)

    def text(self, label: str, text: str, width: int) -> None:
        """Free text, centred in its field with spaces as meters do; the decoder strips the padding."""
        pad = width - len(text)
        self._add(label, " " * (pad // 2) + text + " " * (pad - pad // 2), text.strip(" "))

    def date(self, when: datetime) -> None:
        self._add("DATE", "", None, when)


def _horodate(when: datetime) -> str:
    """``SAAMMJJhhmmss``: H/E for a local winter/summer time, a space for a naive (season-less) one."""
    if when.tzinfo is None:
        season = " "
    else:
        season = "E" if when.dst() else "H"
    return season + when.strftime("%y%m%d%H%M%S")


def short(plate: Nameplate, currents: list[int], over: list[int]) -> Builder:
    """A three-phase historique short frame: ADIRn of the phases over their setting current, ADCO, IINST1-3."""
    b = Builder("historique")
    for i in over:
        b.number(f"ADIR{i + 1}", currents[i], 3)
    b.word("ADCO", plate.address)
    for i, amps in enumerate(currents):
        b.number(f"IINST{i + 1}", amps, 3)
    return b


def historique(
    plate: Nameplate, st: MeterState, sample: Sample, cal: Calendar, period: Period, currents: list[int]
) -> Builder:
    """A historique long frame (02E §2.3-2.5; what a Linky puts in each group: 54E §6.1)."""
    b = Builder("historique")
    b.word("ADCO", plate.address)
    b.word("OPTARIF", OPTARIF[plate.contract])
    b.number("ISOUSC", plate.isousc, 2)
    for label, value in zip(INDEXES[plate.contract], st.supplier, strict=False):
        b.number(label, value, 9)
    if plate.contract == "EJP" and (cal.notice or cal.peak):
        b.number("PEJP", 30, 2)  # sent from the 30-minute notice to the end of the peak
    b.word("PTEC", period.ptec)
    if plate.contract == "TEMPO":
        b.word("DEMAIN", DEMAIN[cal.tomorrow])
    if plate.phases == 1:
        b.number("IINST", currents[0], 3)
        if currents[0] > plate.isousc:
            b.number("ADPS", currents[0], 3)
        b.number("IMAX", 90, 3)  # Linky: always 090 (docs/PROTOCOL.md §6)
    else:
        for i, amps in enumerate(currents):
            b.number(f"IINST{i + 1}", amps, 3)
        for i in range(3):
            b.number(f"IMAX{i + 1}", 60, 3)  # Linky: always 060
        b.number("PMAX", st.smax_prev["S"][0], 5)  # Linky: Smax of day n-1
    b.number("PAPP", round(max(sample.total, 0.0) / 10) * 10, 5)  # rounded to 10 VA
    b.word("HHPHC", "A")  # Linky: always A
    b.text("MOTDETAT", "000000", 6)
    if plate.phases == 3:
        b.word("PPOT", "00")  # all three potentials present
    return b


def standard(
    plate: Nameplate,
    st: MeterState,
    lt: datetime,
    sample: Sample,
    cal: Calendar,
    period: Period,
    curve: tuple[datetime, dict[str, int]],
    means: tuple[datetime, list[int]],
) -> Builder:
    """A standard frame (54E §6.2.2), given the last complete load-curve and mean-voltage periods."""
    b = Builder("standard")
    n = plate.phases
    b.word("ADSC", plate.address)
    b.word("VTIC", "02")
    b.date(lt)
    b.text("NGTF", NGTF[plate.contract], 16)
    b.text("LTARF", period.label, 16)
    b.number("EAST", sum(st.supplier), 9)
    for i, value in enumerate(st.supplier):
        b.number(f"EASF{i + 1:02d}", value, 9)
    for i, value in enumerate(st.distributor):
        b.number(f"EASD{i + 1:02d}", value, 9)
    if plate.producer:
        b.number("EAIT", st.injected, 9)
        for i, value in enumerate(st.reactive):
            b.number(f"ERQ{i + 1}", value, 9)
    for i in range(n):
        b.number(f"IRMS{i + 1}", round(abs(sample.net[i]) / sample.volts[i]), 3)
    for i in range(n):
        b.number(f"URMS{i + 1}", round(sample.volts[i]), 3)
    b.number("PREF", plate.kva, 2)
    b.number("PCOUP", plate.kva, 2)
    series = sample.series(plate.producer)
    b.number("SINSTS", series["S"], 5)
    per_phase = [f"{i}" for i in range(1, 4)] if n == 3 else []
    for suffix in per_phase:
        b.number(f"SINSTS{suffix}", series[f"S{suffix}"], 5)
    phases = ["", *per_phase]
    for suffix in phases:
        value, when = st.smax[f"S{suffix}"]
        b.number(f"SMAXSN{suffix}", value, 5, when.astimezone(PARIS))
    for suffix in phases:
        value, when = st.smax_prev[f"S{suffix}"]
        b.number(f"SMAXSN{suffix}-1", value, 5, when.astimezone(PARIS))
    if plate.producer:
        b.number("SINSTI", series["I"], 5)
        for label, table in (("SMAXIN", st.smax), ("SMAXIN-1", st.smax_prev)):
            value, when = table["I"]
            b.number(label, value, 5, when.astimezone(PARIS))
    end, points = curve
    ends = (end.astimezone(PARIS), (end - LOAD_CURVE_PERIOD).astimezone(PARIS))
    for name in ("CCASN", "CCAIN") if plate.producer else ("CCASN",):
        b.number(name, points[name], 5, ends[0])
        b.number(f"{name}-1", points[f"{name}-1"], 5, ends[1])
    end, volts = means
    for i, mean in enumerate(volts):
        b.number(f"UMOY{i + 1}", mean, 3, end.astimezone(PARIS))
    b.word("STGE", stge(plate, sample, cal, period))
    for number, begin, finish in cal.pointes:
        b.number(f"DPM{number}", 0, 2, begin)
        b.number(f"FPM{number}", 0, 2, finish)
    b.text("MSG1", MSG1, 32)
    b.word("PRM", plate.prm)
    b.number("RELAIS", 1 if period.off_peak else 0, 3)  # relay 1 is the dry contact
    b.number("NTARF", period.supplier_index, 2)
    b.number("NJOURF", 0, 2)
    b.number("NJOURF+1", 0, 2)
    if plate.contract == "TEMPO":
        b.word("PJOURF+1", tempo_profile(cal.tomorrow or 1))
    else:
        b.word("PJOURF+1", PROFILES[plate.contract])
    if cal.next_profile is not None:
        b.word("PPOINTE", cal.next_profile)
    return b


def stge(plate: Nameplate, sample: Sample, cal: Calendar, period: Period) -> str:
    """The status register (54E §6.2.3.14, docs/PROTOCOL.md §8)."""
    v = 0x3A << 16  # standard TIC output, Euridis on with security, CPL New/Lock: every captured meter
    if not period.off_peak:
        v |= 1  # dry contact open outside HC
    if sample.total > plate.kva * 1000:
        v |= 1 << 7  # over the reference power
    if plate.producer:
        v |= 1 << 8
    if sample.total < 0:
        v |= 1 << 9  # active energy flowing out
    v |= (period.supplier_index - 1) << 10 | (period.distributor_index - 1) << 14
    v |= cal.today << 24 | cal.tomorrow << 26 | cal.notice << 28 | cal.peak << 30
    return f"{v:08X}"
