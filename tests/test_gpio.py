"""GPIO: the status LED's patterns and the rule-driven outputs, on gpiozero's MockFactory, driven by frames from
the meter simulator and the encoder and decoded by the real decoder; the control socket's ``gpio`` commands
over a real socket; and the service wiring (gpio disabled imports nothing of it; enabled, it runs end to end).

Timed assertions: ``MockPin.states`` records each change with the time since the previous one.  Changes that
gpiozero's blink thread makes are checked with gpiozero's own ``assert_states_and_times`` (50 ms tolerance);
changes that wait for the controller's 50 ms tick get :func:`assert_timeline`'s wider tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.config import ConfigError, parse_config
from appliance.control import ControlServer
from appliance.control.config import ControlConfig
from appliance.gpio import GpioController, GpioError, start
from appliance.gpio.factory import board_model, factory_name, make_factory
from appliance.schema import GpioConfig, GpioOutputConfig
from appliance.simulator import PARIS, MeterSimulator
from appliance.stats import Stats
from appliance.tic import Decoder, Frame
from appliance.tic.encode import encode_frame, encode_group

from .probes import LineClient
from .util import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
LED_PIN, PIN, PIN2 = 27, 17, 22


def frame(mode: str = "historique", **groups: str) -> Frame:
    """One decoded frame made of ``groups`` (label=raw data), through the real encoder and decoder."""
    meter = ("ADCO", "031762120162") if mode == "historique" else ("ADSC", "064468368739")
    encoded = [encode_group(mode, label, data) for label, data in [meter, *groups.items()]]
    (decoded,) = Decoder(mode).feed(encode_frame(encoded))
    assert not decoded.invalid
    return decoded


def output(name: str = "heater", **changes: Any) -> GpioOutputConfig:
    return replace(GpioOutputConfig(name=name, pin=PIN), **changes)


def assert_timeline(pin: Any, expected: list[tuple[float, bool]], tol: float = 0.15) -> None:
    """``pin`` went through exactly ``expected`` (delta seconds since the previous change, state)."""
    got = [(round(s.timestamp, 3), bool(s.state)) for s in pin.states]
    assert [s for _, s in got] == [s for _, s in expected], got
    for (t, _), (want, _) in zip(got[1:], expected[1:], strict=True):
        assert want - 0.01 <= t <= want + tol, (got, expected)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def make(factory: MockFactory) -> Iterator[Any]:
    controllers: list[GpioController] = []

    def build(*outputs: GpioOutputConfig, stats: Stats | None = None, **cfg: Any) -> GpioController:
        config = GpioConfig(enabled=True, outputs=list(outputs), **cfg)
        controller = GpioController(config, stats or Stats(), factory=factory)
        for pin in (LED_PIN, PIN, PIN2):
            factory.pin(pin).clear_states()
        controller.start()
        controllers.append(controller)
        return controller

    yield build
    for c in controllers:
        c.close()


# --- rules -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["historique", "standard"])
def test_water_heater_follows_off_peak_hours_of_the_simulated_meter(make: Any, factory: MockFactory, mode: str) -> None:
    """HCHP meter crossing 22:00 (HP -> HC) and, later, 06:00 (HC -> HP): the relay follows each frame at once."""
    gpio = make(output(rule="off_peak"))
    pin = factory.pin(PIN)
    seen = []
    for start_at in (datetime(2024, 1, 15, 21, 59, 45, tzinfo=PARIS), datetime(2024, 1, 16, 5, 59, 45, tzinfo=PARIS)):
        sim = MeterSimulator(start=start_at, contract="HCHP", mode=mode)  # type: ignore[arg-type]
        decoder = Decoder(mode)
        for sim_frame in sim.frames():
            if sim_frame.at > start_at + timedelta(seconds=40):
                break
            for decoded in decoder.feed(sim_frame.data):
                gpio.on_frame(decoded)
                period = str(sim_frame.values.get("PTEC") or sim_frame.values["LTARF"])
                want = period.startswith("HC") or "CREUSE" in period
                assert pin.state == want, (sim_frame.values.get("PTEC"), sim_frame.values.get("LTARF"))
                seen.append(want)
    assert seen[0] is False and True in seen and seen[-1] is False
    assert [bool(s.state) for s in pin.states] == [False, True, False]
    assert gpio.channels["heater"].switches == 2


def test_tempo_rules_today_tomorrow_and_off_peak_except_red(make: Any, factory: MockFactory) -> None:
    red_today = output("red_today", rule="tempo", colours=["red"])
    red_tomorrow = output("red_tomorrow", pin=PIN2, rule="tempo", colours=["red"], day="tomorrow")
    gpio = make(red_today, red_tomorrow)
    a, b = factory.pin(PIN), factory.pin(PIN2)
    gpio.on_frame(frame(PTEC="HPJB", DEMAIN="ROUG"))
    assert (a.state, b.state) == (False, True)
    gpio.on_frame(frame(PTEC="HCJR", DEMAIN="----"))  # tomorrow not announced yet: keep the last known answer
    assert (a.state, b.state) == (True, True)
    gpio.on_frame(frame(PTEC="HPJW", DEMAIN="BLEU"))
    assert (a.state, b.state) == (False, False)
    # Standard mode: STGE bits 24-25 today, 26-27 tomorrow (1 blue, 2 white, 3 red).
    gpio.on_frame(frame("standard", STGE=f"{(3 << 24) | (1 << 26) | (1 << 17):08X}", LTARF=f"{'HP  ROUGE':^16}"))
    assert (a.state, b.state) == (True, False)


def test_off_peak_restricted_to_colours(make: Any, factory: MockFactory) -> None:
    gpio = make(output(rule="off_peak", colours=["blue", "white"]))
    pin = factory.pin(PIN)
    for ptec, want in (("HCJB", True), ("HPJB", False), ("HCJW", True), ("HCJR", False), ("HPJR", False)):
        gpio.on_frame(frame(PTEC=ptec))
        assert pin.state == want, ptec
    gpio.on_frame(frame("standard", LTARF=f"{'HC  BLEU':^16}"))
    assert pin.state is True


@pytest.mark.slow
def test_load_shedding_hysteresis_and_minimum_times(make: Any, factory: MockFactory) -> None:
    """ISOUSC 30 A = 6000 VA: shed at >= 90 % (5400 VA), restore at <= 75 % (4500 VA); min_on 0.3 s, min_off 0.5 s
    (the start counts as switching off)."""
    gpio = make(output(rule="load_shedding", min_on=0.3, min_off=0.5))
    pin = factory.pin(PIN)
    t0 = time.monotonic()

    def at(t: float, papp: int) -> None:
        time.sleep(max(0.0, t0 + t - time.monotonic()))
        gpio.on_frame(frame(ISOUSC="30", PAPP=f"{papp:05d}"))

    at(0.0, 3000)  # under the restore level, but min_off (from start) holds it off until 0.5 s
    at(0.7, 5000)  # between the levels: stays on (hysteresis)
    at(0.8, 5500)  # over 90 %: shed at once (on since 0.5 s >= min_on)
    at(0.9, 5000)  # between the levels: stays shed
    at(1.0, 4000)  # under 75 %: back on, but only once min_off has passed since 0.8 s, at 1.3 s
    time.sleep(max(0.0, t0 + 1.6 - time.monotonic()))
    assert_timeline(pin, [(0.0, False), (0.5, True), (0.3, False), (0.5, True)])
    # Standard mode reads SINSTS against PREF (kVA); an explicit subscribed_va wins over the meter's.
    assert gpio.channels["heater"].describe()["state"] == "on"


def test_load_shedding_in_standard_mode_and_explicit_subscription(make: Any, factory: MockFactory) -> None:
    gpio = make(output(rule="load_shedding"), output("small", pin=PIN2, rule="load_shedding", subscribed_va=3000))
    a, b = factory.pin(PIN), factory.pin(PIN2)
    gpio.on_frame(frame("standard", PREF="06", SINSTS="02000"))
    assert (a.state, b.state) == (True, True)
    gpio.on_frame(frame("standard", PREF="06", SINSTS="02800"))  # 47 % of 6 kVA, 93 % of 3 kVA
    assert (a.state, b.state) == (True, False)
    gpio.on_frame(frame("standard", SINSTS="05500"))  # no PREF in this frame: the first output cannot judge, holds
    assert (a.state, b.state) == (True, False)


def test_relais_bits(make: Any, factory: MockFactory) -> None:
    gpio = make(output("dry", rule="relais", relay=1), output("r3", pin=PIN2, rule="relais", relay=3))
    a, b = factory.pin(PIN), factory.pin(PIN2)
    for relais, want in (
        ("001", (True, False)),
        ("004", (False, True)),
        ("005", (True, True)),
        ("000", (False, False)),
    ):
        gpio.on_frame(frame("standard", RELAIS=relais))
        assert (a.state, b.state) == want, relais
    gpio.on_frame(frame("historique", PTEC="HC.."))  # historique carries no RELAIS: the frame does not say
    assert (a.state, b.state) == (False, False)


def test_stale_data_returns_the_output_to_its_safe_state(make: Any, factory: MockFactory) -> None:
    gpio = make(output(rule="off_peak", stale_after=0.4))
    pin = factory.pin(PIN)
    gpio.on_frame(frame(PTEC="HC.."))
    time.sleep(0.2)
    gpio.on_frame(frame(PAPP="01000"))  # frames without PTEC do not refresh the rule's data
    time.sleep(0.5)
    assert_timeline(pin, [(0.0, False), (0.0, True), (0.4, False)])
    assert gpio.channels["heater"].describe()["rule_wants"] == "off"


# --- status LED --------------------------------------------------------------------------------------------
def test_led_flashes_once_per_valid_frame_and_twice_when_an_output_fails(make: Any, factory: MockFactory) -> None:
    stats = Stats()
    gpio = make(led_pin=LED_PIN, stats=stats)
    led = factory.pin(LED_PIN)
    gpio.on_frame(frame(PTEC="HP.."))
    time.sleep(0.3)
    led.assert_states_and_times([(0.0, False), (0.0, True), (0.05, False)])
    assert gpio.led is not None and gpio.led.pattern == "frame"
    invalid = Decoder("historique").feed(encode_frame([b"\nPTEC HP.. X\r"]))[0]
    assert invalid.invalid and not invalid.values
    gpio.on_frame(invalid)  # nothing valid in it: no flash
    time.sleep(0.2)
    assert len(led.states) == 3
    led.clear_states()
    stats.update_output("mqtt", state="failing")
    gpio.on_frame(frame(PTEC="HP.."))
    time.sleep(0.4)
    led.assert_states_and_times([(0.0, False), (0.0, True), (0.05, False), (0.1, True), (0.05, False)])
    assert len(led.states) == 5 and gpio.led.pattern == "frame_failing"


@pytest.mark.slow
def test_led_shows_no_meter_data(make: Any, factory: MockFactory) -> None:
    stats = Stats()
    gpio = make(led_pin=LED_PIN, stats=stats, no_data_after=0.3)
    led = factory.pin(LED_PIN)
    wait_until(lambda: len(led.states) >= 4, timeout=5)
    states = [(round(s.timestamp, 2), bool(s.state)) for s in led.states]
    assert 0.25 <= led.states[1].timestamp <= 0.45, states  # no frame since the start: no-data after 0.3 s
    assert [s for _, s in states[:4]] == [False, True, False, True]
    assert abs(led.states[2].timestamp - 1.0) < 0.05 and abs(led.states[3].timestamp - 1.0) < 0.05, states
    assert gpio.led is not None and gpio.led.pattern == "no_data"
    stats.frame(3)  # a frame again: a flash replaces the slow blink...
    gpio.on_frame(frame(PTEC="HP.."))
    t_frame = time.monotonic()
    assert gpio.led.pattern == "frame"
    time.sleep(0.1)
    assert led.state is False  # the flash is over and the slow blink stopped
    wait_until(lambda: gpio.led is not None and gpio.led.pattern == "no_data", timeout=2, interval=0.005)
    assert 0.25 <= time.monotonic() - t_frame <= 0.45  # ...until the meter has been silent for no_data_after


# --- forcing over the control socket -----------------------------------------------------------------------
@pytest.fixture
def control(make: Any) -> Iterator[tuple[GpioController, int]]:
    gpio = make(output(rule="off_peak"), output("pump", pin=PIN2, rule="relais", min_off=60))
    server = ControlServer(ControlConfig(bind="127.0.0.1", port=free_port()), Stats())
    gpio.register(server)
    server.start()
    assert server.address is not None
    yield gpio, server.address[1]
    server.stop(1.0)


def test_principal_forces_an_output_for_a_time(control: tuple[GpioController, int], factory: MockFactory) -> None:
    gpio, port = control
    principal, secondaire = LineClient(port), LineClient(port)
    assert principal.readline() == "hello principal" and secondaire.readline() == "hello secondaire"
    gpio.on_frame(frame(PTEC="HP.."))  # the rule says off
    assert secondaire.ask("gpio force heater on 1") == (
        "error refused: 'gpio force' is for the principal; you are secondaire"
    )
    pin = factory.pin(PIN)
    pin.clear_states()
    assert principal.ask("gpio force heater on 0.5") == "ok heater forced on for 0.5 s"
    status = json.loads(secondaire.ask("gpio"))  # anyone may read
    assert status["outputs"]["heater"]["state"] == "on" and status["outputs"]["heater"]["forced"]["state"] == "on"
    time.sleep(0.8)
    assert_timeline(pin, [(0.0, False), (0.0, True), (0.5, False)])  # then back to what the rule says

    # Forcing bypasses the minimum times (min_off 60 s here); release gives the output back to its rule at once.
    pump = factory.pin(PIN2)
    assert principal.ask("GPIO FORCE pump on 10m") == "ok pump forced on for 600 s" and pump.state is True
    assert principal.ask("gpio release pump") == "ok pump back to its rule" and pump.state is False
    assert principal.ask("gpio release pump") == "ok pump was not forced"


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("gpio force heater", "error usage: gpio force <output> on|off <duration>"),
        ("gpio force heater maybe 10", "error usage: gpio force <output> on|off <duration>"),
        ("gpio force heater on forever", "error duration must be 600, 10m or 2h, at most 7 days (got 'forever')"),
        ("gpio force heater on 8d", "error duration must be 600, 10m or 2h, at most 7 days (got '8d')"),
        ("gpio force heater on 0", "error duration must be 600, 10m or 2h, at most 7 days (got '0')"),
        ("gpio force boiler on 10", "error no output 'boiler' (outputs: heater, pump)"),
        ("gpio release boiler", "error no output 'boiler' (outputs: heater, pump)"),
        ("gpio what", "error usage: gpio | gpio force <output> on|off <duration> | gpio release <output>"),
    ],
)
def test_bad_gpio_commands_get_a_clear_error(
    control: tuple[GpioController, int], factory: MockFactory, line: str, answer: str
) -> None:
    gpio, port = control
    client = LineClient(port)
    assert client.readline() == "hello principal"
    assert client.ask(line) == answer
    assert factory.pin(PIN).state is False and gpio.channels["heater"].forced is None


def test_close_puts_forced_outputs_in_their_safe_state(make: Any, factory: MockFactory) -> None:
    gpio = make(output(rule="off_peak"), led_pin=LED_PIN)
    gpio.channels["heater"].force(True, 3600)
    assert factory.pin(PIN).state is True
    gpio.close()
    assert factory.pin(PIN).state is False and factory.pin(LED_PIN).state is False
    gpio.close()  # idempotent
    gpio.on_frame(frame(PTEC="HC.."))  # a late frame from the reader changes nothing
    assert factory.pin(PIN).state is False


# --- pins, factory, configuration --------------------------------------------------------------------------
def test_a_busy_pin_is_a_clear_error_and_the_service_runs_without_gpio(factory: MockFactory) -> None:
    from gpiozero import LED

    busy = LED(PIN, pin_factory=factory)
    cfg = GpioConfig(enabled=True, led_pin=LED_PIN, outputs=[output()])
    with pytest.raises(GpioError, match="cannot claim GPIO17"):
        GpioController(cfg, Stats(), factory=factory)
    busy.close()
    if (board_model() or "").startswith("Raspberry Pi"):
        pytest.skip("on a Pi, auto would claim real pins")
    stats = Stats()
    assert start(replace(cfg, pin_factory="auto"), stats) is None  # logged; the service goes on without GPIO
    assert (
        stats.snapshot().sections["gpio"]["state"] == "error"
        and "not a Raspberry Pi" in stats.snapshot().sections["gpio"]["error"]
    )


def test_pin_factory_choice(tmp_path: Path) -> None:
    assert factory_name("auto", "Raspberry Pi 5 Model B Rev 1.0") == "lgpio"
    assert factory_name("auto", "Raspberry Pi Compute Module 5 Rev 1.0") == "lgpio"
    assert factory_name("auto", "Raspberry Pi 4 Model B Rev 1.5") is None  # gpiozero's own order
    assert factory_name("auto", "Raspberry Pi Zero 2 W Rev 1.0") is None
    assert factory_name("mock", None) == "mock" and factory_name("lgpio", "Some Board") == "lgpio"
    with pytest.raises(GpioError, match=r"not a Raspberry Pi .*set gpio\.pin_factory"):
        factory_name("auto", None)
    assert isinstance(make_factory("mock", tmp_path / "absent"), MockFactory)
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    try:
        chosen = make_factory("auto", model)
    except GpioError as e:  # off a Pi: lgpio is missing or finds no /dev/gpiochip0; the error names it
        assert "'lgpio'" in str(e)
    else:
        assert type(chosen).__name__ == "LGPIOFactory"
        chosen.close()


def test_gpio_configuration_is_validated() -> None:
    cfg = parse_config(
        '[gpio]\nenabled = true\nled_pin = 27\n[[gpio.outputs]]\nname = "heater"\npin = 17\n'
        '[[gpio.outputs]]\nname = "shed"\npin = 22\nrule = "load_shedding"\nmin_off = 300.0\n'
    )
    assert [o.name for o in cfg.gpio.outputs] == ["heater", "shed"] and cfg.gpio.outputs[1].min_off == 300
    assert parse_config("").gpio.enabled is False
    with pytest.raises(ConfigError) as e:
        parse_config(
            '[gpio]\nled_pin = 15\n[[gpio.outputs]]\nname = "a b"\npin = 17\nrule = "tempo"\n'
            '[[gpio.outputs]]\nname = "x"\npin = 17\nrule = "load_shedding"\nrestore_below = 95.0\ncolours = ["pink"]\n'
            '[[gpio.outputs]]\nname = "x"\n'
        )
    assert e.value.errors == [
        "gpio.led_pin: GPIO15 is the TIC's UART (GPIO14 TXD, GPIO15 RXD); pick another pin",
        "gpio.outputs[0].name: required: 1-32 letters, digits, '_' or '-' (got 'a b')",
        "gpio.outputs[0].colours: a tempo rule needs the colours that switch it ON",
        "gpio.outputs[1].colours: unknown colour(s) ['pink'] (expected blue, white, red)",
        "gpio.outputs[1].restore_below: must be under shed_above (90): that is the hysteresis",
        "gpio.outputs[2].pin: required: the BCM GPIO number the relay is wired to",
        "gpio.outputs[1].pin: GPIO17 is already used by outputs[0]",
        "gpio.outputs[2].name: duplicate output name 'x'",
    ]


# --- the service -------------------------------------------------------------------------------------------
DISABLED = """
import sys, threading
from dataclasses import replace
from appliance.schema import Config
from appliance.service import Service, simulated
cfg = simulated(Config())
cfg = replace(cfg, outputs=replace(cfg.outputs, multicast=replace(cfg.outputs.multicast, enabled=False)),
              health=replace(cfg.health, enabled=False), control=replace(cfg.control, enabled=False),
              web=replace(cfg.web, enabled=False))
