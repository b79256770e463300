"""Network self-checks, the registry: the public IP address in use, open ports (nmap), and SSH peers comparing
the open ports they see.  :mod:`.scheduler` runs them (``teleinfo check``, the service's schedule, the control
socket's ``check now``); results are :class:`~appliance.checks.results.CheckResult` objects, and each run goes to
the outputs as a :class:`~appliance.records.CheckRun` record (docs/DATA_FORMAT.md, section 5).

Every check is a folder ``appliance/checks/<name>/`` (:mod:`appliance.plugins` gives the shape) whose
``PLUGIN`` is one entry of :data:`CHECKS`: its name (``[checks.<name>]``, the ``check`` tag), its settings,
whether they configure anything to check, and how to build it (its implementation is imported only then).  A built
check has one method, ``run(deadline)`` (:class:`Check`).  docs/PLUGINS.md says how to add one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from appliance.checks import peers, ports, public_ip
from appliance.plugins import CheckPlugin

if TYPE_CHECKING:
    from appliance.checks.results import CheckResult

__all__ = ["CHECKS", "Check", "CheckPlugin", "check_plugin"]


class Check(Protocol):
    """One built self-check."""

    def run(self, deadline: float) -> list[CheckResult]:
        """Check now; ``deadline`` is a ``time.monotonic()`` every blocking step must end by.  Never raises for
        what it finds or cannot reach: those are ``problem``/``error`` results."""
        ...


#: Every check, in the order they run.
CHECKS: tuple[CheckPlugin, ...] = (public_ip.PLUGIN, ports.PLUGIN, peers.PLUGIN)


def check_plugin(name: str) -> CheckPlugin:
    """The registered check called ``name`` (KeyError if none)."""
    for plugin in CHECKS:
        if plugin.name == name:
            return plugin
    raise KeyError(name)
