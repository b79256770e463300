"""The SSH peers check: machines that scan the same targets, every port seen open from one side only
reported (:mod:`.check`, paramiko, imported only when peers are configured)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.checks.peers.config import PeersCheckConfig
from appliance.plugins import CheckPlugin

if TYPE_CHECKING:
    from appliance.checks import Check
    from appliance.schema import Config

__all__ = ["PLUGIN"]


def _build(cfg: Config, _persist: bool) -> Check:
    from appliance.checks.peers.check import PeersCheck

    return PeersCheck(cfg)


PLUGIN = CheckPlugin(
    "peers",
    "SSH peers scanning the same targets: ports seen open from one side only",
    "appliance.checks.peers.check",
    PeersCheckConfig,
    lambda cfg: cfg.checks.peers,
    lambda cfg: bool(cfg.checks.peers.hosts),
    _build,
)
