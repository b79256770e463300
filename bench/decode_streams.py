"""The decoder benchmark's streams: the meter simulator configured like the meters of the real captures the decoder
is tested with (``tests/data/tic``), and what each frame sent.

Same addresses, contracts, mode, phases and time of day as the captured meters; see ``bench/README.md`` (The
streams) for where the subscribed power differs and why.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from appliance.simulator import PARIS, MeterSimulator

Mode = Literal["historique", "standard"]
Truth = dict[str, tuple[str | None, str]]  # label -> (horodate, data) of one frame


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


def _sent(data: bytes, mode: Mode) -> Truth:
    """What a frame sent, label by label, read back from its bytes: (horodate, data) of every group.

    The simulator built the bytes (every checksum valid), so splitting them is exact; no decoder is involved.
    """
    body = data[data.index(b"\x02") + 1 : data.rindex(b"\x03")].decode("ascii")
    truth: Truth = {}
    for line in body.split("\n")[1:]:
        zone = line[:-3]  # without the separator, the checksum and CR
        if mode == "standard":
            fields = zone.split("\t")
            truth[fields[0]] = (fields[1], fields[2]) if len(fields) == 3 else (None, fields[1])
        else:
            label, value = zone.split(" ", 1)
            truth[label] = (None, value)
    return truth


def _simulated(name: str, sim: MeterSimulator, n: int) -> Stream:
    """``n`` frames of ``sim`` from its start, each taking its wire time at the mode's baud rate."""
    frames = [f.data for f in itertools.islice(sim.frames(), n + 1)]
    # Real captures start mid-frame (docs/PROTOCOL.md §10.5): keep only the end of the first frame, cut inside a group.
    lead = frames[0][-7:]
    return Stream(name, sim.mode, lead + b"".join(frames[1:]), [_sent(f, sim.mode) for f in frames[1:]])


def _white_tempo_day(sim: MeterSimulator, first: date) -> date:
    """The first day from ``first`` that the simulator makes a white Tempo day (the tri capture's colour)."""
    day = first
    while sim.period(datetime(day.year, day.month, day.day, 12, tzinfo=PARIS)).ptec != "HPJW":
        day += timedelta(days=1)
    return day


def _day_without_overrun(sim: MeterSimulator, first: date) -> date:
    """The first day from ``first`` without a seeded overload: no ADIR short frames, as in the tri capture."""
    day = first
    while any(event.overload for event in sim.events(day)):
        day += timedelta(days=1)
    return day


def make_streams(hist_frames: int, std_frames: int, seed: int = 20240924) -> list[Stream]:
    """The four benchmark streams, identical for a given seed and sizes."""
    hist_mono = MeterSimulator(  # hist_mono_hc (hallard): HC option (6 kVA: its 3 kVA would trip every evening)
        start=datetime(2024, 11, 20, 18, 30, tzinfo=PARIS),
        mode="historique",
        contract="HCHP",
        seed=seed,
        meter_id="021528603314",
    )
    hist_tri = MeterSimulator(  # hist_tri_base (ticdecodecpp): BASE (18 kVA: the simulated household overruns 12)
        start=datetime(2024, 1, 10, 17, 0, tzinfo=PARIS),
        mode="historique",
        phases=3,
        seed=seed + 1,
        meter_id="056234673197",
        subscribed_kva=18,
    )
    std_mono = MeterSimulator(  # std_mono_base (ticdecodecpp): BASE, PREF 4 kVA
        start=datetime(2023, 3, 1, 9, 18, 34, tzinfo=PARIS),
        mode="standard",
        seed=seed + 2,
        meter_id="064468368739",
        prm="31051967533895",
        subscribed_kva=4,
    )
    std_tri = MeterSimulator(  # std_tri_tempo (teleinfo-nom): Tempo, PREF 30 kVA, a white day with PM1
        start=datetime(2020, 2, 14, 20, 30, tzinfo=PARIS),
        mode="standard",
        phases=3,
        contract="TEMPO",
        seed=seed + 3,
        meter_id="041776199277",
        prm="07361794479930",
        subscribed_kva=30,
    )
    quiet = _day_without_overrun(hist_tri, date(2024, 1, 10))
    hist_tri = dataclasses.replace(hist_tri, start=datetime(quiet.year, quiet.month, quiet.day, 17, tzinfo=PARIS))
    white = _white_tempo_day(std_tri, date(2020, 2, 3))
    std_tri = dataclasses.replace(std_tri, start=datetime(white.year, white.month, white.day, 20, 30, tzinfo=PARIS))
    return [
        _simulated("historique mono", hist_mono, hist_frames),
        _simulated("historique tri", hist_tri, hist_frames),
        _simulated("standard mono", std_mono, std_frames),
        _simulated("standard tri", std_tri, std_frames),
    ]
