"""The live page in a real browser (Debian's Chromium through chromedriver), against a tiny server that plays
the JSON/SSE contract of docs/WEB.md from real engine output (tests/livepage.py).

What a person sees is checked: no console error, the power of each new frame within a second, the costs the
engine computed, the Tempo colours, the layout at 360 and 1280 px without horizontal scrolling, a clear message
when the meter sends nothing and when the appliance cannot be reached.  Screenshots are kept under
``build/test-artifacts/web/`` (printed at the end of each test).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance.simulator import PARIS, MeterSimulator
from appliance.tariff import TariffEngine, parse_tariff
from appliance.tic import Decoder
from appliance.web.history import PowerHistory
from appliance.web.live import frame_payload, power_of, snapshot_payload, status_payload

from .livepage import LivePageServer
from .util import wait_until
from .webdriver import WebDriver, browser_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not browser_available(), reason="chromium and chromium-driver are not installed"),
]

ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts" / "web"
PRICES = {
    "since": "2020-01-01",
    "subscription_per_month": 19.59,
    "tempo_blue_hc": 0.1232,
    "tempo_blue_hp": 0.1494,
    "tempo_white_hc": 0.1391,
    "tempo_white_hp": 0.173,
    "tempo_red_hc": 0.146,
    "tempo_red_hp": 0.6468,
}


class Appliance:
    """The appliance's side, without a service: a simulated meter's frames through the decoder into the engine
    and the power history, turned into the payloads of docs/WEB.md."""

    def __init__(self, sim: MeterSimulator, tariff: dict[str, Any]) -> None:
        self.sim = sim
        self.decoder = Decoder(sim.mode)
        self.engine = TariffEngine(parse_tariff(tariff))
        self.history = PowerHistory()
        self.frame: dict[str, Any] | None = None
        self.frame_at = 0.0
        self.started = time.time()
        self.status = status_payload(
            0.0,
            {"state": "up", "line": "up ready 100% #ok"},
            {"outputs": {"mqtt": {"state": "up"}, "influxdb": {"state": "failing"}}, "checks": {"status": "ok"}},
        )

    def feed(self, sf: Any) -> tuple[dict[str, Any], tuple[int, int, int, int] | None]:
        (frame,) = self.decoder.feed(sf.data)
        at: datetime = sf.at
        self.engine.update_frame(frame.mode, frame.values, frame.meter, at)
        va = power_of(frame.mode, frame.values)
        closed = self.history.add(at.timestamp(), va) if va is not None else None
        self.frame = frame_payload(frame.mode, frame.values, at, self.engine)
        self.frame_at = time.monotonic()
        return self.frame, closed

    def snapshot(self) -> dict[str, Any]:
        now = datetime.now(PARIS)
        status = {**self.status, "uptime_s": round(time.time() - self.started, 1)}
        age = None if self.frame is None else time.monotonic() - self.frame_at
        return snapshot_payload(
            now, frame=self.frame, frame_age_s=age, tariff=self.engine, history=self.history, status=status
        )


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    path = ARTIFACTS / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):
        old.unlink()
    yield path
    with capsys.disabled():
        print(f"\n  screenshots: {path}")


@pytest.fixture
def browser_dir(tmp_path: Path) -> Path:
    return tmp_path / "browser"


def resize(driver: WebDriver, width: int, height: int) -> None:
    """The viewport at ``width`` CSS pixels (Chromium's --window-size has a minimum width; the WebDriver call not)."""
    driver.set_window(width, height)
    wait_until(lambda: driver.execute("return window.innerWidth") == width, timeout=5)


def no_overflow(driver: WebDriver) -> bool:
    return bool(driver.execute("return document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def severe(log: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("message")) for e in log if e.get("level") == "SEVERE"]


def normalise(text: str | None) -> str:
    return "".join(str(text).split())  # Intl uses narrow no-break spaces in French numbers and amounts


def fr_decimal(x: Decimal, places: int) -> str:
    """``x`` as Intl.NumberFormat("fr-FR") writes it: half away from zero on the decimal value, no spaces."""
    return f"{x.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP):f}".replace(".", ",")


def euros_fr(x: float) -> str:
    return fr_decimal(Decimal(repr(x)), 2) + "€"  # repr: the shortest decimal, the one JavaScript sees


def kwh_fr(wh: int) -> str:
    return fr_decimal(Decimal(wh) / 1000, 2) + "kWh"


def int_fr(x: int) -> str:
    return f"{x:,}".replace(",", "")


def test_page_follows_the_meter_and_shows_the_engine_costs(browser_dir: Path, artifacts: Path) -> None:
    """French (the default), a three-phase Tempo meter in standard mode, 24 hours of history behind it."""
    now = datetime.now(PARIS).replace(microsecond=0)
    sim = MeterSimulator(mode="standard", phases=3, contract="TEMPO", start=now - timedelta(hours=24), seed=1)
    app = Appliance(sim, {"prices": [PRICES]})
    frames = sim.frames(step=60)
    for _ in range(24 * 60):
        app.feed(next(frames))
    live = sim.frames(start=now, step=1)
    server = LivePageServer(app.snapshot)
    driver = WebDriver(browser_dir, lang="fr-FR")
    try:
        driver.get(server.url)
        wait_until(lambda: server.clients == 1, timeout=10)
        wait_until(lambda: driver.text("#conn") == "En direct", timeout=10)
        assert driver.execute("return document.documentElement.lang") == "fr"
        assert driver.text("h1") == "Compteur Linky"
        assert int(driver.execute("return Number(document.getElementById('chart').dataset.points)")) >= 1400

        # Every frame's power is on the page within a second.
        latencies = []
        for _ in range(15):
            payload, closed = app.feed(next(live))
            start = time.monotonic()
            server.publish("frame", payload)
            want = int_fr(payload["power_va"])
            wait_until(lambda w=want: normalise(driver.text("#power")) == w, timeout=1.0, interval=0.005)  # type: ignore[misc]
            latencies.append(time.monotonic() - start)
            if closed is not None:
                server.publish("history", {"bucket_s": 60, "point": list(closed)})
        mean = sum(latencies) / len(latencies)
        print(f"\n  frame -> page: max {max(latencies) * 1000:.0f} ms, mean {mean * 1000:.0f} ms")
        phases = driver.execute("return document.querySelectorAll('#phases tbody tr').length")
        assert phases == 3

        # The costs the engine computed, as the page shows them (this test's French formatting first checked
        # against the browser's own on values that sit on a rounding edge).
        edges = [6.345, 0.125, 1.005, 2.675, 1234.565, 0.768768]
        script = (
            "const f = new Intl.NumberFormat('fr-FR', {minimumFractionDigits: 2, maximumFractionDigits: 2});"
            "return arguments[0].map((x) => f.format(x));"
        )
        assert [normalise(x) for x in driver.execute(script, edges)] == [fr_decimal(Decimal(repr(x)), 2) for x in edges]
        snap = app.engine.snapshot(datetime.now(PARIS))
        server.publish("tariff", snap)
        today = snap["today"]
        assert today["cost"] is not None and today["periods"]
        last = next(iter(reversed(today["periods"])))
        selector = f'#today tr[data-period="{last}"] td.cost'
        wait_until(lambda: driver.execute(f"return document.querySelector('{selector}')?.dataset.value") is not None)
        for period, e in today["periods"].items():
            cell = f'#today tr[data-period="{period}"]'
            assert float(driver.execute(f"return document.querySelector('{cell} td.cost').dataset.value")) == e["cost"]
            assert normalise(driver.text(f"{cell} td.cost")) == euros_fr(e["cost"])
            assert normalise(driver.text(f"{cell} td.kwh")) == kwh_fr(e["wh"])
        assert normalise(driver.text('#today tr[data-row="energy"] td.cost')) == euros_fr(today["cost"])
        assert normalise(driver.text('#today tr[data-row="total"] td.cost')) == euros_fr(today["total"])
        month = snap["month"]
        assert normalise(driver.text('#month tr[data-row="energy"] td.cost')) == euros_fr(month["cost"])
        tempo = snap["tempo"]
        colours = {"blue": "bleu", "white": "blanc", "red": "rouge", None: "pas encore annoncé"}
        assert driver.text("#tempo-today") == colours[tempo["today"]]
        assert driver.text("#tempo-tomorrow") == colours[tempo["tomorrow"]]
        price = app.engine.current_price(datetime.now(PARIS))
        assert price is not None
        assert normalise(driver.text("#price")) == fr_decimal(Decimal(repr(price.value)), 4) + "€/kWh"
        assert not driver.visible("#banner")
        assert severe(driver.browser_log()) == []

        for width in (1280, 360):
            resize(driver, width, 900 if width > 400 else 780)
            assert no_overflow(driver), f"horizontal overflow at {width} px"
            driver.screenshot(artifacts / f"live-fr-{width}px.png")
            full = driver.execute("return document.documentElement.scrollHeight")
            resize(driver, width, int(full) + 100)
            driver.screenshot(artifacts / f"live-fr-{width}px-full.png")
        assert severe(driver.browser_log()) == []
    finally:
        driver.quit()
        server.close()


def test_page_says_when_there_is_no_frame_and_when_the_appliance_is_lost(browser_dir: Path, artifacts: Path) -> None:
    """English when the browser asks; a historique BASE meter on the built-in (dated) default prices."""
    now = datetime.now(PARIS).replace(microsecond=0)
    sim = MeterSimulator(mode="historique", contract="BASE", start=now, seed=4)
    app = Appliance(sim, {})
    server = LivePageServer(app.snapshot)
    driver = WebDriver(browser_dir, lang="en-GB,en")
    try:
        resize(driver, 360, 780)
        driver.get(server.url)
        wait_until(lambda: driver.text("#conn") == "Live", timeout=10)
        assert driver.execute("return document.documentElement.lang") == "en"
        wait_until(lambda: driver.visible("#banner"))
        assert driver.text("#banner") == "No frame from the meter yet: check the teleinformation cable."
        assert driver.text("#power") == "—"
        assert no_overflow(driver)
        driver.screenshot(artifacts / "no-frame-en-360px.png")
        assert severe(driver.browser_log()) == []

        frames = sim.frames(step=2)
        for _ in range(5):
            payload, _ = app.feed(next(frames))
            server.publish("frame", payload)
        server.publish("tariff", app.engine.snapshot(datetime.now(PARIS)))
        server.publish("status", app.snapshot()["status"])
        want = f"{payload['power_va']:,}"
        wait_until(lambda: driver.text("#power") == want, timeout=1.0)
        wait_until(lambda: not driver.visible("#banner"))
        assert driver.text("#period") == "Base"
        assert driver.text('#status li[data-output="influxdb"] .dot') == "failing"
        price = app.engine.current_price(datetime.now(PARIS))
        if price is not None:  # the built-in grid exists for today's date: marked as a default, with its date
            assert price.origin == "default"
            note = driver.text("#price-note") or ""
            assert note.startswith("Default prices: French regulated tariff (tarif bleu) of "), note

        # The appliance goes away: the open stream is cut and every request fails.
        server.refuse(True)
        wait_until(lambda: driver.text("#conn") == "Connection lost", timeout=5)
        assert driver.text("#banner") == "Connection to the appliance lost: trying again…"
        driver.screenshot(artifacts / "lost-en-360px.png")
        time.sleep(3)  # several reconnection attempts, all refused: the page keeps trying and keeps saying so
        assert driver.text("#conn") == "Connection lost"

        # It comes back: the page reconnects by itself and catches up from the snapshot.
        for _ in range(3):
            payload, _ = app.feed(next(frames))
        server.refuse(False)
        wait_until(lambda: driver.text("#conn") == "Live", timeout=10)
        wait_until(lambda: driver.text("#power") == f"{payload['power_va']:,}", timeout=5)
        assert not driver.visible("#banner")
        assert no_overflow(driver)
        driver.screenshot(artifacts / "back-en-360px.png")
    finally:
        driver.quit()
        server.close()
