"""The meter simulator: its frames decode to exactly what it says they hold, and they behave like a meter's.

The simulator builds its expected readings from its own numbers, never by decoding, so every round trip here
checks the simulator and the decoder against each other.  Group order is checked against the real captures in
tests/data/tic.  No network; the few timing checks are lenient lower bounds.
"""

from __future__ import annotations

import itertools
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.cli import main
from appliance.simulator import (
    PARIS,
    ErrorInjector,
    Injection,
    MeterSimulator,
    SimFrame,
    SimulatedStream,
    chunks,
    open_output,
    write_frames,
)
from appliance.tic import HISTORIQUE, STANDARD, Decoder, Frame, Kind, spec_for
from appliance.tic.fields import decode_stge

from .captures import capture

REPO = Path(__file__).resolve().parent.parent
WINTER_EVENING = datetime(2024, 1, 15, 18, 30, tzinfo=PARIS)

# Every configuration a meter can have: mode x phases x contract, plus producers in standard mode.
CONFIGS = [
    (mode, phases, contract, producer)
    for mode in ("historique", "standard")
    for phases in (1, 3)
    for contract in ("BASE", "HCHP", "TEMPO", "EJP")
    for producer in ((False, True) if mode == "standard" else (False,))
]


def make(
    mode: str = "historique",
    phases: int = 1,
    contract: str = "BASE",
    producer: bool = False,
    seed: int = 0,
    start: datetime = WINTER_EVENING,
) -> MeterSimulator:
    return MeterSimulator(
        start=start,
        mode=mode,  # type: ignore[arg-type]
        phases=phases,
        contract=contract,  # type: ignore[arg-type]
        producer=producer,
        seed=seed,
    )


def num(values: dict[str, int | str] | SimFrame, label: str) -> int:
    """A numeric value of a frame (typed, so comparisons need no casts)."""
    value = (values.values if isinstance(values, SimFrame) else values)[label]
    assert isinstance(value, int), (label, value)
    return value


def take(frames: Iterable[SimFrame], n: int) -> list[SimFrame]:
    return list(itertools.islice(frames, n))


def first(sim: MeterSimulator, at: datetime) -> SimFrame:
    return next(sim.frames(start=at))


def labels(frame: SimFrame) -> list[str]:
    sep = b"\t" if frame.mode == "standard" else b" "
    body = frame.data[frame.data.index(b"\x02") + 1 : -1]
    return [line.split(sep, 1)[0].decode() for line in body.split(b"\n")[1:]]


def assert_round_trip(frames: list[SimFrame], mode: str) -> Decoder:
    """The frames, as one stream, decode to exactly their expected content, with nothing rejected."""
    decoder = Decoder(mode)
    decoded = decoder.feed(b"".join(f.data for f in frames))
    assert len(decoded) == len(frames)
    for got, want in zip(decoded, frames, strict=True):
        assert got.invalid == []
        assert got.values == want.values
        assert got.timestamps == want.timestamps
    assert not decoder.rejects
    return decoder


def find_day(days: Iterable[date], predicate: Callable[[date], bool]) -> date:
    for day in days:
        if predicate(day):
            return day
    raise AssertionError("no such day in range")


def winter_days(n: int = 120) -> Iterable[date]:
    return (date(2024, 1, 2) + timedelta(days=i) for i in range(n))


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=PARIS)


# --- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "phases", "contract", "producer"), CONFIGS)
def test_round_trip_every_configuration(mode: str, phases: int, contract: str, producer: bool) -> None:
    frames = take(make(mode, phases, contract, producer).frames(), 25)
    assert_round_trip(frames, mode)
    for f in frames:
        assert f.mode == mode and f.data.endswith(b"\x03") and f.data.lstrip(b"\x04").startswith(b"\x02")
        assert (f.values.get("ADSC") or f.values.get("ADCO")) == make(mode, phases).address


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.sampled_from(CONFIGS),
    seed=st.integers(0, 2**48),
    start=st.datetimes(
        min_value=datetime(2001, 1, 2),
        max_value=datetime(2098, 12, 30),
        timezones=st.sampled_from([PARIS, UTC]),
    ),
    step=st.sampled_from([None, 1.0, 600.0, 86400.0]),
)
def test_round_trip_any_seed_and_start(
    config: tuple[str, int, str, bool], seed: int, start: datetime, step: float | None
) -> None:
    mode, phases, contract, producer = config
    frames = take(make(mode, phases, contract, producer, seed, start).frames(step=step), 4)
    assert_round_trip(frames, mode)
    assert frames[0].at.astimezone(UTC) == start.astimezone(UTC)