service = Service(cfg)
threading.Timer(1.5, service.stop).start()
service.run()
print(service.stats.frames, sorted(m for m in sys.modules if "gpio" in m))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_gpio_disabled_imports_nothing_of_it() -> None:
    result = subprocess.run([sys.executable, "-c", DISABLED], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1)[1].strip() == "[]"


@pytest.mark.slow
@pytest.mark.integration
def test_service_drives_gpio_end_to_end(tmp_path: Path) -> None:
    """`teleinfo run --simulate` with the mock pin factory: the LED flashes for the simulator's frames, the
    control socket's principal forces a relay, SIGTERM leaves every output off."""
    port = free_port()
    config = tmp_path / "teleinfo.toml"
    config.write_text(
        f"[outputs.multicast]\nenabled = false\n[health]\nenabled = false\n[control]\nport = {port}\n"
        "[web]\nenabled = false\n"
        f'[state]\ndirectory = "{tmp_path}"\n'
        '[gpio]\nenabled = true\npin_factory = "mock"\nled_pin = 27\n'
        '[[gpio.outputs]]\nname = "heater"\npin = 17\nrule = "tempo"\ncolours = ["red"]\n'
    )
    env = {**os.environ, "TELEINFO_CONFIG": str(config)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--sim-contract", "TEMPO", "--no-view"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = _connect(port, timeout=20)
        assert client.readline() == "hello principal"

        def flashed() -> bool:
            return json.loads(client.ask("gpio"))["led"] == "frame"

        wait_until(flashed, timeout=20, interval=0.3)
        assert client.ask("gpio force heater on 1h") == "ok heater forced on for 3600 s"
        status = json.loads(client.ask("gpio"))["outputs"]["heater"]
        assert status["state"] == "on" and status["pin"] == 17
        assert "gpio force" in client.ask("help gpio force")
        client.close()
        # SIGHUP with other outputs: the old ones go to their safe state, the new ones answer on the socket.
        config.write_text(config.read_text().replace('name = "heater"', 'name = "boiler"'))
        proc.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            try:
                c = LineClient(port)
            except ConnectionRefusedError:
                return False
            try:
                return c.readline().startswith("hello ") and "boiler" in json.loads(c.ask("gpio"))["outputs"]
            except (AssertionError, ValueError, OSError):
                return False
            finally:
                c.close()

        wait_until(reloaded, timeout=20, interval=0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "gpio: LED GPIO27, outputs heater (GPIO17, tempo)" in out
    assert "gpio: heater on" in out and "gpio: heater off" in out  # off again when reloaded away
    assert "gpio: LED GPIO27, outputs boiler (GPIO17, tempo)" in out and "configuration reloaded" in out


def _connect(port: int, timeout: float) -> LineClient:
    """The first client of the control socket once it listens (so it is the principal)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return LineClient(port)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
