"""The public-IP check: the address in use, asked of HTTP providers (:mod:`.check`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from appliance.checks.public_ip.config import PublicIpCheckConfig
from appliance.plugins import CheckPlugin

if TYPE_CHECKING:
    from appliance.checks import Check
    from appliance.schema import Config

__all__ = ["PLUGIN"]


def _build(cfg: Config, persist: bool) -> Check:
    from appliance.checks.public_ip.check import PublicIpChecker

    return PublicIpChecker(cfg.checks.public_ip, Path(cfg.state.directory) / "public_ip", persist=persist)


PLUGIN = CheckPlugin(
    "public_ip",
    "the public IP address in use, from HTTP providers",
    "appliance.checks.public_ip.check",
    PublicIpCheckConfig,
    lambda cfg: cfg.checks.public_ip,
    lambda cfg: bool(cfg.checks.public_ip.providers),
    _build,
)
