"""The whole configuration: the root :class:`Config`, one section per part of the appliance.

Each section's schema lives next to the code it configures (``appliance/<part>/config.py``, and for the
plugins ``appliance/<kind>/<name>/config.py``); :mod:`appliance.config` is the engine that loads, validates and
documents them all.  Two sections are here: ``[state]``, the service's own, and ``[gpio]``, because a disabled
GPIO must not load a single module of :mod:`appliance.gpio` (tests/test_gpio.py), while every configuration is
parsed against its schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from appliance.checks.config import ChecksConfig
from appliance.config import opt, section
from appliance.control.config import ControlConfig
from appliance.health.config import HealthConfig
from appliance.journal import JournalConfig
from appliance.logs import LoggingConfig
from appliance.outputs.config import OutputsConfig
from appliance.sources.serial.config import SourceConfig
from appliance.sync.config import SyncConfig
from appliance.tariff.config import TariffConfig
from appliance.update.config import UpdateConfig
from appliance.web.config import WebConfig

__all__ = ["TEMPO_COLOURS", "UART_PINS", "Config", "GpioConfig", "GpioOutputConfig", "StateConfig"]


@dataclass(frozen=True)
class StateConfig:
    """Files the service keeps (systemd's StateDirectory)."""

    directory: str = opt(
        "/var/lib/teleinfo",
        "Where the spools of unreachable outputs live (touched only during outages), and the tariff ledger "
        "(tariff.json, written at most every tariff.save_interval).",
    )


TEMPO_COLOURS = ("blue", "white", "red")


UART_PINS = (14, 15)  # GPIO14 (TXD) and GPIO15 (RXD) carry the TIC (firmware/)


def _gpio_pin(value: int) -> str | None:
    if value in UART_PINS:
        return f"GPIO{value} is the TIC's UART (GPIO14 TXD, GPIO15 RXD); pick another pin"
    return None


@dataclass(frozen=True)
class GpioOutputConfig:
    """A relay or contactor on a GPIO pin, switched by a rule on the decoded data.  ON means the pin is active
    (the relay energised, the load powered); the safe state, on start, stop and when data is missing, is OFF."""

    name: str = opt("", "Name used by the control socket (gpio force <name> on 600).", example='"water_heater"')
    pin: int = opt(-1, "BCM GPIO number (2-27 on the 40-pin header).", lo=-1, hi=27, check=_gpio_pin, example="17")
    rule: Literal["off_peak", "tempo", "load_shedding", "relais"] = opt(
        "off_peak",
        "off_peak: ON during off-peak hours (HC); tempo: ON on the listed Tempo colours; load_shedding: ON while "
        "apparent power stays under the subscribed power, OFF (shed) above it; relais: follows a RELAIS bit.",
        example='"off_peak"',
    )
    active_high: bool = opt(True, "true: the pin is high when ON; false: low when ON (active-low relay boards).")
    colours: list[str] = opt(
        [],
        "off_peak: only on Tempo days of these colours ([] = every day); tempo: the colours that switch ON. Colours: "
        '"blue", "white", "red".',
        example='["blue", "white"]',
    )
    day: Literal["today", "tomorrow"] = opt("today", "tempo: the colour of today, or of tomorrow once announced.")
    shed_above: float = opt(90.0, "load_shedding: shed (OFF) at this % of the subscribed power.", lo=10, hi=200)
    restore_below: float = opt(75.0, "load_shedding: back ON at or under this % of the subscribed power.", lo=0, hi=200)
    subscribed_va: int = opt(
        0, "load_shedding: subscribed power in VA (0: from the meter, PREF kVA or ISOUSC A x 200).", lo=0, hi=1_000_000
    )
    relay: int = opt(1, "relais: relay number 1-8 (RELAIS bit n-1; relay 1 is the dry contact).", lo=1, hi=8)
    min_on: float = opt(0.0, "Seconds an output stays ON before the rule may switch it OFF.", lo=0, hi=86400)
    min_off: float = opt(0.0, "Seconds an output stays OFF (from start too) before it may switch ON.", lo=0, hi=86400)
    stale_after: float = opt(
        30.0, "Seconds without the data the rule needs before the output goes to its safe state (OFF).", lo=1, hi=86400
    )

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", self.name):
            errors.append(("name", f"required: 1-32 letters, digits, '_' or '-' (got {self.name!r})"))
        if self.pin < 0:
            errors.append(("pin", "required: the BCM GPIO number the relay is wired to"))
        bad = [c for c in self.colours if c not in TEMPO_COLOURS]
        if bad:
            errors.append(("colours", f"unknown colour(s) {bad} (expected blue, white, red)"))
        if self.rule == "tempo" and not self.colours:
            errors.append(("colours", "a tempo rule needs the colours that switch it ON"))
        if self.rule == "load_shedding" and self.restore_below >= self.shed_above:
            errors.append(("restore_below", f"must be under shed_above ({self.shed_above:g}): that is the hysteresis"))
        return errors


@dataclass(frozen=True)
class GpioConfig:
    """GPIO (Raspberry Pi header): a status LED and rule-driven relays.  Off by default: nothing GPIO-related is
    even loaded then, so the simulator and CI need no hardware."""

    enabled: bool = opt(False, "Drive the status LED and the outputs below.")
    pin_factory: Literal["auto", "lgpio", "rpigpio", "pigpio", "native", "mock"] = opt(
        "auto",
        "gpiozero pin library. auto: on a Raspberry Pi, lgpio on a Pi 5 and gpiozero's own choice on the others; "
        "elsewhere it must be named (mock: simulated pins, for tests and demos).",
    )
    led_pin: int = opt(-1, "BCM GPIO number of the status LED (-1: no LED).", lo=-1, hi=27, check=_gpio_pin)
    led_active_high: bool = opt(True, "true: the LED lights when its pin is high.")
    no_data_after: float = opt(
        10.0, "Seconds without a valid frame before the LED shows the no-meter-data pattern.", lo=1, hi=3600
    )
    outputs: list[GpioOutputConfig] = opt([], "A relay driven by a rule ([[gpio.outputs]], one table per relay).")

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        pins: dict[int, str] = {self.led_pin: "led_pin"} if self.led_pin >= 0 else {}
        names: set[str] = set()
        for i, o in enumerate(self.outputs):
            if o is None:  # already reported
                continue
            if o.pin >= 0 and o.pin in pins:
                errors.append((f"outputs[{i}].pin", f"GPIO{o.pin} is already used by {pins[o.pin]}"))
            pins.setdefault(o.pin, f"outputs[{i}]")
            if o.name in names:
                errors.append((f"outputs[{i}].name", f"duplicate output name {o.name!r}"))
            names.add(o.name)
        return errors


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    source: SourceConfig = section(SourceConfig)
    outputs: OutputsConfig = section(OutputsConfig)
    health: HealthConfig = section(HealthConfig)
    control: ControlConfig = section(ControlConfig)
    web: WebConfig = section(WebConfig)
    state: StateConfig = section(StateConfig)
    logging: LoggingConfig = section(LoggingConfig)
    checks: ChecksConfig = section(ChecksConfig)
    gpio: GpioConfig = section(GpioConfig)
    tariff: TariffConfig = section(TariffConfig)
    journal: JournalConfig = section(JournalConfig)
    sync: SyncConfig = section(SyncConfig)
    update: UpdateConfig = section(UpdateConfig)