def test_deterministic_and_seeded() -> None:
    a = take(make("standard", 3, "TEMPO", True, seed=7).frames(), 5)
    b = take(make("standard", 3, "TEMPO", True, seed=7).frames(), 5)
    c = take(make("standard", 3, "TEMPO", True, seed=8).frames(), 5)
    assert [f.data for f in a] == [f.data for f in b]
    assert [f.data for f in a] != [f.data for f in c]


def test_measurements_depend_on_the_instant_not_on_the_start() -> None:
    """The load is a function of the seed and the instant: reaching 18:40 by running or by starting there agree."""
    sim = make("standard", 3, "HCHP")
    ran = take(sim.frames(start=WINTER_EVENING, step=60), 11)[-1]
    fresh = first(sim, WINTER_EVENING + timedelta(minutes=10))
    assert ran.at == fresh.at
    for label in ("SINSTS", "SINSTS1", "IRMS2", "URMS3", "LTARF", "STGE", "CCASN", "UMOY1"):
        assert ran.values[label] == fresh.values[label], label


# --- what a frame holds ----------------------------------------------------------------------------------------


def _capture_labels(data: bytes, sep: bytes) -> list[str]:
    """Labels of the first complete frame of a capture (or of its only frame body)."""
    if b"\x02" in data:
        data = data.split(b"\x02")[1].split(b"\x03")[0]
    return [line.strip(b"\r").split(sep, 1)[0].decode() for line in data.split(b"\n") if line.strip(b"\r")]


def test_group_order_matches_real_meters() -> None:
    std_mono = _capture_labels(
        capture("standard/mono_base__ticdecodecpp_continuous_linky_1P_standard_TIC_sample").path.read_bytes(), b"\t"
    )
    assert labels(first(make("standard"), WINTER_EVENING)) == std_mono

    # The tri Tempo capture was taken at 23:08 on a white day before a blue one (STGE 463A0800).
    sim = make("standard", 3, "TEMPO")
    white = find_day(
        winter_days(),
        lambda d: sim.period(at(d, 12)).ptec == "HPJW" and sim.period(at(d + timedelta(days=1), 12)).ptec == "HPJB",
    )
    frame = first(sim, at(white, 23, 8))
    std_tri = _capture_labels(capture("standard/tri_tempo__teleinfo-nom_message_standard").path.read_bytes(), b"\t")
    assert labels(frame) == std_tri
    assert frame.values["STGE"] == "463A0800"  # the captured meter's status, bit for bit
    assert frame.values["LTARF"] == "HC  BLANC" and frame.values["NTARF"] == 3

    hist_tri = _capture_labels(
        capture("historique/tri_base__ticdecodecpp_continuous_linky_3P_historical_TIC_sample").path.read_bytes(), b" "
    )
    assert labels(first(make("historique", 3), at(date(2024, 1, 16), 3))) == hist_tri
    dump = capture("historique/mono_hc__hallard_teleinfo-test_README_excerpt").path.read_text().splitlines()
    hist_hc = [line.split(" ", 1)[0] for line in dump]
    adco, papp = hist_hc.index("ADCO"), hist_hc.index("PAPP")
    hist_hc = hist_hc[adco:] + hist_hc[papp:adco]  # the dump starts and ends mid-frame: stitch ADCO..MOTDETAT
    assert labels(first(make("historique", 1, "HCHP"), at(date(2024, 1, 16), 3))) == hist_hc


