"""The control socket: read the state, watch live frames, and (the principal client only) act.

See :mod:`appliance.control.server` for the protocol.
"""

from appliance.control.server import Command, ControlServer, Session

__all__ = ["Command", "ControlServer", "Session"]
