"""The health socket: the appliance's state for load balancers, monitors and people.

:mod:`appliance.health.state` turns a :meth:`Stats.snapshot` into a verdict (pure);
:mod:`appliance.health.server` serves it on a TCP port in the HAProxy agent / HTTP/1.0 protocol.
"""

from appliance.health.server import HealthServer
from appliance.health.state import HealthState, evaluate, public_snapshot, status_document, summary

__all__ = ["HealthServer", "HealthState", "evaluate", "public_snapshot", "status_document", "summary"]