@pytest.mark.parametrize(("mode", "phases", "contract", "producer"), CONFIGS)
def test_groups_follow_the_spec_tables(mode: str, phases: int, contract: str, producer: bool) -> None:
    table = list((STANDARD if mode == "standard" else HISTORIQUE).keys())
    longs = [f for f in take(make(mode, phases, contract, producer).frames(step=997), 30) if not f.short]
    assert len(longs) >= 20  # short frames are checked in test_three_phase_overrun_gives_short_frame_cycles
    for frame in longs:
        names = labels(frame)
        assert [table.index(n) for n in names] == sorted(table.index(n) for n in names), names
        if mode == "standard":
            for n in ("ADSC", "DATE", "EAST", "EASF10", "EASD04", "PREF", "PCOUP", "STGE", "PRM", "PJOURF+1"):
                assert n in names
            assert ("SINSTS3" in names) == ("URMS3" in names) == ("SMAXSN3-1" in names) == (phases == 3)
            assert ("EAIT" in names) == ("ERQ4" in names) == ("CCAIN-1" in names) == ("SMAXIN" in names) == producer
            assert num(frame, "EAST") == sum(num(frame, f"EASF{i:02d}") for i in range(1, 11))
            assert num(frame, "EAST") == sum(num(frame, f"EASD{i:02d}") for i in range(1, 5))
            stge = decode_stge(str(frame.values["STGE"]))
            assert stge["supplier_index"] == frame.values["NTARF"]
            assert stge["producer"] is producer and stge["tic_mode"] == "standard"
            assert frame.values["VTIC"] == "02"
        else:
            assert names[0] == "ADCO" and "PTEC" in names and "PAPP" in names
            assert ("PPOT" in names) == ("PMAX" in names) == ("IINST3" in names) == (phases == 3)
            assert num(frame, "PAPP") % 10 == 0


def test_wire_time_and_clock() -> None:
    for mode, baud in (("historique", 1200), ("standard", 9600)):
        frames = take(make(mode, 3, "TEMPO").frames(), 6)
        for f, nxt in itertools.pairwise(frames):
            gap = f.duration - len(f.data) * 10 / baud
            assert 0.0167 <= gap <= 0.0334
            assert abs((nxt.at - f.at).total_seconds() - f.duration) < 1e-5


def test_standard_date_follows_french_dst() -> None:
    sim = make("standard")
    for when, season, offset in (
        (datetime(2024, 3, 31, 1, 59, 58, tzinfo=PARIS), "H", "+01:00"),
        (datetime(2024, 3, 31, 3, 0, 2, tzinfo=PARIS), "E", "+02:00"),
        (datetime(2024, 10, 27, 0, 30, tzinfo=UTC), "E", "+02:00"),  # 02:30 local, first time
        (datetime(2024, 10, 27, 1, 30, tzinfo=UTC), "H", "+01:00"),  # 02:30 local, second time
    ):
        frame = first(sim, when)
        local = when.astimezone(PARIS)
        assert f"\nDATE\t{season}{local:%y%m%d%H%M%S}\t\t".encode() in frame.data
        assert frame.timestamps["DATE"] == f"{local:%Y-%m-%dT%H:%M:%S}{offset}"
    # Across the spring change, the frames keep decoding with the right season.
    frames = take(sim.frames(start=datetime(2024, 3, 31, 1, 58, tzinfo=PARIS), step=30), 10)
    assert_round_trip(frames, "standard")
    assert frames[0].timestamps["DATE"].endswith("+01:00") and frames[-1].timestamps["DATE"].endswith("+02:00")


# --- a day of it -------------------------------------------------------------------------------------------------

INDEXES = {
    "BASE",
    "HCHC",
    "HCHP",
    "EJPHN",
    "EJPHPM",
    *(f"BBRH{p}J{c}" for p in "CP" for c in "BWR"),
    "EAST",
    "EAIT",
    *(f"EASF{i:02d}" for i in range(1, 11)),
    *(f"EASD{i:02d}" for i in range(1, 5)),
    *(f"ERQ{i}" for i in range(1, 5)),
}


@pytest.mark.parametrize(
    ("mode", "phases", "contract", "producer"),
    [
        ("historique", 1, "HCHP", False),
        ("historique", 3, "TEMPO", False),
        ("standard", 1, "EJP", False),
        ("standard", 3, "TEMPO", True),
    ],
)
def test_indexes_never_decrease_over_a_day(mode: str, phases: int, contract: str, producer: bool) -> None:
    sim = make(mode, phases, contract, producer, start=datetime(2024, 1, 15, tzinfo=PARIS))
    frames = take(sim.frames(step=60), 24 * 60 + 1)
    assert_round_trip(frames, mode)
    longs = [f for f in frames if not f.short]
    for a, b in itertools.pairwise(longs):
        for label in INDEXES & a.values.keys():
            assert num(b, label) >= num(a, label), (label, b.at)
    counted = ["EAST"] if mode == "standard" else sorted(INDEXES & longs[0].values.keys())
    drawn = sum(num(longs[-1], k) - num(longs[0], k) for k in counted)
    assert 5_000 < drawn < 120_000  # a winter day of a household, in Wh


