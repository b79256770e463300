"""The open-ports check: the targets' open TCP ports (nmap), against the expected ones (:mod:`.check`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.checks.ports.config import PortsCheckConfig
from appliance.plugins import CheckPlugin

if TYPE_CHECKING:
    from appliance.checks import Check
    from appliance.schema import Config

__all__ = ["PLUGIN"]


def _build(cfg: Config, _persist: bool) -> Check:
    from appliance.checks.ports.check import PortsCheck

    return PortsCheck(cfg.checks.ports)


PLUGIN = CheckPlugin(
    "ports",
    "open TCP ports of the targets (nmap), against the expected ones",
    "appliance.checks.ports.check",
    PortsCheckConfig,
    lambda cfg: cfg.checks.ports,
    lambda cfg: bool(cfg.checks.ports.targets),
    _build,
)
