"""The cost engine: energy per period per day from the meter's indexes, costs, Tempo colours, the state file.

The simulator drives every contract in both modes through the real decoder; hand-made readings cover what a
simulated day does not: DST days, gaps across midnight, the 06:00 Tempo switch with a skewed meter clock,
restarts, resets, impossible jumps, a meter change, a price change at a date.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.simulator import PARIS, MeterSimulator
from appliance.tariff import (
    TariffConfig,
    TariffEngine,
    TariffKeeper,
    TariffStore,
    parse_tariff,
    read_meter,
)
from appliance.tariff.periods import PTEC_PERIODS
from appliance.tic import Decoder

# Prices for every period, so that the tests never depend on the built-in (dated) defaults.
PRICES = {
    "since": "2020-01-01",
    "subscription_per_month": 15.5,
    "base": 0.2,
    "hc": 0.15,
    "hp": 0.21,
    "tempo_blue_hc": 0.12,
    "tempo_blue_hp": 0.15,
    "tempo_white_hc": 0.14,
    "tempo_white_hp": 0.17,
    "tempo_red_hc": 0.146,
    "tempo_red_hp": 0.65,
    "ejp_normal": 0.14,
    "ejp_peak": 1.08,
}


def config(**kw: Any) -> TariffConfig:
    return parse_tariff({"prices": [PRICES], **kw})


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


# --- what a frame says -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ngtf", "contract"),
    [("TEMPO", "TEMPO"), ("H PLEINE/CREUSE", "HCHP"), ("BASE", "BASE"), ("EJP", "EJP"), ("PRODUCTEUR", None)],
)
def test_standard_contract_from_ngtf(ngtf: str, contract: str | None) -> None:
    assert read_meter("standard", {"NGTF": ngtf}).contract == contract


def test_standard_index_outside_the_calendar_is_not_guessed() -> None:
    values = {"NGTF": "PRODUCTEUR", "EASF01": 10, "EASF02": 20, "NTARF": 1, "PREF": 6, "PCOUP": 9}
    r = read_meter("standard", values)
    assert r.contract is None and r.register_periods == {"EASF01": None, "EASF02": None} and r.period is None
    assert r.max_va == 9000 and r.kva == 6
    r = read_meter("standard", values, standard_indexes=["hc", "hp"])
    assert r.register_periods == {"EASF01": "hc", "EASF02": "hp"} and r.period == "hc"


def test_tempo_colours_from_both_modes() -> None:
    h = read_meter("historique", {"OPTARIF": "BBR(", "PTEC": "HCJW", "DEMAIN": "ROUG", "BBRHCJW": 5})
    assert (h.contract, h.period, h.tempo_today, h.tempo_tomorrow) == ("TEMPO", "tempo_white_hc", "white", "red")
    assert read_meter("historique", {"PTEC": "HPJB", "DEMAIN": "----"}).tempo_tomorrow is None
    # docs/PROTOCOL.md: red today, white next
    s = read_meter("standard", {"NGTF": "TEMPO", "NTARF": 6, "STGE": "9B3A9000"})
    assert (s.period, s.tempo_today, s.tempo_tomorrow) == ("tempo_red_hp", "red", "white")


# --- the simulator, every contract, both modes ---------------------------------------------------------------------

SIM_START = paris(2026, 1, 12, 20, 0)  # seed 1: red, blue, red Tempo days; EJP peaks on the 12th and the 14th
SIM_MINUTES = 52 * 60


def run_simulator(mode: str, contract: str, phases: int = 1) -> tuple[TariffEngine, dict[date, dict[str, int]], Any]:
    """Feed a simulated meter to the engine through the real decoder, one frame a minute for 52 hours.

    Returns the engine, and the energy per day and period as the simulator's own clock says: every increase of
    the indexes between two frames is counted in the period the simulator was in at the earlier frame (it
    integrates the load into that period's register) and on that frame's local day.
    """
    sim = MeterSimulator(mode=mode, contract=contract, phases=phases, start=SIM_START, seed=1)  # type: ignore[arg-type]
    decoder = Decoder(mode)
    engine = TariffEngine(config())
    expected: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    previous: tuple[datetime, dict[str, int]] | None = None
    last_indexes: dict[str, int] = {}
    for n, sf in enumerate(sim.frames(step=60)):
        if n >= SIM_MINUTES:
            break
        (frame,) = decoder.feed(sf.data)
        assert frame.values == sf.values
        engine.update_frame(frame.mode, frame.values, frame.meter, sf.at)
        indexes = {k: v for k, v in frame.values.items() if k.startswith(("EASF", "BBRH", "HCH", "EJPH", "BASE"))}
        if not indexes:
            continue  # a three-phase short frame: no index
        if previous is not None:
            at, before = previous
            moved = sum(indexes[k] - before[k] for k in indexes)
            period = PTEC_PERIODS[sim.period(at).ptec]
            # Short frames in between: the energy is spread over the whole gap; with one-minute steps the
            # gaps of the test never cross midnight, so the day of the earlier frame is the day.
            expected[at.date()][period] += moved
        previous = (sf.at, indexes)
        last_indexes = indexes
    return engine, expected, last_indexes


@pytest.mark.parametrize(
    ("mode", "contract", "phases"),
    [
        ("historique", "BASE", 1),
        ("historique", "HCHP", 1),
        ("historique", "TEMPO", 1),
        ("historique", "EJP", 1),
        ("historique", "TEMPO", 3),
        ("standard", "BASE", 1),
        ("standard", "HCHP", 3),
        ("standard", "TEMPO", 1),
        ("standard", "EJP", 1),
    ],
)
def test_simulated_meter_energy_per_period_per_day(mode: str, contract: str, phases: int) -> None:
    engine, expected, _ = run_simulator(mode, contract, phases)
    days = sorted(expected)
    assert days == [date(2026, 1, 12), date(2026, 1, 13), date(2026, 1, 14)]
    for day in days:
        assert engine.day_energy(day) == {p: wh for p, wh in expected[day].items() if wh}, day
    c = engine.counters
    assert (c.resets, c.glitches, c.rejected_jumps, c.meter_changes) == (0, 0, 0, 0)
    snap = engine.snapshot(paris(2026, 1, 14, 23, 59))
    assert snap["contract"] == contract
    today = snap["today"]
    want = {p: round(wh / 1000 * PRICES[p], 6) for p, wh in expected[date(2026, 1, 14)].items() if wh}
    assert {p: e["cost"] for p, e in today["periods"].items()} == want
    assert today["cost"] == pytest.approx(sum(want.values()))
    assert today["subscription"] == pytest.approx(15.5 / 31)
    assert today["total"] == pytest.approx(sum(want.values()) + 15.5 / 31)
    month = snap["month"]
    assert month["wh"] == sum(sum(p.values()) for p in expected.values())
    assert month["subscription"] == pytest.approx(15.5 * 14 / 31)
    assert month["unattributed_wh"] == 0 and month["prices"] == {"config": True, "default": None}


@pytest.mark.parametrize("mode", ["historique", "standard"])
def test_simulated_tempo_colours_and_current_price(mode: str) -> None:
    sim = MeterSimulator(mode=mode, contract="TEMPO", start=SIM_START, seed=1)  # type: ignore[arg-type]
    engine = TariffEngine(config())
    seen: dict[datetime, dict[str, Any] | None] = {}
    checkpoints = {paris(2026, 1, 12, 21, 0), paris(2026, 1, 13, 3, 0), paris(2026, 1, 13, 7, 0)}
    for sf in sim.frames(start=paris(2026, 1, 12, 20, 0), step=60):
        if sf.at > paris(2026, 1, 13, 7, 0):
            break
        engine.update_frame(mode, sf.values, None, sf.at)
        if sf.at in checkpoints:
            seen[sf.at] = engine.tempo()
            if sf.at.hour == 21:
                price = engine.current_price(sf.at)
                assert price is not None and price.value == PRICES["tempo_red_hp"]
    # The 12th is red, the 13th blue (announced from 20:00); at 03:00 the Tempo day is still the 12th.
    assert seen[paris(2026, 1, 12, 21, 0)] == {"day": "2026-01-12", "today": "red", "tomorrow": "blue"}
    assert seen[paris(2026, 1, 13, 3, 0)] == {"day": "2026-01-12", "today": "red", "tomorrow": "blue"}
    assert seen[paris(2026, 1, 13, 7, 0)] == {"day": "2026-01-13", "today": "blue", "tomorrow": None}
    assert engine.snapshot(paris(2026, 1, 13, 7, 0))["period"] == "tempo_blue_hp"


# --- hand-made edge cases ------------------------------------------------------------------------------------------


def base_frame(wh: int, meter: str = "021861348497", **extra: Any) -> dict[str, Any]:
    return {"ADCO": meter, "OPTARIF": "BASE", "ISOUSC": 30, "BASE": wh, "PTEC": "TH..", **extra}


def feed_constant_load(engine: TariffEngine, start: datetime, end: datetime, watts: int, step_s: int = 600) -> int:
    """Frames of a BASE meter at a constant load from ``start`` to ``end`` (real instants, DST-aware)."""
    t0 = t = start.timestamp()
    wh = 1_000_000
    while t <= end.timestamp():
        wh = 1_000_000 + round(watts * (t - t0) / 3600)
        engine.update_frame("historique", base_frame(wh), None, datetime.fromtimestamp(t, PARIS))
        t += step_s
    return wh


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 6, 1), 24)])
def test_dst_days_last_23_or_25_hours(day: date, hours: int) -> None:
    engine = TariffEngine(config())
    start = datetime.combine(day, datetime.min.time(), tzinfo=PARIS)
    feed_constant_load(engine, start - timedelta(hours=1), start + timedelta(days=1, hours=1), 1000)
    assert engine.day_energy(day) == {"base": hours * 1000}


def test_a_gap_across_midnight_is_spread_over_the_days_by_time() -> None:
    engine = TariffEngine(config())
    engine.update_frame("historique", base_frame(1_000_000), None, paris(2026, 1, 31, 23, 0))
    engine.update_frame("historique", base_frame(1_003_001), None, paris(2026, 2, 1, 2, 0))
    assert engine.day_energy(date(2026, 1, 31)) == {"base": 1000}
    assert engine.day_energy(date(2026, 2, 1)) == {"base": 2001}  # the remainder Wh goes to the largest share
    assert engine.snapshot(paris(2026, 2, 1, 3, 0))["month"]["wh"] == 2001
    assert engine.snapshot(paris(2026, 1, 31, 23, 30))["month"]["wh"] == 1000


def test_a_gap_over_several_days_and_a_dst_change() -> None:
    engine = TariffEngine(config())
    engine.update_frame("historique", base_frame(0), None, paris(2026, 3, 28, 0, 0))
    engine.update_frame("historique", base_frame(71_000), None, paris(2026, 3, 31, 0, 0))  # 24 + 23 + 24 hours
    assert [engine.day_energy(date(2026, 3, d)) for d in (28, 29, 30)] == [
        {"base": 24_000},
        {"base": 23_000},
        {"base": 24_000},
    ]


def tempo(ptec: str, demain: str, hc_b: int, hp_b: int, hc_w: int, hp_w: int) -> dict[str, Any]:
    return {
        "ADCO": "021861348497",
        "OPTARIF": "BBR(",
        "ISOUSC": 45,
        "BBRHCJB": hc_b,
        "BBRHPJB": hp_b,
        "BBRHCJW": hc_w,
        "BBRHPJW": hp_w,
        "BBRHCJR": 0,
        "BBRHPJR": 0,
        "PTEC": ptec,
        "DEMAIN": demain,
    }


def test_tempo_day_switches_when_the_meter_does_not_when_the_clock_does() -> None:
    engine = TariffEngine(config())
    engine.update_frame("historique", tempo("HCJB", "BLAN", 100, 500, 0, 0), None, paris(2026, 1, 20, 5, 58))
    assert engine.tempo() == {"day": "2026-01-19", "today": "blue", "tomorrow": "white"}
    # The appliance's clock says 06:00:30, the meter's (a little late) still says HC of the blue day.
    engine.update_frame("historique", tempo("HCJB", "BLAN", 102, 500, 0, 0), None, paris(2026, 1, 20, 6, 0, 30))
    assert engine.tempo() == {"day": "2026-01-19", "today": "blue", "tomorrow": "white"}
    engine.update_frame("historique", tempo("HPJW", "----", 102, 500, 0, 3), None, paris(2026, 1, 20, 6, 1, 30))
    assert engine.tempo() == {"day": "2026-01-20", "today": "white", "tomorrow": None}
    # Energy goes to the period whose index moved, whatever the clock says.
    assert engine.day_energy(date(2026, 1, 20)) == {"tempo_blue_hc": 2, "tempo_white_hp": 3}
    # A meter a little early: HP of the new day at 05:59:50 on the appliance's clock.
    early = TariffEngine(config())
    early.update_frame("historique", tempo("HPJW", "----", 0, 0, 0, 0), None, paris(2026, 1, 20, 5, 59, 50))
    assert early.tempo() == {"day": "2026-01-20", "today": "white", "tomorrow": None}


def test_restart_mid_day_counts_nothing_twice_and_loses_nothing(tmp_path: Path) -> None:
    """A power cut at any instant: the state saved before it, plus the indexes after it, give the same ledger."""
    cfg = config(save_interval=600)
    sim = MeterSimulator(mode="standard", contract="HCHP", start=paris(2026, 2, 3, 4, 0), seed=2)
    frames = [sf for _, sf in zip(range(20 * 60), sim.frames(step=60), strict=False)]  # 04:00 -> midnight

    reference = TariffEngine(cfg)
    for sf in frames:
        reference.update_frame("standard", sf.values, None, sf.at)

    clock = [0.0]
    path = tmp_path / "tariff.json"
    keeper = TariffKeeper(cfg, path, clock=lambda: clock[0])
    for sf in frames[: 9 * 60 + 5]:  # until 13:04, a save every 10 minutes of monotonic time
        clock[0] += 60
        keeper.update_frame("standard", sf.values, None, sf.at)
    assert keeper.store.writes == 9 * 6  # the last one at 12:59
    # The power cut: frames of 13:00 to 13:04 were counted but not saved; the appliance is off until 15:30.
    keeper = TariffKeeper(cfg, path, clock=lambda: clock[0])
    for sf in frames[int(11.5 * 60) :]:
        keeper.update_frame("standard", sf.values, None, sf.at)
    keeper.close()
    restarted = TariffKeeper(cfg, path).engine
    day = date(2026, 2, 3)
    assert restarted.day_energy(day) == reference.day_energy(day)
    assert sum(restarted.day_energy(day).values()) > 10_000
    want = reference.snapshot(paris(2026, 2, 3, 23, 59))
    got = restarted.snapshot(paris(2026, 2, 3, 23, 59))
    assert got["today"] == want["today"] and got["month"] == want["month"]


def test_restart_across_midnight_spreads_the_unsaved_energy() -> None:
    cfg = config()
    engine = TariffEngine(cfg)
    engine.update_frame("historique", base_frame(5000), None, paris(2026, 2, 10, 22, 0))
    engine.update_frame("historique", base_frame(6000), None, paris(2026, 2, 10, 23, 0))
    state = json.loads(json.dumps(engine.to_state()))  # what the file holds
    engine.update_frame("historique", base_frame(6500), None, paris(2026, 2, 10, 23, 30))  # lost with the cut
    back = TariffEngine(cfg, state)
    back.update_frame("historique", base_frame(8000), None, paris(2026, 2, 11, 1, 0))
    assert back.day_energy(date(2026, 2, 10)) == {"base": 1000 + 1000}
    assert back.day_energy(date(2026, 2, 11)) == {"base": 1000}


def test_index_reset_is_confirmed_by_the_next_reading() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    for i, wh in enumerate([10_000, 10_010, 5, 15, 40]):  # the meter's index restarted from 0
        engine.update_frame("historique", base_frame(wh), None, t + timedelta(seconds=2 * i))
    assert engine.counters.resets == 1 and engine.counters.glitches == 0
    assert engine.day_energy(t.date()) == {"base": 10 + 10 + 25}


def test_a_lone_lower_or_higher_reading_is_a_glitch_not_a_reset() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    for i, wh in enumerate([10_000, 9_000, 10_004, 90_010_004, 10_008]):
        engine.update_frame("historique", base_frame(wh), None, t + timedelta(seconds=2 * i))
    c = engine.counters
    assert (c.glitches, c.resets, c.rejected_jumps) == (2, 0, 0)
    assert engine.day_energy(t.date()) == {"base": 8}


def test_an_impossible_jump_is_not_counted() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    # ISOUSC 30 A: at most ~6.9 kVA; 1 MWh in 2 seconds is not electricity, it is a bad reading or a swap.
    for i, wh in enumerate([10_000, 10_003, 1_010_003, 1_010_006, 1_010_009]):
        engine.update_frame("historique", base_frame(wh), None, t + timedelta(seconds=2 * i))
    c = engine.counters
    assert (c.rejected_jumps, c.rejected_wh, c.glitches) == (1, 1_000_000, 0)
    assert engine.day_energy(t.date()) == {"base": 9}
    # After a long gap the same increase is possible, and counted.
    engine.update_frame("historique", base_frame(1_030_009), None, t + timedelta(hours=4))
    assert engine.day_energy(t.date()) == {"base": 20_009}


def test_meter_change_drops_the_old_indexes_keeps_the_ledger() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    engine.update_frame("historique", base_frame(50_000, "021861348497"), "021861348497", t)
    engine.update_frame("historique", base_frame(50_100, "021861348497"), "021861348497", t + timedelta(minutes=1))
    engine.update_frame("historique", base_frame(7, "041976123456"), "041976123456", t + timedelta(minutes=30))
    engine.update_frame("historique", base_frame(57, "041976123456"), "041976123456", t + timedelta(minutes=31))
    c = engine.counters
    assert (c.meter_changes, c.resets, c.glitches, c.rejected_jumps) == (1, 0, 0, 0)
    assert engine.day_energy(t.date()) == {"base": 150}


def test_frames_missing_an_index_count_it_when_it_comes_back() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    hc = {"ADCO": "021861348497", "OPTARIF": "HC..", "ISOUSC": 30, "PTEC": "HP.."}
    engine.update_frame("historique", {**hc, "HCHC": 1000, "HCHP": 2000}, None, t)
    engine.update_frame("historique", {**hc, "HCHC": 1000}, None, t + timedelta(minutes=10))  # HCHP rejected
    engine.update_frame("historique", {**hc}, None, t + timedelta(minutes=20))  # a frame with no index at all
    engine.update_frame("historique", {**hc, "HCHC": 1000, "HCHP": 2500}, None, t + timedelta(minutes=30))
    assert engine.day_energy(t.date()) == {"hp": 500}


def test_unknown_calendar_counts_energy_as_unattributed() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    frame = {"ADSC": "041976123456", "NGTF": "SUPER FLEX", "PREF": 6, "NTARF": 3}
    engine.update_frame("standard", {**frame, "EASF01": 100, "EASF03": 900}, None, t)
    engine.update_frame("standard", {**frame, "EASF01": 100, "EASF03": 1200}, None, t + timedelta(minutes=5))
    snap = engine.snapshot(t + timedelta(minutes=5))
    assert snap["period"] is None and snap["price"] is None and snap["contract"] is None
    assert snap["today"]["wh"] == 300 and snap["today"]["unattributed_wh"] == 300
    assert snap["today"]["cost"] is None and snap["today"]["periods"] == {}


def test_the_clock_going_back_counts_nothing_until_it_catches_up() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    engine.update_frame("historique", base_frame(1000), None, t)
    engine.update_frame("historique", base_frame(1100), None, t - timedelta(hours=1))  # the clock was stepped back
    engine.update_frame("historique", base_frame(1200), None, t - timedelta(minutes=59))
    assert engine.counters.clock_backwards == 1 and engine.day_energy(t.date()) == {}
    engine.update_frame("historique", base_frame(1300), None, t + timedelta(minutes=30))
    assert engine.day_energy(t.date()) == {"base": 300}


def test_price_change_at_a_date_prices_each_day_with_its_own_set() -> None:
    cfg = parse_tariff(
        {
            "prices": [
                {"since": "2026-01-01", "base": 0.2, "subscription_per_month": 14.0},
                {"since": "2026-03-01", "base": 0.25, "subscription_per_month": 15.5},
            ]
        }
    )
    engine = TariffEngine(cfg)
    feed_constant_load(engine, paris(2026, 2, 28, 0, 0), paris(2026, 3, 2, 0, 0), 1000)
    feb = engine.snapshot(paris(2026, 2, 28, 23, 0))
    mar = engine.snapshot(paris(2026, 3, 1, 23, 0))
    assert feb["today"]["wh"] == 24_000 and feb["today"]["cost"] == pytest.approx(24 * 0.2)
    assert mar["today"]["wh"] == 24_000 and mar["today"]["cost"] == pytest.approx(24 * 0.25)
    assert mar["today"]["subscription"] == pytest.approx(15.5 / 31)
    assert feb["month"]["subscription"] == pytest.approx(14.0)  # the whole of February
    assert mar["price"] == {"value": 0.25, "origin": "config", "since": "2026-03-01", "current": True}
    # Prices live in the configuration, not in the ledger: a corrected price set reprices the kept days.
    fixed = TariffEngine(parse_tariff({"prices": [{"since": "2026-01-01", "base": 0.1}]}), engine.to_state())
    assert fixed.snapshot(paris(2026, 3, 1, 23, 0))["today"]["cost"] == pytest.approx(2.4)


def test_default_prices_are_marked_as_such_in_the_record() -> None:
    engine = TariffEngine(parse_tariff({}))
    feed_constant_load(engine, paris(2026, 3, 2, 8, 0), paris(2026, 3, 2, 10, 0), 600)
    snap = engine.snapshot(paris(2026, 3, 2, 10, 0))
    assert snap["price"] == {"value": 0.19398, "origin": "default", "since": "2026-02-01", "current": True}
    assert snap["today"]["prices"] == {"config": False, "default": {"since": "2026-02-01", "current": True}}
    assert snap["today"]["cost"] == pytest.approx(1.2 * 0.19398)
    assert snap["kva"] == 6 and snap["today"]["subscription"] == pytest.approx(188.20 / 12 / 31, abs=1e-6)


def test_old_days_fold_into_their_month() -> None:
    engine = TariffEngine(config())
    feed_constant_load(engine, paris(2026, 1, 1, 0, 0), paris(2026, 4, 15, 0, 0), 100, step_s=3600)
    state = engine.to_state()
    assert len(state["days"]) <= 71 and "2026-01" in state["months"]
    jan = engine.snapshot(paris(2026, 4, 15, 0, 0))
    assert jan["month"]["wh"] == 14 * 2400
    back = TariffEngine(config(), json.loads(json.dumps(state)))
    assert back.to_state() == state


# --- the state file ------------------------------------------------------------------------------------------------


def test_state_file_is_written_atomically_and_round_trips(tmp_path: Path) -> None:
    engine = TariffEngine(config())
    feed_constant_load(engine, paris(2026, 2, 2, 0, 0), paris(2026, 2, 3, 12, 0), 800)
    store = TariffStore(tmp_path / "sub" / "tariff.json")
    assert store.save(engine.to_state())
    assert not (tmp_path / "sub" / "tariff.json.tmp").exists()
    loaded = store.load()
    assert loaded is not None and TariffEngine(config(), loaded).to_state() == engine.to_state()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2]",
        b'{"version": 99}',
        b'{"version": 1, "registers": {"BASE": {"wh": -5, "at": 1.0}}}',
        b'{"version": 1, "days": {"2026-13-01": {"base": 1}}}',
        b'{"version": 1, "last_t": "NaN"}',
        b"\xff\xfe",
    ],
)
def test_a_bad_state_file_is_set_aside_and_counting_starts_afresh(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tariff.json"
    path.write_bytes(content)
    keeper = TariffKeeper(config(), path)
    assert keeper.engine.to_state()["days"] == {}
    assert (tmp_path / "tariff.json.bad").read_bytes() == content and not path.exists()
    assert keeper.store.last_error


def test_an_unwritable_state_directory_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = TariffStore(blocker / "tariff.json")
    assert not store.save({"version": 1}) and store.last_error and "cannot write" in store.last_error


def test_counters_survive_a_restart() -> None:
    engine = TariffEngine(config())
    t = paris(2026, 2, 2, 10, 0)
    for i, wh in enumerate([10_000, 10_010, 5, 15]):
        engine.update_frame("historique", base_frame(wh), None, t + timedelta(seconds=2 * i))
    back = TariffEngine(config(), engine.to_state())
    assert back.counters == engine.counters and back.counters.resets == 1
    assert not math.isnan(back.snapshot(t)["today"]["cost"])