@pytest.mark.slow
def test_load_curve_is_low_at_night_and_peaks_in_the_evening() -> None:
    for seed in range(4):
        frames = take(make("standard", seed=seed, start=datetime(2024, 2, 6, tzinfo=PARIS)).frames(step=300), 288)
        by_hour = {h: [num(f, "SINSTS") for f in frames if f.at.hour == h] for h in range(24)}
        night = max(max(by_hour[h]) for h in (2, 3, 4))
        evening = max(max(by_hour[h]) for h in (19, 20))
        assert night < evening
        for f in frames:
            assert 222 <= num(f, "URMS1") <= 240
            assert abs(num(f, "IRMS1") - num(f, "SINSTS") / num(f, "URMS1")) <= 1  # I = S / U


# --- tariff schedules ----------------------------------------------------------------------------------------------


def test_hchp_schedule() -> None:
    day = date(2024, 1, 16)
    hist = make("historique", 1, "HCHP")
    assert first(hist, at(day, 23)).values["PTEC"] == "HC.."
    assert first(hist, at(day, 12)).values["PTEC"] == "HP.."
    assert first(hist, at(day, 5, 59, 50)).values["PTEC"] == "HC.."
    assert first(hist, at(day, 6, 0, 1)).values["PTEC"] == "HP.."
    std = make("standard", 1, "HCHP")
    frames = take(std.frames(start=at(day, 21, 50), step=60), 21)
    for f in frames:
        off_peak = f.at.hour >= 22
        assert f.values["LTARF"] == ("HEURE  CREUSE" if off_peak else "HEURE  PLEINE")
        assert f.values["NTARF"] == (1 if off_peak else 2)
        assert f.values["RELAIS"] == (1 if off_peak else 0)  # the dry contact starts the water heater in HC
        assert decode_stge(str(f.values["STGE"]))["dry_contact_open"] is not off_peak
    # Energy goes to EASF02 (HP) before 22:00 and to EASF01 (HC) after.
    before = [f for f in frames if f.at.hour < 22]
    after = [f for f in frames if f.at.hour >= 22]
    assert num(before[-1], "EASF02") > num(before[0], "EASF02")
    assert num(after[-1], "EASF01") > num(after[0], "EASF01")
    assert after[-1].values["EASF02"] == after[0].values["EASF02"]


def test_tempo_calendar() -> None:
    sim = make("historique", 1, "TEMPO")
    days = [date(2023, 9, 1) + timedelta(days=i) for i in range(365)]
    colours = {d: sim.period(at(d, 12)).ptec[-1] for d in days}
    reds = [d for d, c in colours.items() if c == "R"]
    whites = [d for d, c in colours.items() if c == "W"]
    assert 10 <= len(reds) <= 40 and 20 <= len(whites) <= 70
    assert all(d.weekday() < 5 and d.month in (11, 12, 1, 2, 3) for d in reds)
    assert all(d.weekday() != 6 for d in whites)

    # A white day followed by a red one: colours change at 06:00, tomorrow is announced at 20:00.
    w = find_day(days, lambda d: colours[d] == "W" and colours.get(d + timedelta(days=1)) == "R")
    r = w + timedelta(days=1)
    expect = [
        (at(w, 19, 59, 50), "HPJW", "----"),
        (at(w, 21), "HPJW", "ROUG"),
        (at(w, 23), "HCJW", "ROUG"),
        (at(r, 5, 59, 50), "HCJW", "ROUG"),
        (at(r, 6, 0, 5), "HPJR", "----"),
        (at(r, 22, 0, 5), "HCJR", _announced(colours, r + timedelta(days=1))),
    ]
    for when, ptec, demain in expect:
        v = first(sim, when).values
        assert (v["PTEC"], v["DEMAIN"]) == (ptec, demain), when
        assert v["OPTARIF"] == "BBR("

    std = make("standard", 3, "TEMPO")
    frame = first(std, at(w, 21))
    stge = decode_stge(str(frame.values["STGE"]))
    assert (stge["tempo_today"], stge["tempo_tomorrow"]) == ("white", "red")
    assert (stge["mobile_peak"], stge["mobile_peak_notice"]) == (1, 2)
    assert frame.values["LTARF"] == "HP  BLANC" and frame.values["NTARF"] == 4
    assert frame.timestamps["DPM1"] == f"{w}T06:00:00" and frame.timestamps["FPM1"] == f"{r}T06:00:00"
    assert frame.timestamps["DPM2"] == f"{r}T06:00:00"
    assert frame.values["PPOINTE"] == frame.values["PJOURF+1"]
    assert str(frame.values["PJOURF+1"]).startswith("00004005 06004006 22004005 NONUTILE")
    assert_round_trip([frame], "standard")


