"""Network self-checks, the registry: the public IP address in use, open ports (nmap), and SSH peers comparing
the open ports they see.  :mod:`.scheduler` runs them (``teleinfo check``, the service's schedule, the control
socket's ``check now``); results are :class:`~appliance.checks.results.CheckResult` objects, and each run goes to
the outputs as a :class:`~appliance.records.CheckRun` record (docs/DATA_FORMAT.md, section 5).

Every check is one entry of :data:`CHECKS`: its name (``[checks.<name>]``, the ``check`` tag), its settings,
whether they configure anything to check, and how to build it (its module is imported only then).  A built
check has one method, ``run(deadline)`` (:class:`Check`).  docs/PLUGINS.md says how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from appliance.checks.results import CheckResult
    from appliance.config import Config

__all__ = ["CHECKS", "Check", "CheckPlugin", "check_plugin"]


class Check(Protocol):
    """One built self-check."""

    def run(self, deadline: float) -> list[CheckResult]:
        """Check now; ``deadline`` is a ``time.monotonic()`` every blocking step must end by.  Never raises for
        what it finds or cannot reach: those are ``problem``/``error`` results."""
        ...


@dataclass(frozen=True)
class CheckPlugin:
    """A registered check.  ``section`` picks its settings (with ``interval``) out of the configuration;
    ``configured`` says whether they give it anything to check; ``build(cfg, persist)`` makes it (``persist``:
    the service may write state files, one-shot commands only read them)."""

    name: str
    summary: str
    module: str  # the implementation, imported by ``build`` only (for the docs and the convention test)
    section: Callable[[Config], Any]
    configured: Callable[[Config], bool]
    build: Callable[[Config, bool], Check]


def _public_ip(cfg: Config, persist: bool) -> Check:
    from appliance.checks.public_ip import PublicIpChecker

    return PublicIpChecker(cfg.checks.public_ip, Path(cfg.state.directory) / "public_ip", persist=persist)


def _ports(cfg: Config, _persist: bool) -> Check:
    from appliance.checks.ports import PortsCheck

    return PortsCheck(cfg.checks.ports)


def _peers(cfg: Config, _persist: bool) -> Check:
    from appliance.checks.peers import PeersCheck

    return PeersCheck(cfg)


#: Every check, in the order they run.
CHECKS: tuple[CheckPlugin, ...] = (
    CheckPlugin(
        "public_ip",
        "the public IP address in use, from HTTP providers",
        "appliance.checks.public_ip",
        lambda cfg: cfg.checks.public_ip,
        lambda cfg: bool(cfg.checks.public_ip.providers),
        _public_ip,
    ),
    CheckPlugin(
        "ports",
        "open TCP ports of the targets (nmap), against the expected ones",
        "appliance.checks.ports",
        lambda cfg: cfg.checks.ports,
        lambda cfg: bool(cfg.checks.ports.targets),
        _ports,
    ),
    CheckPlugin(
        "peers",
        "SSH peers scanning the same targets: ports seen open from one side only",
        "appliance.checks.peers",
        lambda cfg: cfg.checks.peers,
        lambda cfg: bool(cfg.checks.peers.hosts),
        _peers,
    ),
)


def check_plugin(name: str) -> CheckPlugin:
    """The registered check called ``name`` (KeyError if none)."""
    for plugin in CHECKS:
        if plugin.name == name:
            return plugin
    raise KeyError(name)
