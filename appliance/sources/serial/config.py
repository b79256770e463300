"""``[source]``: the serial source's settings are the section's own keys (the appliance's source on a Pi);
``kind`` picks the registered source (:data:`appliance.sources.SOURCES`), and every other source has its own
sub-table (``[source.simulator]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.config import opt, section
from appliance.sources.simulator.config import SimulatorConfig

__all__ = ["SourceConfig"]


@dataclass(frozen=True)
class SourceConfig:
    """Where the meter's bytes come from."""

    kind: Literal["serial", "simulator"] = opt(
        "serial", "serial: a TIC adapter on a serial port or USB; simulator: the built-in meter simulator."
    )
    device: str = opt(
        "auto",
        'Serial device. "auto": the UART on the GPIO header\'s pins 8/10 (GPIO14/15) of this Raspberry Pi, found '
        "from its device tree (teleinfo doctor says which and why); USB dongles: /dev/ttyUSB0 or a "
        "/dev/serial/by-id/... link.",
    )
    mode: Literal["auto", "historique", "standard"] = opt(
        "auto", "TIC mode: auto tries standard (9600 Bd) and historique (1200 Bd) and keeps the one that verifies."
    )
    framing: Literal["auto", "7E1", "8N1"] = opt(
        "auto",
        "auto: 7E1 (the TIC's format), except 8N1 with bit 7 masked on a UART without parity (the Pi's mini UART); "
        "or force 7E1 or 8N1.",
    )
    no_data_timeout: float = opt(
        30.0, "Seconds without a valid frame before the port is closed and reopened.", lo=3, hi=3600
    )
    reconnect_max_backoff: float = opt(30.0, "Longest wait between two attempts to reopen the port (s).", lo=1, hi=3600)
    simulator: SimulatorConfig = section(SimulatorConfig)