def _announced(colours: dict[date, str], day: date) -> str:
    return {"B": "BLEU", "W": "BLAN", "R": "ROUG"}[colours[day]]


def test_ejp_peak_days() -> None:
    hist = make("historique", 1, "EJP")
    d = find_day(winter_days(), lambda d: hist.period(at(d, 12)).ptec == "PM..")
    nxt = d + timedelta(days=1)
    expect = [
        (at(d, 6, 15), "HN..", False),
        (at(d, 6, 45), "HN..", True),  # the 30-minute notice
        (at(d, 7, 0, 5), "PM..", True),
        (at(nxt, 0, 59, 50), "PM..", True),
        (at(nxt, 1, 0, 5), "HN..", False),
    ]
    for when, ptec, notice in expect:
        v = first(hist, when).values
        assert v["PTEC"] == ptec, when
        assert ("PEJP" in v) is notice and v.get("PEJP", 30) == 30
    std = make("standard", 1, "EJP")
    announced = first(std, at(d, 6, 45))
    assert decode_stge(str(announced.values["STGE"]))["mobile_peak_notice"] == 1
    assert announced.timestamps["DPM1"] == f"{d}T07:00:00" and announced.timestamps["FPM1"] == f"{nxt}T01:00:00"
    assert "PPOINTE" in announced.values
    peak = first(std, at(d, 18))
    assert decode_stge(str(peak.values["STGE"]))["mobile_peak"] == 1
    assert peak.values["LTARF"] == "POINTE  MOBILE" and peak.values["NTARF"] == 2
    assert "DPM1" in peak.values and "PPOINTE" not in peak.values
    assert "DPM1" not in first(std, at(d, 6)).values
    assert_round_trip([announced, peak], "standard")


# --- overruns and producers ------------------------------------------------------------------------------------------


def _overload(sim: MeterSimulator) -> tuple[datetime, datetime]:
    for day in winter_days(30):
        for ev in sim.events(day):
            if ev.overload:
                return ev.start, ev.end
    raise AssertionError("no overload in a month")


def test_three_phase_overrun_gives_short_frame_cycles() -> None:
    sim = make("historique", 3, "HCHP", seed=3)
    begin, end = _overload(sim)
    frames: list[SimFrame] = []
    for f in sim.frames(start=begin - timedelta(seconds=20)):
        frames.append(f)
        if f.at > end + timedelta(seconds=90):
            break
    pattern = "".join("s" if f.short else "L" for f in frames)
    runs = pattern.strip("L").split("L")
    assert len(runs) >= 3 and all(len(run) == 20 for run in runs[:-1]) and 1 <= len(runs[-1]) <= 20
    assert pattern.endswith("L" * 5)  # back to long frames a minute after the overrun
    for i, f in enumerate(frames):
        switch = f.short and f.data.startswith(b"\x04\x02")
        assert switch == (f.short and not frames[i - 1].short)  # EOT on each long -> short switch
        if f.short:
            names = labels(f)
            over = [n for n in names if n.startswith("ADIR")]
            assert names[len(over) :] == ["ADCO", "IINST1", "IINST2", "IINST3"]
            if begin < f.at.astimezone(UTC) < end:
                assert over, f.at
            for n in over:
                assert num(f, n) == num(f, f"IINST{n[-1]}") and num(f, n) > sim.isousc
    decoder = assert_round_trip(frames, "historique")
    assert decoder.assembler.stats.skipped_bytes == pattern.count("Ls")  # the EOTs, between frames


