"""``[control]``: the control socket's settings."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import Secret, ip_address, is_loopback, opt

__all__ = ["ControlConfig"]


@dataclass(frozen=True)
class ControlConfig:
    """Control socket: read the state and watch live frames; only the principal client may act (reload...)."""

    enabled: bool = opt(
        True,
        "Serve the control socket (one command per line; send help). The first client is principal, later ones "
        "secondaire in order of arrival; when the principal leaves, the longest-waiting one is promoted.",
    )
    bind: str = opt(
        "127.0.0.1",
        "Address to listen on; any address other than loopback (127.0.0.1, ::1) requires a token.",
        check=ip_address,
    )
    port: int = opt(9998, "TCP port.", lo=1, hi=65535)
    token: Secret | None = opt(
        None,
        "Shared secret a client must send first (auth <token>); required when bind is not a loopback address.",
        example='{ env = "TELEINFO_CONTROL_TOKEN" }',
    )
    max_clients: int = opt(16, "Clients connected at once; a further one is refused.", lo=1, hi=1024)
    max_unauthenticated: int = opt(
        8,
        "Connections at once that have not authenticated yet (with a token), counted apart from max_clients so "
        "that strangers can never fill the operator's slots; when full, a newcomer from an address holding fewer "
        "takes the slot of the oldest one from the address holding the most, else it is refused.",
        lo=1,
        hi=1024,
    )
    idle_timeout: float = opt(
        900.0,
        "Seconds a client may stay connected without sending a command nor reading anything (a watcher reading "
        "frames is not idle); then it is disconnected.",
        lo=10,
        hi=86400,
    )
    principal_idle: float = opt(
        120.0,
        "Seconds the principal may stay without sending a command while another client is connected; then it "
        'is told "role secondaire" and goes to the end of the line, and the longest-waiting client is promoted.',
        lo=5,
        hi=86400,
    )
    max_line_bytes: int = opt(
        4096, "Longest command line (bytes); a longer one gets an error and a disconnect.", lo=64, hi=65536
    )
    max_commands_per_second: int = opt(
        20, "Commands a client may send per second; a faster one gets an error and a disconnect.", lo=1, hi=10000
    )

    def validate(self) -> list[tuple[str, str]]:
        """Cross-field rules: a token when the socket is reachable from the network, and a real one."""
        errors: list[tuple[str, str]] = []
        if self.token is not None and len(self.token.get()) < 8:
            errors.append(("token", "must be at least 8 characters"))
        if self.enabled and self.token is None and not is_loopback(self.bind):
            errors.append(("token", f"required when bind ({self.bind}) is not a loopback address"))
        return errors
