"""The live page's data side, without a browser: the bounded 24 h power history, the payload builders of
docs/WEB.md, and the static files shipped as package data."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from appliance.simulator import PARIS, MeterSimulator
from appliance.tariff import TariffEngine, parse_tariff
from appliance.web import static_file, static_names
from appliance.web.history import PowerHistory
from appliance.web.live import frame_payload, snapshot_payload, sse_event, status_payload


def test_history_keeps_one_point_per_minute_for_24_hours_in_fixed_memory() -> None:
    h = PowerHistory()
    t0 = 1_800_000_000.0
    closed = [h.add(t0 + s, 1000 + (s % 60)) for s in range(0, 3 * 86_400, 5)]  # three days, a frame every 5 s
    assert len(h._ids) == 1440  # the arrays never grow
    points = h.points(t0 + 3 * 86_400 - 5)
    assert len(points) == 1440 and points[-1][0] - points[0][0] == 1439 * 60
    assert all(p[1] == 1000 and p[3] == 1055 for p in points)
    assert [p for p in closed if p is not None][:1] == [(int(t0 // 60) * 60, 1000, 1028, 1055)]


def test_history_ignores_the_past_and_non_numbers() -> None:
    h = PowerHistory(span_s=600, bucket_s=60)
    assert h.add(1000.0, 100) is None
    assert h.add(1000.0 - 700, 5000) is None  # older than the span
    assert h.add(float("nan"), 5) is None and h.add(1001.0, float("inf")) is None
    h.add(1700.0, 300)  # a new bucket eleven minutes later: the first one left the span
    assert h.points(1700.0) == [(1680, 300, 300, 300)]
    h.add(1000.0, 999)  # the clock stepped back: the slot now holds a newer minute, the old value is dropped
    assert h.points(1700.0) == [(1680, 300, 300, 300)]
    with pytest.raises(ValueError):
        PowerHistory(span_s=90, bucket_s=60)


def test_payloads_follow_the_contract_and_hold_nothing_personal() -> None:
    now = datetime(2026, 3, 2, 10, 0, tzinfo=PARIS)
    sim = MeterSimulator(mode="standard", phases=3, contract="HCHP", start=now, producer=True, seed=5)
    engine = TariffEngine(parse_tariff({}))
    history = PowerHistory()
    frame = None
    for _, sf in zip(range(3), sim.frames(step=30), strict=False):
        engine.update_frame("standard", sf.values, None, sf.at)
        frame = frame_payload("standard", sf.values, sf.at, engine)
        history.add(sf.at.timestamp(), frame["power_va"])
    assert frame is not None
    assert set(frame) == {"at", "mode", "power_va", "injected_va", "phases", "period", "period_label", "price"}
    assert [p["phase"] for p in frame["phases"]] == [1, 2, 3] and frame["period"] == "hp"
    assert frame["price"] == {"value": 0.2065, "origin": "default", "since": "2026-02-01", "current": True}
    status = status_payload(
        12.34,
        {"state": "up", "line": "up ready 100% #ok"},
        {
            "outputs": {"mqtt": {"state": "up", "sent": 4}},
            "checks": {"status": "ok", "last": {"ports": {"status": "ok", "at": 1.0}}},
        },
    )
    assert status["outputs"] == {"mqtt": {"state": "up", "last_error": None}} and status["uptime_s"] == 12.3
    snap = snapshot_payload(now, frame=frame, frame_age_s=1.234, tariff=engine, history=history, status=status)
    assert set(snap) == {"now", "frame", "tariff", "history", "status"} and snap["frame"]["age_s"] == 1.2
    text = json.dumps(snap)
    assert sim.address not in text and "prm" not in text.lower()
    event = sse_event("frame", frame)
    assert event.startswith(b"event: frame\ndata: {") and event.endswith(b"}\n\n") and event.count(b"\n") == 3


def test_historique_single_and_three_phase_frames() -> None:
    at = datetime(2026, 3, 2, 10, 0, tzinfo=PARIS)
    mono = frame_payload("historique", {"PAPP": 1230, "IINST": 6}, at)
    assert mono["phases"] == [{"phase": 1, "power_va": 1230, "current_a": 6, "voltage_v": None}]
    assert mono["period"] is None and mono["price"] is None
    tri = frame_payload("historique", {"PAPP": 990, "IINST1": 1, "IINST2": 2, "IINST3": 3}, at)
    assert [p["current_a"] for p in tri["phases"]] == [1, 2, 3] and tri["power_va"] == 990


def test_static_files_are_package_data_and_nothing_else_is_served() -> None:
    assert static_names() == ["app.css", "app.js", "index.html"]
    page = static_file("index.html")
    assert page is not None and page[1] == "text/html; charset=utf-8"
    html = page[0].decode()
    assert '<html lang="fr">' in html and "static/app.js" in html
    assert "http://" not in html and "https://" not in html  # no CDN, no external font
    for name in ("app.js", "app.css"):
        found = static_file(name)
        assert found is not None and b"http://" not in found[0].replace(b"http://www.w3.org/2000/svg", b"")
        assert b"https://" not in found[0]
    for bad in ("../__init__.py", "/etc/passwd", "", "static", "index.html/.."):
        assert static_file(bad) is None