def test_single_phase_overrun() -> None:
    sim = make("historique", 1, "BASE", seed=3)
    begin, end = _overload(sim)
    v = first(sim, begin + (end - begin) / 2).values
    assert num(v, "ADPS") == num(v, "IINST") > num(v, "ISOUSC")
    assert "ADPS" not in first(sim, end + timedelta(minutes=5)).values
    std = make("standard", 1, "BASE", seed=3)
    during = first(std, begin + (end - begin) / 2)
    assert decode_stge(str(during.values["STGE"]))["over_reference_power"]
    assert during.values["SMAXSN"] == during.values["SINSTS"]  # a new daily maximum, stamped now
    assert during.timestamps["SMAXSN"] == during.timestamps["DATE"]


def test_producer_injects_on_a_sunny_day() -> None:
    frames = take(
        make("standard", 1, "BASE", True, seed=5, start=datetime(2024, 6, 20, tzinfo=PARIS)).frames(step=120), 720
    )
    assert_round_trip(frames[::40], "standard")
    injecting = [f for f in frames if f.values["SINSTI"]]
    assert injecting and all(6 <= f.at.hour <= 21 for f in injecting)
    for f in frames:
        stge = decode_stge(str(f.values["STGE"]))
        assert stge["producer"] and stge["negative_active_energy"] is bool(f.values["SINSTI"])
        assert not (f.values["SINSTI"] and f.values["SINSTS"])
        assert num(f, "SMAXIN") >= num(f, "SINSTI")
    assert num(frames[-1], "EAIT") > num(frames[0], "EAIT")


def test_invalid_configurations() -> None:
    with pytest.raises(ValueError, match="producer needs standard mode"):
        make("historique", producer=True)
    with pytest.raises(ValueError, match="timezone-aware"):
        make(start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="phases"):
        make(phases=2)
    with pytest.raises(ValueError, match="contract"):
        make(contract="TEMP")
    with pytest.raises(ValueError, match="12 digits"):
        MeterSimulator(start=WINTER_EVENING, meter_id="1234")
    with pytest.raises(ValueError, match="step"):
        make().frames(step=0)
    assert make(mode="standard").baudrate == 9600 and make().baudrate == 1200


# --- error injection -----------------------------------------------------------------------------------------------

# Labels whose decoded value must never be wrong: numbers and closed sets.  Free text (MOTDETAT, NGTF, LTARF,
# MSG1) cannot be protected against bit-6 flips: ' ' (0x20) becomes '`' (0x60), the checksum is blind to it and
# the text is still printable.
TEXT = Kind.TEXT


def _feed_injected(sim: MeterSimulator, injector: ErrorInjector, n: int, step: float) -> dict[str, int]:
    """Feed n frames, corrupted by ``injector``, one at a time; check each outcome; count the outcomes."""
    mode = sim.mode
    decoder = Decoder(mode)
    seen = {"clean": 0, "dropped": 0, "rejected": 0, "cut_short": 0, "text_only": 0, "bit6_rejected": 0}
    stats = decoder.assembler.stats
    for frame in take(sim.frames(step=step), n):
        data, what = injector.inject(frame.data)
        interrupted, skipped = stats.interrupted, stats.skipped_bytes
        out = decoder.feed(data)  # never raises
        if what is None:
            assert len(out) == 1 and out[0].values == frame.values and out[0].timestamps == frame.timestamps
            assert out[0].invalid == []
            seen["clean"] += 1
            continue
        assert isinstance(what, Injection) and what.kind in ("bitflip", "eot", "truncate")
        if not out:
            seen["dropped"] += 1
            continue
        (got,) = out
        text_changes = _check_no_wrong_value(got, frame, mode, what)
        if got.invalid or stats.interrupted > interrupted:
            seen["rejected"] += 1
            seen["bit6_rejected"] += what.bit == 6
        elif stats.skipped_bytes > skipped:
            # A label's first 'C' (CCASN...) became ETX (bit 6): the frame ends cleanly after the previous
            # group's CR, and the decoder counts the rest as skipped bytes, not as a rejection (see the report).
            assert (what.kind, what.bit, what.field) == ("bitflip", 6, "label") and what.label
            assert data[what.offset] == 0x03 and got.values.keys() < frame.values.keys()
            seen["cut_short"] += 1
        else:
            assert text_changes == 1, (what, got.values)
            seen["text_only"] += 1
    return seen


