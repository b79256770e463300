"""Decode throughput of ``appliance.tic`` against published TIC decoders and a classic line-by-line script.

Run from the repository root::

    pip install -r bench/requirements.txt     # the PyPI peers; missing ones are skipped with a message
    python bench/decode.py                    # full run (one to two minutes)
    python bench/decode.py --quick            # a few seconds: small streams, two repetitions

What is measured is the *whole* decode of a raw byte stream: finding frames and groups, checking checksums,
whatever validation each decoder does, and turning data into values.  Every decoder gets the same bytes, cut in
the same chunks (4096 bytes by default, a serial driver's buffer), through a thin adapter (``peers/``); imports,
object construction and the fake serial ports are set up outside the timed region.

The streams are generated here, deterministically, from real captures used as templates (``shared/captures``:
one historique and one standard meter, each single- and three-phase).  A simulated household drives them, so
values move from frame to frame as on a real meter: powers and currents every frame, energy indexes as energy
accrues, the tariff period at 22:00, daily maxima at midnight, load-curve points and mean voltages at their
period ends, and ``DATE`` every frame.  Every group is built with :func:`appliance.tic.encode_group`, so every
checksum is valid; the stream starts in the middle of a group, as every real capture does.

Sanity checks keep a decoder from winning by doing nothing: for each run the table shows the frames it returned
and the share of the sent values it returned *correctly* (matched label by label against the generator's ground
truth, frames aligned in order).  Our decoder is also checked exactly: every value, type and horodate.

frames/s counts the frames *sent* (the stream's frames) per second of decoding, whatever the decoder returned,
and MB/s the stream's bytes; both use the best of the repetitions (the median is shown too).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import logging
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(BENCH), str(REPO)):  # `python bench/decode.py` puts only bench/ on the path
    if _p not in sys.path:
        sys.path.insert(0, _p)

# Before any peer is imported: python-tic calls logging.basicConfig(stdout, INFO) at import time, which would
# then print every log record of every library to stdout.  With a handler already installed that call is a no-op.
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

from peers import Adapter, Unavailable, all_adapters  # noqa: E402
from peers.line_by_line import LineByLineAdapter  # noqa: E402

from appliance.tic import encode_frame, encode_group  # noqa: E402

Mode = Literal["historique", "standard"]
Group = tuple[str, str | None, str]  # label, horodate, data
Truth = dict[str, tuple[str | None, str]]  # label -> (horodate, data) of one frame

# --------------------------------------------------------------------------------------------------------------
# Templates: one frame of each real capture, in the meter's group order.  Values that the simulation moves are
# overwritten per frame; the rest (addresses, contract, tariff names, profiles, status words) stay as captured.
# --------------------------------------------------------------------------------------------------------------

#: hist_mono_hc__hallard_teleinfo-test_README_excerpt.txt (historique, single-phase, HC option).
HIST_MONO_HC: tuple[Group, ...] = tuple(
    (label, None, data)
    for label, data in (
        ("ADCO", "021528603314"),
        ("OPTARIF", "HC.."),
        ("ISOUSC", "15"),
        ("HCHC", "000723392"),
        ("HCHP", "001742238"),
        ("PTEC", "HP.."),
        ("IINST", "001"),
        ("IMAX", "002"),
        ("PAPP", "00180"),
        ("HHPHC", "A"),
        ("MOTDETAT", "000000"),
    )
)

#: hist_tri_base__ticdecodecpp_continuous_linky_3P_historical_TIC_sample.bin (historique, three-phase, BASE).
HIST_TRI_BASE: tuple[Group, ...] = tuple(
    (label, None, data)
    for label, data in (
        ("ADCO", "056234673197"),
        ("OPTARIF", "BASE"),
        ("ISOUSC", "20"),
        ("BASE", "010151175"),
        ("PTEC", "TH.."),
        ("IINST1", "000"),
        ("IINST2", "002"),
        ("IINST3", "000"),
        ("IMAX1", "060"),
        ("IMAX2", "060"),
        ("IMAX3", "060"),
        ("PMAX", "02680"),
        ("PAPP", "00740"),
        ("HHPHC", "A"),
        ("MOTDETAT", "000000"),
        ("PPOT", "00"),
    )
)

_NONUTILE = " ".join(["NONUTILE"] * 10)

#: std_mono__ticdecodecpp_continuous_linky_1P_standard_TIC_sample.bin (standard, single-phase, BASE).
STD_MONO_BASE: tuple[Group, ...] = (
    ("ADSC", None, "064468368739"),
    ("VTIC", None, "02"),
    ("DATE", "H230301091834", ""),
    ("NGTF", None, "      BASE      "),
    ("LTARF", None, "      BASE      "),
    ("EAST", None, "011887649"),
    ("EASF01", None, "011887649"),
    *((f"EASF{i:02d}", None, "000000000") for i in range(2, 11)),
    ("EASD01", None, "011887649"),
    *((f"EASD{i:02d}", None, "000000000") for i in range(2, 5)),
    ("IRMS1", None, "001"),
    ("URMS1", None, "230"),
    ("PREF", None, "04"),
    ("PCOUP", None, "04"),
    ("SINSTS", None, "00240"),
    ("SMAXSN", "H230301065253", "01024"),
    ("SMAXSN-1", "H230228111814", "00795"),
    ("CCASN", "H230301090000", "00170"),
    ("CCASN-1", "H230301083000", "00162"),
    ("UMOY1", "H230301091000", "229"),
    ("STGE", None, "003A0001"),
    ("MSG1", None, "PAS DE          MESSAGE         "),
    ("PRM", None, "31051967533895"),
    ("RELAIS", None, "000"),
    ("NTARF", None, "01"),
    ("NJOURF", None, "00"),
    ("NJOURF+1", None, "00"),
    ("PJOURF+1", None, "00008001 " + _NONUTILE),
)

#: std_tri_tempo__teleinfo-nom_message_standard.bin (standard, three-phase, Tempo, mobile peak PM1 in progress).
STD_TRI_TEMPO: tuple[Group, ...] = (
    ("ADSC", None, "041776199277"),
    ("VTIC", None, "02"),
    ("DATE", "H200214230804", ""),
    ("NGTF", None, "     TEMPO      "),
    ("LTARF", None, "   HC  BLANC    "),
    ("EAST", None, "021849106"),
    ("EASF01", None, "004855593"),
    ("EASF02", None, "014090959"),
    ("EASF03", None, "000487131"),
    ("EASF04", None, "001481464"),
    ("EASF05", None, "000227596"),
    ("EASF06", None, "000706363"),
    *((f"EASF{i:02d}", None, "000000000") for i in range(7, 11)),
    ("EASD01", None, "021849106"),
    *((f"EASD{i:02d}", None, "000000000") for i in range(2, 5)),
    ("IRMS1", None, "003"),
    ("IRMS2", None, "006"),
    ("IRMS3", None, "003"),
    ("URMS1", None, "237"),
    ("URMS2", None, "238"),
    ("URMS3", None, "235"),
    ("PREF", None, "30"),
    ("PCOUP", None, "30"),
    ("SINSTS", None, "02700"),
    ("SINSTS1", None, "00664"),
    ("SINSTS2", None, "01373"),
    ("SINSTS3", None, "00664"),
    ("SMAXSN", "H200214175135", "10802"),
    ("SMAXSN1", "H200214175135", "03411"),
    ("SMAXSN2", "H200214175135", "03899"),
    ("SMAXSN3", "H200214175135", "03512"),
    ("SMAXSN-1", "H200213085118", "09562"),
    ("SMAXSN1-1", "H200213085118", "03129"),
    ("SMAXSN2-1", "H200213101142", "03366"),
    ("SMAXSN3-1", "H200213085118", "03191"),
    ("CCASN", "H200214230000", "01650"),
    ("CCASN-1", "H200214225000", "00786"),
    ("UMOY1", "H200214230000", "237"),
    ("UMOY2", "H200214230000", "238"),
    ("UMOY3", "H200214230000", "236"),
    ("STGE", None, "463A0800"),
    ("DPM1", " 200214060000", "00"),
    ("FPM1", " 200215060000", "00"),
    ("MSG1", None, "PAS DE          MESSAGE         "),
    ("PRM", None, "07361794479930"),
    ("RELAIS", None, "001"),
    ("NTARF", None, "03"),
    ("NJOURF", None, "00"),
    ("NJOURF+1", None, "00"),
    ("PJOURF+1", None, "00004001 06004002 22004001 " + " ".join(["NONUTILE"] * 8)),
)

# --------------------------------------------------------------------------------------------------------------
# A household, so that values move like a real meter's.
# --------------------------------------------------------------------------------------------------------------

_GAP_S = 0.025  # silence between two frames (02E §1.5.2: 16.7 to 33.4 ms)
_POWER_FACTOR = 0.92  # active/apparent, to turn VA into Wh and W


class _Phase:
    """One phase: a base load with noise, plus appliances that switch on and off at random (Poisson)."""

    def __init__(self, rng: random.Random, base_va: float, appliances: Sequence[tuple[float, float, float]]) -> None:
        self._rng = rng
        self._base = base_va
        self._appliances = [[va, on_s, off_s, False] for va, on_s, off_s in appliances]

    def step(self, dt: float) -> float:
        """The apparent power (VA) drawn during the next ``dt`` seconds."""
        rng = self._rng
        total = self._base + rng.gauss(0, self._base * 0.08)
        for a in self._appliances:
            va, on_s, off_s, on = a
            if rng.random() < dt / (on_s if on else off_s):
                a[3] = on = not on
            if on:
                total += va * rng.uniform(0.97, 1.03)
        return max(total, 0.0)


def _horodate(t: datetime, season: str = "H") -> str:
    return f"{season}{t:%y%m%d%H%M%S}"


def _floor(t: datetime, minutes: int) -> datetime:
    return t.replace(minute=t.minute - t.minute % minutes, second=0, microsecond=0)


@dataclass
class _Meter:
    """The state a meter keeps between frames: clock, loads, energy, voltages, daily maxima, load curve."""

    rng: random.Random
    t: datetime
    phases: list[_Phase]
    baud: int
    wh: float
    volts: list[float] = field(default_factory=list)
    va: list[float] = field(default_factory=list)
    max_today: list[tuple[int, datetime]] = field(default_factory=list)  # total first, then per phase
    max_yesterday: list[tuple[int, datetime]] = field(default_factory=list)
    curve_period_s: int = 1800
    curve: list[tuple[int, datetime]] = field(default_factory=list)  # (W, end of period): last two
    curve_wh: float = 0.0
    umoy: tuple[list[int], datetime] | None = None
    volt_sum: list[float] = field(default_factory=list)
    volt_n: int = 0
    split: dict[str, float] = field(default_factory=dict)  # energy per tariff index, for multi-index contracts

    def __post_init__(self) -> None:
        n = len(self.phases)
        self.volts = [230.0 + self.rng.uniform(-4, 6) for _ in range(n)]
        self.va = [0.0] * n
        self.max_today = [(0, self.t)] * (n + 1)
        self.max_yesterday = [(self.rng.randrange(2000, 6000 * n), self.t - timedelta(days=1))] * (n + 1)
        self.volt_sum = [0.0] * n

    def advance(self, frame_bytes: int) -> None:
        """Let the time of one frame (at the meter's baud rate, 10 bits a character) and one gap pass."""
        dt = frame_bytes * 10 / self.baud + _GAP_S
        before = self.t
        self.t += timedelta(seconds=dt)
        self.va = [p.step(dt) for p in self.phases]
        total = sum(self.va)
        energy = total * _POWER_FACTOR * dt / 3600
        self.wh += energy
        self.volts = [min(max(v + self.rng.gauss(0, 0.4), 222.0), 246.0) for v in self.volts]
        if self.t.date() != before.date():  # midnight: today's maxima become yesterday's
            self.max_yesterday = self.max_today
            self.max_today = [(0, self.t)] * len(self.max_today)
        for i, va in enumerate([total, *self.va] if len(self.va) > 1 else [total]):
            if va > self.max_today[i][0]:
                self.max_today[i] = (int(va), self.t)
        period_end = _floor(self.t, self.curve_period_s // 60)
        if period_end > _floor(before, self.curve_period_s // 60):  # a load-curve period just completed
            watts = int(self.curve_wh * 3600 / self.curve_period_s)
            self.curve = [(watts, period_end), *self.curve[:1]]
            self.curve_wh = 0.0
        self.curve_wh += energy
        self.volt_sum = [s + v for s, v in zip(self.volt_sum, self.volts, strict=True)]
        self.volt_n += 1
        if _floor(self.t, 10) > _floor(before, 10):  # mean voltages over 10 minutes
            self.umoy = ([round(s / self.volt_n) for s in self.volt_sum], _floor(self.t, 10))
            self.volt_sum = [0.0] * len(self.volts)
            self.volt_n = 0


def _appliances(rng: random.Random, scale: float) -> list[tuple[float, float, float]]:
    """Fridge, water heater, oven, kettle, washing machine: (VA, mean seconds on, mean seconds off)."""
    return [
        (120 * scale, 900, 1800),
        (rng.uniform(1500, 2400) * scale, 5400, 30000),
        (2000 * scale, 2400, 28800),
        (1900 * scale, 150, 5400),
        (1800 * scale, 5400, 36000),
    ]


def _is_hc(t: datetime) -> bool:
    return t.hour >= 22 or t.hour < 6  # off-peak hours of the templates' contracts


@dataclass
class Stream:
    """A generated stream: the bytes as the meter sends them, and what each complete frame holds."""

    name: str
    mode: Mode
    data: bytes
    truth: list[Truth]

    @property
    def frames(self) -> int:
        """Complete frames in the stream."""
        return len(self.truth)

    @property
    def values(self) -> int:
        """Groups in all complete frames."""
        return sum(len(t) for t in self.truth)


@functools.lru_cache(maxsize=8192)
def _encode(mode: Mode, label: str, data: str, horodate: str | None) -> bytes:
    return encode_group(mode, label, data, horodate)


def _render(mode: Mode, groups: list[Group]) -> bytes:
    return encode_frame(_encode(mode, label, data, horodate) for label, horodate, data in groups)


def _build(name: str, mode: Mode, n: int, meter: _Meter, frame_groups: Callable[[_Meter], list[Group]]) -> Stream:
    frames: list[bytes] = []
    truth: list[Truth] = []
    for _ in range(n + 1):
        groups = frame_groups(meter)
        raw = _render(mode, groups)
        frames.append(raw)
        truth.append({label: (horodate, data) for label, horodate, data in groups})
        meter.advance(len(raw))
    # Real captures start mid-frame (TIC.md G5): keep only the end of the first frame, cut inside a group.
    lead = frames[0][-7:]
    return Stream(name, mode, lead + b"".join(frames[1:]), truth[1:])


def _accrue(meter: _Meter, running: str, start: dict[str, float]) -> dict[str, float]:
    """Add the energy since the previous frame to the running tariff index; the other indexes stay."""
    if not meter.split:
        meter.split = {**start, "at": meter.wh}
    split = meter.split
    split[running] += meter.wh - split["at"]
    split["at"] = meter.wh
    return split


def _hist_mono(meter: _Meter) -> list[Group]:
    va = meter.va[0]
    amps = round(va / 230)
    hc = _is_hc(meter.t)
    split = _accrue(meter, "HC" if hc else "HP", {"HC": 723392.0, "HP": 1742238.0})
    moving = {
        "HCHC": f"{int(split['HC']):09d}",
        "HCHP": f"{int(split['HP']):09d}",
        "PTEC": "HC.." if hc else "HP..",
        "IINST": f"{amps:03d}",
        "PAPP": f"{min(round(va, -1), 99990):05.0f}",
    }
    groups: list[Group] = [(label, None, moving.get(label, data)) for label, _, data in HIST_MONO_HC]
    if amps > 15:  # ADPS: sent only while the current exceeds the subscribed one (ISOUSC), after IINST
        at = next(i for i, g in enumerate(groups) if g[0] == "IINST") + 1
        groups.insert(at, ("ADPS", None, f"{amps:03d}"))
    return groups


def _hist_tri(meter: _Meter) -> list[Group]:
    moving = {
        "BASE": f"{int(meter.wh):09d}",
        "IINST1": f"{round(meter.va[0] / 230):03d}",
        "IINST2": f"{round(meter.va[1] / 230):03d}",
        "IINST3": f"{round(meter.va[2] / 230):03d}",
        "PMAX": f"{min(meter.max_yesterday[0][0], 99999):05d}",  # Linky: Smax of day n-1
        "PAPP": f"{min(round(sum(meter.va), -1), 99990):05.0f}",
    }
    return [(label, None, moving.get(label, data)) for label, _, data in HIST_TRI_BASE]


def _std_common(meter: _Meter, groups: list[Group]) -> list[Group]:
    """The groups every standard meter moves: DATE, currents, voltages, powers, maxima, load curve, UMOY."""
    n = len(meter.va)
    out: dict[str, tuple[str | None, str]] = {
        "DATE": (_horodate(meter.t), ""),
        "SINSTS": (None, f"{min(int(sum(meter.va)), 99999):05d}"),
        "SMAXSN": (_horodate(meter.max_today[0][1]), f"{meter.max_today[0][0]:05d}"),
        "SMAXSN-1": (_horodate(meter.max_yesterday[0][1]), f"{meter.max_yesterday[0][0]:05d}"),
    }
    for i in range(n):
        p = i + 1
        out[f"IRMS{p}"] = (None, f"{round(meter.va[i] / meter.volts[i]):03d}")
        out[f"URMS{p}"] = (None, f"{round(meter.volts[i]):03d}")
        if n > 1:
            out[f"SINSTS{p}"] = (None, f"{int(meter.va[i]):05d}")
            out[f"SMAXSN{p}"] = (_horodate(meter.max_today[p][1]), f"{meter.max_today[p][0]:05d}")
            out[f"SMAXSN{p}-1"] = (_horodate(meter.max_yesterday[p][1]), f"{meter.max_yesterday[p][0]:05d}")
        if meter.umoy is not None:
            out[f"UMOY{p}"] = (_horodate(meter.umoy[1]), f"{meter.umoy[0][i]:03d}")
    for label, (watts, end) in zip(("CCASN", "CCASN-1"), meter.curve, strict=False):
        out[label] = (_horodate(end), f"{min(watts, 99999):05d}")
    return [(label, *out[label]) if label in out else (label, h, d) for label, h, d in groups]


def _std_mono(meter: _Meter) -> list[Group]:
    groups = _std_common(meter, list(STD_MONO_BASE))
    index = f"{int(meter.wh):09d}"  # BASE: total, supplier index 1 and distributor index 1 move together
    return [(label, h, index if label in ("EAST", "EASF01", "EASD01") else d) for label, h, d in groups]


def _std_tri(meter: _Meter) -> list[Group]:
    hc = _is_hc(meter.t)
    # A white day: HC blanc (supplier index 3) or HP blanc (index 4) accrues.
    split = _accrue(meter, "EASF03" if hc else "EASF04", {"EASF03": 487131.0, "EASF04": 1481464.0})
    moving = {
        "EAST": f"{int(meter.wh):09d}",
        "EASD01": f"{int(meter.wh):09d}",
        "EASF03": f"{int(split['EASF03']):09d}",
        "EASF04": f"{int(split['EASF04']):09d}",
        "LTARF": "   HC  BLANC    " if hc else "   HP  BLANC    ",
        "NTARF": "03" if hc else "04",
        "STGE": "463A0800" if hc else "463A0C00",  # bits 10-13: supplier index - 1 (TIC.md §1.8)
    }
    groups = _std_common(meter, list(STD_TRI_TEMPO))
    return [(label, h, moving.get(label, d)) for label, h, d in groups]


def make_streams(hist_frames: int, std_frames: int, seed: int = 20240924) -> list[Stream]:
    """The four benchmark streams, identical for a given seed and sizes."""
    rng = random.Random(seed)
    mono = [_Phase(rng, 180, _appliances(rng, 0.8))]
    tri = [_Phase(rng, 160, _appliances(rng, 1.0)) for _ in range(3)]
    return [
        _build(
            "historique mono",
            "historique",
            hist_frames,
            _Meter(rng, datetime(2024, 11, 20, 18, 30), mono, 1200, 723392 + 1742238.0),
            _hist_mono,
        ),
        _build(
            "historique tri",
            "historique",
            hist_frames,
            _Meter(rng, datetime(2024, 1, 10, 17, 0), tri, 1200, 10151175.0),
            _hist_tri,
        ),
        _build(
            "standard mono",
            "standard",
            std_frames,
            _Meter(rng, datetime(2023, 3, 1, 9, 18, 34), mono, 9600, 11887649.0),
            _std_mono,
        ),
        _build(
            "standard tri",
            "standard",
            std_frames,
            _Meter(rng, datetime(2020, 2, 14, 20, 30), tri, 9600, 21849106.0, curve_period_s=600),
            _std_tri,
        ),
    ]


# --------------------------------------------------------------------------------------------------------------
# Sanity checks
# --------------------------------------------------------------------------------------------------------------


def _iso(horodate: str) -> str:
    d = horodate[1:]
    offset = {"H": "+01:00", "h": "+01:00", "E": "+02:00", "e": "+02:00"}.get(horodate[0], "")
    return f"20{d[0:2]}-{d[2:4]}-{d[4:6]}T{d[6:8]}:{d[8:10]}:{d[10:12]}{offset}"


def _same(value: Any, sent: tuple[str | None, str]) -> bool:
    """Whether a decoder's value is the sent one, whatever its type and formatting conventions."""
    horodate, data = sent
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return data.isdigit() and int(data) == value
    if not isinstance(value, str):
        return False
    v = value.strip()
    d = data.strip()
    return v in (d, d.rstrip(".")) or (horodate is not None and v in (horodate.strip(), _iso(horodate)))


@dataclass
class Check:
    """What a decoder returned, compared with what was sent."""

    frames: int  # frames returned
    matched: int  # frames aligned with a sent frame
    values_ok: int  # values equal to the sent ones, over the aligned frames

    def values_share(self, stream: Stream) -> float:
        """Correct values over all values sent."""
        return self.values_ok / stream.values if stream.values else 0.0


def check(decoded: list[dict[str, Any]], stream: Stream) -> Check:
    """Align decoded frames with sent ones (in order; a decoder may skip frames) and count correct values.

    Each decoded frame is compared with the next :data:`ALIGN_WINDOW` sent frames and paired with the best one
    (the earliest on a tie), if at least half its values agree.  Consecutive frames often agree on every value
    a decoder returned; pairing with the wrong one of those scores the same, and the window is wide enough for
    the next distinctive frame to bring the alignment back for decoders that skip frames.
    """
    truth = stream.truth
    p = matched = ok = 0
    for frame in decoded:
        if not frame:
            continue
        best, best_j = -1, -1
        for j in range(p, min(p + ALIGN_WINDOW, len(truth))):
            sent = truth[j]
            score = sum(1 for k, v in frame.items() if k in sent and _same(v, sent[k]))
            if score > best:
                best, best_j = score, j
        if best_j >= 0 and best * 2 >= len(frame):
            matched += 1
            ok += best
            p = best_j + 1
    return Check(len(decoded), matched, ok)


#: How many sent frames ahead a decoded frame is looked for (decoders may skip frames, see :func:`check`).
ALIGN_WINDOW = 8

#: A decoder counts for the targets only if it returns at least this share of the sent values, correctly.
SANE_SHARE = 0.9

_KEEP_AS_TEXT = frozenset({"ADCO", "ADSC", "PRM", "VTIC", "MOTDETAT", "PPOT", "STGE"})


def check_ours_exactly(frames: list[Any], stream: Stream) -> list[str]:
    """Every frame of ours against the ground truth: values with their types, horodates, nothing rejected.

    Identifiers and codes must stay text with their leading zeros; other digit strings must be ints; text is
    compared without its space padding; horodates become ISO 8601 with the offset of their season.
    """
    problems: list[str] = []
    if len(frames) != stream.frames:
        problems.append(f"{len(frames)} frames decoded, {stream.frames} sent")
    for i, (frame, sent) in enumerate(zip(frames, stream.truth, strict=False)):
        if frame.invalid:
            problems.append(f"frame {i}: rejected groups {frame.invalid}")
        for label, (horodate, data) in sent.items():
            if label != "DATE":
                want: Any = int(data) if data.isdigit() and label not in _KEEP_AS_TEXT else data.strip(" ")
                got = frame.values.get(label, "<missing>")
                if got != want or type(got) is not type(want):
                    problems.append(f"frame {i}: {label} = {got!r}, sent {data!r}")
            if horodate is not None and frame.timestamps.get(label) != _iso(horodate):
                problems.append(f"frame {i}: {label} stamp {frame.timestamps.get(label)!r}, sent {horodate!r}")
        if len(problems) > 5:
            break
    return problems


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """The timings and sanity of one decoder on one stream."""

    adapter: Adapter
    stream: Stream
    times: list[float]
    check: Check
    error: str | None = None
    exact: list[str] | None = None  # ours only: what differs from the sent values ([] when all is equal)

    @property
    def best(self) -> float:
        """Fastest repetition, seconds."""
        return min(self.times)

    @property
    def median(self) -> float:
        """Median repetition, seconds."""
        return statistics.median(self.times)

    def fps(self, seconds: float | None = None) -> float:
        """Sent frames per second."""
        return self.stream.frames / (seconds if seconds is not None else self.best)

    @property
    def mbps(self) -> float:
        """Stream megabytes (10^6 bytes) per second, best repetition."""
        return len(self.stream.data) / 1e6 / self.best


def chunked(data: bytes, size: int) -> list[bytes]:
    """``data`` cut in ``size``-byte reads."""
    return [data[i : i + size] for i in range(0, len(data), size)]


#: The clock of the timed region. Every decoder runs in this one thread without any I/O, so the thread's CPU time
#: is its whole cost, and unlike wall time it does not bill a decoder for what other processes of a busy machine
#: run meanwhile (``--clock wall`` restores wall time for a quiet machine).
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


def _one_run(adapter: Adapter, stream: Stream, chunk_size: int) -> tuple[float, list[Any]]:
    """Prepare (untimed), collect garbage (so one run's leftovers do not bill the next), then time ``run``."""
    prepared = adapter.prepare(chunked(stream.data, chunk_size), stream.mode)
    gc.collect()
    t0 = _clock()
    out = adapter.run(prepared)
    elapsed = _clock() - t0
    return elapsed, out


def probe(adapters: list[Adapter], streams: list[Stream], chunk_size: int) -> dict[tuple[str, str], str]:
    """Run every adapter once on small streams of both modes (untimed) and describe what came out."""
    verdicts: dict[tuple[str, str], str] = {}
    logging.disable(logging.CRITICAL)  # outside their mode, peers log an error or warning per frame or line
    try:
        for adapter in adapters:
            for stream in streams:
                verdicts[(adapter.label, stream.name)] = _probe_one(adapter, stream, chunk_size)
    finally:
        logging.disable(logging.NOTSET)
    return verdicts


def _probe_one(adapter: Adapter, stream: Stream, chunk_size: int) -> str:
    adapter.last_error = None
    try:
        _, out = _one_run(adapter, stream, chunk_size)
        c = check(adapter.to_dicts(out), stream)
    except Exception as e:
        return f"raises {type(e).__name__}: {str(e)[:60]}"
    share = c.values_share(stream)
    works = c.matched > 0 and share >= 0.25
    text = f"{'decodes' if works else 'NO'}: {c.matched}/{stream.frames} frames, {share:.0%} of values"
    if not works and adapter.last_error is not None:
        e = adapter.last_error
        text += f" (swallowed {type(e).__name__}: ...{str(e)[-60:]})"
    return text


def measure(
    adapters: list[Adapter], stream: Stream, repeat: int, chunk_size: int, log: Callable[[str], None]
) -> list[Result]:
    """Time every adapter that decodes ``stream``'s mode; repetitions are interleaved to spread out drift."""
    runnable = [a for a in adapters if stream.mode in a.modes]
    times: dict[str, list[float]] = {a.label: [] for a in runnable}
    checks: dict[str, Check] = {}
    exact: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    started = time.perf_counter()
    for rep in range(repeat):
        order = runnable[rep % len(runnable) :] + runnable[: rep % len(runnable)]
        for adapter in order:
            if adapter.label in errors:
                continue
            try:
                elapsed, out = _one_run(adapter, stream, chunk_size)
            except Exception as e:
                errors[adapter.label] = f"{type(e).__name__}: {e}"
                continue
            times[adapter.label].append(elapsed)
            if adapter.label not in checks:
                checks[adapter.label] = check(adapter.to_dicts(out), stream)
                if adapter.reference:
                    exact[adapter.label] = check_ours_exactly(out, stream)
                    log(_ours_spot_check(out, stream, exact[adapter.label]))
            del out
    log(f"  {stream.name}: {len(runnable)} decoders x {repeat} repetitions in {time.perf_counter() - started:.0f} s")
    return [
        Result(a, stream, times[a.label], checks.get(a.label, Check(0, 0, 0)), errors.get(a.label), exact.get(a.label))
        for a in runnable
        if times[a.label] or a.label in errors
    ]


def _ours_spot_check(frames: list[Any], stream: Stream, problems: list[str]) -> str:
    verdict = (
        f"all {stream.frames} frames equal to what was sent (values, types, horodates)"
        if not problems
        else "MISMATCH: " + "; ".join(problems[:5])
    )
    lines = [f"  ours on {stream.name}: {verdict}"]
    for i in (0, len(frames) // 2, len(frames) - 1):
        if 0 <= i < len(frames):
            f = frames[i]
            shown: dict[str, Any] = {}
            for k in ("PAPP", "HCHC", "HCHP", "BASE", "PTEC", "IINST3", "EAST", "SINSTS", "IRMS1", "LTARF", "NTARF"):
                if k in f.values:
                    shown[k] = f.values[k]
            if "DATE" in f.timestamps:
                shown["DATE"] = f.timestamps["DATE"]
            lines.append(f"    frame {i}: {shown}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def report(results: list[Result], streams: list[Stream], adapters: list[Adapter]) -> tuple[str, bool]:
    """The main table and the verdict on the issue's two targets."""
    rows = [
        [
            "stream",
            "decoder",
            "frames/s",
            "MB/s",
            "median fr/s",
            "ours x",
            "frames out",
            "values ok",
        ]
    ]
    verdicts: list[str] = []
    all_met = True
    for stream in streams:
        mine = [r for r in results if r.stream is stream]
        ours = next((r for r in mine if r.adapter.reference and not r.error), None)
        for r in mine:
            if r.error:
                rows.append([stream.name, r.adapter.label, "error", "", "", "", "", r.error[:60]])
                continue
            ratio = "" if ours is None or r is ours else f"{ours.fps() / r.fps():.1f}x"
            rows.append(
                [
                    stream.name,
                    r.adapter.label,
                    f"{r.fps():,.0f}",
                    f"{r.mbps:.2f}",
                    f"{r.fps(r.median):,.0f}",
                    ratio,
                    f"{r.check.frames}/{stream.frames}",
                    f"{r.check.values_share(stream):.0%}",
                ]
            )
        if ours is None:
            all_met = False
            verdicts.append(f"  {stream.name}: our decoder did not run")
            continue
        if ours.exact:
            all_met = False
            verdicts.append(f"  {stream.name}: OUR DECODER'S OUTPUT DIFFERS FROM WHAT WAS SENT: {ours.exact[0]}")
        ran = [r for r in mine if r.adapter.pypi and not r.error]
        sane = [r for r in ran if r.check.values_share(stream) >= SANE_SHARE]
        if sane:
            fastest = max(sane, key=lambda r: r.fps())
            x = ours.fps() / fastest.fps()
            met = x >= 5
            all_met &= met
            verdicts.append(
                f"  {stream.name}: ours {x:.2f}x the fastest sane PyPI decoder ({fastest.adapter.label}): "
                f"{'met' if met else 'MISSED'} (target >= 5x)"
            )
            verdicts.extend(
                f"    (faster but not sane: {r.adapter.label}, ours {ours.fps() / r.fps():.1f}x; it returns "
                f"{r.check.values_share(stream):.0%} of the values, skipping frames; per frame it returns, ours "
                f"{ours.fps() / (r.fps() * max(r.check.matched, 1) / stream.frames):.1f}x)"
                for r in ran
                if r not in sane and r.fps() > fastest.fps()
            )
        elif ran:
            verdicts.append(f"  {stream.name}: no PyPI decoder returned >= {SANE_SHARE:.0%} of the values")
        elif any(a.pypi for a in adapters):
            verdicts.append(f"  {stream.name}: no installed PyPI decoder decodes {stream.mode} mode (see the probe)")
        else:
            verdicts.append(f"  {stream.name}: no PyPI decoder installed (pip install -r bench/requirements.txt)")
        line = next((r for r in mine if isinstance(r.adapter, LineByLineAdapter) and not r.error), None)
        if line is not None:
            x = ours.fps() / line.fps()
            met = x > 1
            all_met &= met
            verdicts.append(
                f"  {stream.name}: ours {x:.2f}x the line-by-line script: {'met' if met else 'MISSED'} (target > 1x)"
            )
    return _table(rows, right={2, 3, 4, 5, 6, 7}) + "\n\nTargets:\n" + "\n".join(verdicts), all_met


def profile_ours(streams: list[Stream], chunk_size: int, top: int) -> str:
    """cProfile of our decoder on each stream, sorted by own time: where a missed target should be looked at."""
    from appliance.tic import Decoder

    out = io.StringIO()
    for stream in streams:
        chunks = chunked(stream.data, chunk_size)
        decoder = Decoder("auto")
        prof = cProfile.Profile()
        prof.enable()
        for c in chunks:
            decoder.feed(c)
        prof.disable()
        out.write(f"\n--- cProfile, ours, {stream.name} ({stream.frames} frames) ---\n")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, generate the streams, probe, time, print; exit 1 if a target is missed (for CI use)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small streams, 2 repetitions: a few seconds")
    ap.add_argument("--hist-frames", type=int, help="frames per historique stream (default 20000; quick 1000)")
    ap.add_argument("--std-frames", type=int, help="frames per standard stream (default 10000; quick 500)")
    ap.add_argument("--repeat", type=int, help="repetitions per decoder (default 7; quick 2)")
    ap.add_argument("--chunk-size", type=int, default=4096, help="bytes per read (default 4096)")
    ap.add_argument("--only", action="append", default=[], help="only decoders whose name contains this")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of our decoder per stream")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed or our output is wrong")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: the decoding thread's CPU time (default; steady on a busy machine); wall: elapsed time",
    )
    args = ap.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    hist_n = args.hist_frames or (1000 if args.quick else 20000)
    std_n = args.std_frames or (500 if args.quick else 10000)
    repeat = args.repeat or (2 if args.quick else 7)

    def log(msg: str) -> None:
        print(msg, flush=True)

    py = f"{platform.python_version()} ({platform.python_implementation()})"
    log(f"Python {py} on {platform.machine()}; clock: {args.clock}")
    adapters: list[Adapter] = []
    for adapter in all_adapters():
        if args.only and not any(s in adapter.name for s in args.only) and not adapter.reference:
            continue
        try:
            adapter.load()
        except Unavailable as e:
            log(f"skipped: {adapter.name}: {e}")
            continue
        adapters.append(adapter)

    t0 = time.perf_counter()
    streams = make_streams(hist_n, std_n)
    log(f"generated {len(streams)} streams in {time.perf_counter() - t0:.1f} s:")
    for s in streams:
        log(f"  {s.name:<16} {s.frames:>6} frames  {len(s.data) / 1e6:6.2f} MB  {s.values / s.frames:.1f} groups/frame")

    log("\nWhat each decoder drives:")
    for a in adapters:
        log(f"  {a.label:<34} modes: {', '.join(a.modes):<21} {a.drives}")

    log("\nProbe (40 frames of each stream, untimed; shows which modes each decoder really handles):")
    small = make_streams(40, 40, seed=7)
    verdicts = probe(adapters, small, args.chunk_size)
    for a in adapters:
        for s in small:
            claimed = "claimed" if s.mode in a.modes else "not claimed"
            log(f"  {a.label:<34} {s.name:<16} ({claimed:<11}) {verdicts[(a.label, s.name)]}")

    log(f"\nTiming: {repeat} repetitions, {args.chunk_size}-byte chunks, best and median kept")
    results: list[Result] = []
    for stream in streams:
        results.extend(measure(adapters, stream, repeat, args.chunk_size, log))

    text, met = report(results, streams, adapters)
    log("")
    log(text)
    if args.profile:
        log(profile_ours(streams, args.chunk_size, top=15))
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