def _check_no_wrong_value(got: Frame, frame: SimFrame, mode: str, what: Injection) -> int:
    text_changes = 0
    for label, value in got.values.items():
        spec = spec_for(mode, label)
        assert spec is not None, f"unknown label {label!r} after {what}"
        if value != frame.values[label]:
            assert spec.kind is TEXT, (label, value, frame.values[label], what)
            assert (what.kind, what.bit, what.field, what.label) == ("bitflip", 6, "data", label)
            text_changes += 1
    for label, stamp in got.timestamps.items():
        assert stamp == frame.timestamps[label], (label, what)
    return text_changes


@pytest.mark.parametrize(
    ("mode", "phases", "contract", "producer"),
    [
        ("historique", 1, "HCHP", False),
        ("historique", 3, "TEMPO", False),
        ("standard", 1, "BASE", False),
        ("standard", 3, "TEMPO", True),
    ],
)
def test_injected_errors_are_rejected_or_dropped_never_misread(
    mode: str, phases: int, contract: str, producer: bool
) -> None:
    sim = make(mode, phases, contract, producer)
    injector = ErrorInjector(0.4, seed=11)
    seen = _feed_injected(sim, injector, 400, step=37.0)
    injected = sum(injector.counts.values())
    assert injected == seen["dropped"] + seen["rejected"] + seen["cut_short"] + seen["text_only"]
    assert seen["clean"] + injected == 400
    assert seen["dropped"] and seen["rejected"] and seen["bit6_rejected"]
    assert set(injector.counts) == {"bitflip", "eot", "truncate"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.sampled_from(CONFIGS),
    seed=st.integers(0, 2**32),
    rate=st.floats(0.2, 1.0),
)
def test_injected_errors_any_seed(config: tuple[str, int, str, bool], seed: int, rate: float) -> None:
    mode, phases, contract, producer = config
    injector = ErrorInjector(rate, seed=seed)
    seen = _feed_injected(make(mode, phases, contract, producer, seed), injector, 12, step=301.0)
    assert sum(injector.counts.values()) == sum(seen[k] for k in ("dropped", "rejected", "cut_short", "text_only"))


def test_error_injector_rate_and_report() -> None:
    frame = first(make("standard"), WINTER_EVENING).data
    never = ErrorInjector(0.0, seed=1)
    assert all(never.inject(frame) == (frame, None) for _ in range(50)) and not never.counts
    always = ErrorInjector(1.0, seed=1)
    for _ in range(200):
        data, what = always.inject(frame)
        assert what is not None and data != frame
        if what.kind == "bitflip":
            assert what.bit is not None and 0 <= what.bit <= 6
            assert bytes(a ^ b for a, b in zip(data, frame, strict=True)).strip(b"\0") == bytes([1 << what.bit])
            assert what.field in ("stx", "etx", "lf", "cr", "label", "separator", "horodate", "data", "checksum")
        else:
            assert data == frame[: what.offset] + (b"\x04" if what.kind == "eot" else b"")
            assert 0 < what.offset < len(frame) - 1
    assert sum(always.counts.values()) == 200
    with pytest.raises(ValueError, match="between 0 and 1"):
        ErrorInjector(1.5)


# --- output ---------------------------------------------------------------------------------------------------------


def test_write_frames_and_chunks() -> None:
    frames = take(make("historique", 1, "HCHP").frames(), 3)
    sink = BytesIO()
    assert write_frames(frames, sink) == 3
    assert sink.getvalue() == b"".join(f.data for f in frames)
    pieces = list(chunks(frames))
    assert b"".join(c.data for c in pieces) == sink.getvalue()
    assert sum(c.end_of_frame for c in pieces) == 3
    ends = [c.due for c in pieces if c.end_of_frame]
    assert abs(ends[0] - len(frames[0].data) * 10 / 1200) < 1e-9
    assert abs(ends[1] - (frames[0].duration + len(frames[1].data) * 10 / 1200)) < 1e-9
    assert all(c.data.startswith(b"\n") for c in pieces if c.data[:1] != b"\x02")


def test_serial_output_on_a_pty() -> None:
    import serial

    master, slave = pty.openpty()
    try:
        out = open_output(os.ttyname(slave), 9600)
        assert isinstance(out, serial.Serial)
        assert (out.bytesize, out.parity, out.stopbits, out.baudrate) == (7, "E", 1, 9600)
        frames = take(make("standard", 3, "EJP").frames(), 2)
        assert write_frames(frames, out) == 2
        out.close()
        received = b""
        while received.count(b"\x03") < 2:
            received += os.read(master, 65536)
        assert_round_trip(frames, "standard")
        assert [f.values for f in Decoder().feed(received)] == [f.values for f in frames]
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.slow
def test_simulated_stream_paces_and_stops() -> None:
    sim = make("standard", 1, "BASE")
    expected = take(sim.frames(), 2)
    stream = SimulatedStream(sim)
    t0 = time.monotonic()
    received = b""
    while received.count(b"\x03") < 2 and time.monotonic() - t0 < 10:
        received += stream.read(timeout=0.2)
    elapsed = time.monotonic() - t0
    # Two ~880-byte frames at 9600 Bd take about 1.9 s on the wire.
    assert elapsed >= 0.8 * (expected[0].duration + len(expected[1].data) * 10 / 9600)
    assert [f.values for f in Decoder().feed(received)] == [f.values for f in expected]

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(stream.read(timeout=None)))
    stream.read(timeout=5)  # drain what has arrived, so the next read must wait
    reader.start()
    stream.close()
    reader.join(timeout=2)
    assert not reader.is_alive() and stream.closed
    assert stream.read(timeout=0.1) == b""


# --- the command ------------------------------------------------------------------------------------------------------


def _teleinfo(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=REPO, capture_output=True, timeout=60)


@pytest.mark.integration
def test_simulate_into_decode_pipeline() -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "appliance", "simulate", "--frames", "3", "--mode", "standard"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    decode = subprocess.run(
        [sys.executable, "-m", "appliance", "decode", "-"], cwd=REPO, stdin=sim.stdout, capture_output=True, timeout=60
    )
    assert sim.stdout is not None and sim.stderr is not None
    sim.stdout.close()
    assert sim.wait(timeout=30) == 0 and decode.returncode == 0
    lines = decode.stdout.decode().splitlines()
    assert len(lines) == 3
    import json

    objs = [json.loads(line) for line in lines]
    assert all(o["mode"] == "standard" and o["invalid"] == [] and o["values"]["VTIC"] == "02" for o in objs)
    assert b"3 frames" in sim.stderr.read()


@pytest.mark.integration
def test_simulate_to_a_file_with_errors(tmp_path: Path) -> None:
    path = tmp_path / "tri.bin"
    args = ["simulate", "--mode", "standard", "--phases", "3", "--contract", "TEMPO", "--producer"]
    args += ["--frames", "40", "--errors", "0.5", "--seed", "4", "--start", "2024-01-15T21:55", "--output", str(path)]
    done = _teleinfo(*args)
    assert done.returncode == 0, done.stderr
    assert b"40 frames, corrupted: " in done.stderr and b"none" not in done.stderr
    decoder = Decoder("standard")
    frames = decoder.feed(path.read_bytes())
    assert 0 < len(frames) < 40 and sum(decoder.rejects.values()) > 0
    first_date = next(f.timestamps["DATE"] for f in frames if "DATE" in f.timestamps)
    assert first_date.startswith("2024-01-15T21:5") and first_date.endswith("+01:00")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--producer"], "--producer needs --mode standard"),
        (["--errors", "1.5"], "--errors must be between 0 and 1"),
        (["--errors", "-0.1"], "--errors must be between 0 and 1"),
        (["--output", "/nonexistent-dir/x.bin"], "cannot open /nonexistent-dir/x.bin"),
        (["--start", "yesterday"], "--start is not an ISO 8601"),
        (["--start", "1999-01-01T00:00"], "2001-2098"),
        (["--meter-id", "123"], "12 digits"),
        (["--frames", "0"], "--frames must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("teleinfo simulate: ") and message in err


@pytest.mark.integration
@pytest.mark.slow
def test_realtime_paces_at_the_baud_rate() -> None:
    t0 = time.monotonic()
    done = _teleinfo("simulate", "--realtime", "--frames", "2")
    elapsed = time.monotonic() - t0
    assert done.returncode == 0 and done.stdout.count(b"\x03") == 2
    # Two historique frames of ~150 bytes at 1200 Bd need about 2.5 s; leave a wide margin either way.
    assert 1.0 <= elapsed < 30


@pytest.mark.integration
def test_closed_reader_is_not_an_error() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "simulate", "--mode", "standard"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(5000)
    proc.stdout.close()
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""
