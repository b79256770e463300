"""The configuration: one TOML file loaded into frozen, typed dataclasses, validated all at once.

The schema below is the single source of truth: the loader validates against it, and
``teleinfo print-example-config`` renders the commented example from the same field docs, so the example can
never drift from what the loader accepts (a test loads it back).

Every problem is collected with its key path (``outputs.multicast.ttl: must be at most 255 (got 300)``) and
reported together, so a user fixes a file in one pass; unknown keys are errors, which catches typos.

Secrets (passwords, tokens) are never written in the main file if the user prefers not to: any field of type
:class:`Secret` accepts a plain string, ``{ env = "NAME" }`` or ``{ file = "/path" }`` (systemd credentials live
in ``$CREDENTIALS_DIRECTORY``).  A :class:`Secret` prints as ``***`` so it can never reach a log.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_PATH",
    "Config",
    "ConfigError",
    "Secret",
    "config_path",
    "load_config",
    "parse_config",
    "render_example",
]

DEFAULT_PATH = Path("/etc/teleinfo/teleinfo.toml")
ENV_PATH = "TELEINFO_CONFIG"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem with its key path."""

    def __init__(self, errors: list[str], source: str = "configuration") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} error(s):\n" + "\n".join(f"  - {e}" for e in errors))


class Secret:
    """A secret value that never shows itself in ``repr``/``str`` (and so never in a log)."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str = "inline") -> None:
        self._value = value
        self.origin = origin

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(*** from {self.origin})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


Check = Callable[[Any], str | None]


def opt(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    check: Check | None = None,
    example: str | None = None,
) -> Any:
    """A schema field: default, documentation, range and an optional check returning an error message."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "check": check, "example": example}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str | None = None) -> Any:
    return field(default_factory=cls, metadata={"doc": doc or (cls.__doc__ or "").strip()})


# --- checks ------------------------------------------------------------------------------------------------
def _multicast_group(value: str) -> str | None:
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        return f"not an IPv4 address: {value!r}"
    if not addr.is_multicast:
        return f"{value} is not a multicast address (224.0.0.0/4)"
    if addr in ipaddress.IPv4Network("224.0.0.0/24"):
        return f"{value} is in 224.0.0.0/24, reserved for link-local control traffic"
    return None


def _interface(value: str) -> str | None:
    if not value:
        return None
    try:
        ipaddress.IPv4Address(value)
        return None
    except ValueError:
        pass
    if len(value) > 15 or not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return f"neither an IPv4 address nor an interface name: {value!r}"
    return None


def _ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"not an IP address: {value!r} (0.0.0.0: every IPv4 interface, 127.0.0.1: this machine only)"
    return None


def _is_loopback(value: str) -> bool:
    """True for a loopback address, and for an invalid one (already reported by its own check)."""
    try:
        return ipaddress.ip_address(value).is_loopback
    except ValueError:
        return True


def _measurement(value: str) -> str | None:
    if not value or value.startswith("_") or any(c in value for c in ' ,=\\"\n'):
        return f"invalid measurement name {value!r} (no spaces, commas, quotes, '=' or leading '_')"
    return None


# --- schema ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulatorConfig:
    """The built-in meter simulator (used when source.kind = "simulator" or with --simulate)."""

    mode: Literal["historique", "standard"] = opt("historique", "TIC mode the simulated meter speaks.")
    phases: Literal[1, 3] = opt(1, "1 (single-phase) or 3 (three-phase).")
    contract: Literal["BASE", "HCHP", "TEMPO", "EJP"] = opt("BASE", "Tariff contract: BASE, HCHP, TEMPO or EJP.")
    producer: bool = opt(False, "Also inject energy into the grid (standard mode only).")
    errors: float = opt(0.0, "Fraction of frames corrupted on purpose (bit flips, EOT, truncation).", lo=0, hi=1)
    seed: int = opt(1, "Seed of the simulated load curve, so runs are reproducible.")

    def validate(self) -> list[tuple[str, str]]:
        if self.producer and self.mode == "historique":
            return [("producer", "a producer needs standard mode: historique TIC carries no production data")]
        return []


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


@dataclass(frozen=True)
class MulticastConfig:
    """UDP multicast: every frame, in real time, to every listener on the LAN (teleinfo listen, Telegraf...)."""

    enabled: bool = opt(True, "Send frames to the multicast group.")
    group: str = opt(
        "239.255.42.1", "Multicast group (keep it in 239.255.0.0/16, the IPv4 local scope).", check=_multicast_group
    )
    port: int = opt(4242, "UDP port.", lo=1, hi=65535)
    ttl: int = opt(1, "Multicast TTL: 1 keeps datagrams on the local network.", lo=0, hi=255)
    interface: str = opt(
        "",
        'Outgoing interface, by IPv4 address or name ("" = the system\'s route). The simulator demo uses 127.0.0.1.',
        check=_interface,
    )
    format: Literal["influx", "json"] = opt(
        "influx", "influx: InfluxDB line protocol (Telegraf socket_listener, InfluxDB UDP); json: decoded frames."
    )
    precision: Literal["s", "ms", "us", "ns"] = opt(
        "ns", "Timestamp precision of the line protocol (ns is what Telegraf and InfluxDB's UDP listener expect)."
    )
    measurement: str = opt("teleinfo", "Measurement name of the line protocol.", check=_measurement)
    queue_size: int = opt(1000, "Frames queued for this output before the oldest are dropped.", lo=1, hi=1_000_000)


def _topic(value: str) -> str | None:
    if not value or any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
        return f"invalid MQTT topic prefix {value!r} (no wildcards, no leading or trailing '/')"
    return None


def _url(value: str) -> str | None:
    if not value.startswith(("http://", "https://")):
        return f"must be an http:// or https:// URL (got {value!r})"
    return None


@dataclass(frozen=True)
class MqttConfig:
    """MQTT (Home Assistant and any subscriber): a JSON state per frame, availability through a retained last
    will, Home Assistant device discovery.  Frames that cannot be delivered are spooled on disk and replayed."""

    enabled: bool = opt(False, "Publish to an MQTT broker.")
    host: str = opt("localhost", "Broker host name or address.")
    port: int = opt(1883, "Broker port (8883 is the usual TLS port).", lo=1, hi=65535)
    protocol: Literal["3.1.1", "5"] = opt("3.1.1", "MQTT protocol version.")
    tls: bool = opt(False, "Connect with TLS.")
    ca_file: str = opt("", 'CA certificate file for TLS ("" = the system\'s CAs).')
    cert_file: str = opt("", "Client certificate file, for brokers that authenticate clients by certificate.")
    key_file: str = opt("", "Private key of the client certificate.")
    username: str = opt("", 'User name ("" = anonymous).')
    password: Secret | None = opt(None, "Password.", example='{ env = "TELEINFO_MQTT_PASSWORD" }')
    client_id: str = opt("", 'Client id ("" = teleinfo-<hostname>).')
    keepalive: int = opt(30, "Keepalive (s): how fast the broker notices a silent network loss.", lo=5, hi=3600)
    qos: Literal[0, 1, 2] = opt(1, "QoS of state messages.")
    base_topic: str = opt("teleinfo", "Topics start with this: <base_topic>/<meter>/state ...", check=_topic)
    publish_interval: float = opt(
        0.0, "Publish at most one state per meter every N seconds (0 = every frame).", lo=0, hi=3600
    )
    publish_on_change: bool = opt(False, "Skip a state whose values (DATE aside) did not change.")
    discovery: bool = opt(True, "Publish Home Assistant MQTT discovery.")
    discovery_prefix: str = opt("homeassistant", "Home Assistant's discovery prefix.", check=_topic)
    queue_size: int = opt(1000, "Frames queued in memory for this output.", lo=1, hi=1_000_000)
    spool_max_mb: float = opt(
        64.0, "Disk space for frames kept while the broker is unreachable (MB).", lo=0.1, hi=100_000
    )


@dataclass(frozen=True)
class InfluxConfig:
    """InfluxDB through /api/v2/write (InfluxDB 1.8+, 2.x, 3.x, VictoriaMetrics).  Frames that cannot be written
    are spooled on disk and replayed with their original timestamps."""

    enabled: bool = opt(False, "Write to InfluxDB.")
    url: str = opt("http://localhost:8086", "Server URL.", check=_url)
    org: str = opt("", "Organisation (InfluxDB 2.x; ignored by 1.8 and 3.x).")
    bucket: str = opt("teleinfo", "Bucket (InfluxDB 1.8: database/retention-policy).")
    token: Secret | None = opt(
        None, 'API token (InfluxDB 1.8: "user:password").', example='{ env = "TELEINFO_INFLUX_TOKEN" }'
    )
    measurement: str = opt("teleinfo", "Measurement name.", check=_measurement)
    verify_tls: bool = opt(True, "Verify the server's TLS certificate.")
    ca_file: str = opt("", 'CA certificate file for https ("" = the system\'s CAs).')
    timeout: float = opt(5.0, "Timeout of one write (s).", lo=0.5, hi=120)
    batch_size: int = opt(500, "Points per write when replaying the spool.", lo=1, hi=100_000)
    queue_size: int = opt(1000, "Frames queued in memory for this output.", lo=1, hi=1_000_000)
    spool_max_mb: float = opt(
        64.0, "Disk space for frames kept while the server is unreachable (MB).", lo=0.1, hi=100_000
    )
    health_interval: float = opt(
        60.0,
        "Seconds between two writes of the appliance's own counters (teleinfo_health*, 0 = never).",
        lo=0,
        hi=86_400,
    )


@dataclass(frozen=True)
class OutputsConfig:
    """Where decoded frames go.  Each output has its own queue: a slow one never delays the others."""

    multicast: MulticastConfig = section(MulticastConfig)
    mqtt: MqttConfig = section(MqttConfig)
    influxdb: InfluxConfig = section(InfluxConfig)


@dataclass(frozen=True)
class HealthConfig:
    """Health socket: the state, for HAProxy (agent-check, tcp-check, httpchk), Nagios, nc and curl alike."""

    enabled: bool = opt(
        True,
        "Serve the health socket. A silent client reads one HAProxy agent line; GET or HEAD gets an HTTP/1.0 answer "
        "(200 when up, 503 otherwise) with that line as body; GET /status gets every counter as JSON.",
    )
    bind: str = opt(
        "0.0.0.0",  # noqa: S104 - monitors and load balancers are on the LAN; personal data is never served
        "Address to listen on: 0.0.0.0 for every IPv4 interface (load balancers and monitors on the LAN), "
        "127.0.0.1 for this machine only.",
        check=_ip_address,
    )
    port: int = opt(9999, "TCP port.", lo=1, hi=65535)
    down_after: float = opt(
        60.0,
        "Seconds without a valid frame (counted from the start while none has come) before the state is down: "
        '"down 0%". While frames flow: "drain 0%" when every output is failing, "up ready 50%" when some are, '
        'else "up ready 100%".',
        lo=1,
        hi=86400,
    )
    max_connections: int = opt(
        32, "Connections served at once; a further client gets the agent line at once and is closed.", lo=1, hi=1024
    )
    read_timeout: float = opt(
        2.0, "Seconds an HTTP client has to send its request (HAProxy's agent-inter is 2 s).", lo=0.2, hi=60
    )
    max_request_bytes: int = opt(
        4096, "Largest HTTP request head accepted (bytes); a larger one gets 400.", lo=256, hi=65536
    )
    expose_meter: bool = opt(
        False, "Include the meter address (personal data) in health answers; without it, it is never shown."
    )


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
        check=_ip_address,
    )
    port: int = opt(9998, "TCP port.", lo=1, hi=65535)
    token: Secret | None = opt(
        None,
        "Shared secret a client must send first (auth <token>); required when bind is not a loopback address.",
        example='{ env = "TELEINFO_CONTROL_TOKEN" }',
    )
    max_clients: int = opt(16, "Clients connected at once; a further one is refused.", lo=1, hi=1024)
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
        if self.enabled and self.token is None and not _is_loopback(self.bind):
            errors.append(("token", f"required when bind ({self.bind}) is not a loopback address"))
        return errors


def _nmap_ports(value: str) -> str | None:
    """An nmap ``-p`` list: digits, commas and ranges only (no option can be smuggled in)."""
    if not re.fullmatch(r"\d{1,5}(-\d{1,5})?(,\d{1,5}(-\d{1,5})?)*", value):
        return f'must be an nmap port list such as "22,80,8000-8100" (got {value!r})'
    for part in value.split(","):
        bounds = [int(p) for p in part.split("-")]
        if not all(1 <= b <= 65535 for b in bounds) or bounds != sorted(bounds):
            return f"bad port range {part!r} (ports are 1-65535, low-high)"
    return None


def _host(value: str) -> str | None:
    """An IP address or a DNS name: never empty, never starting with '-' (it would be read as an option)."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if (
        not value
        or value.startswith("-")
        or not all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels)
    ):
        return f"neither an IP address nor a host name: {value!r}"
    return None


def _urls(value: list[str]) -> str | None:
    from urllib.parse import urlsplit

    for url in value:
        msg = _url(url)
        if msg:
            return msg
        try:
            if not urlsplit(url).hostname:
                return f"no host name in {url!r}"
            urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            return f"invalid URL {url!r} ({e})"
    return None


def _ports_list(value: list[int]) -> str | None:
    if any(not 1 <= p <= 65535 for p in value):
        return f"ports are 1-65535 (got {value!r})"
    return None


def _name(value: str) -> str | None:
    if not value or any(c in value for c in ' ,=\\"\n'):
        return f"invalid name {value!r} (no spaces, commas, quotes or '=': it becomes an InfluxDB tag)"
    return None


@dataclass(frozen=True)
class PublicIpCheckConfig:
    """The public IP address in use, asked of HTTP services that answer it in plain text."""

    interval: float = opt(900.0, "Seconds between two scheduled checks (0 = not scheduled).", lo=0, hi=604800)
    providers: list[str] = opt(
        ["https://api.ipify.org", "https://ipv4.icanhazip.com", "https://ifconfig.me/ip"],
        "URLs answering the caller's address as plain text, tried in random order until one answers validly.",
        check=_urls,
    )
    timeout: float = opt(5.0, "Seconds to connect to a provider, and to get its whole answer.", lo=0.2, hi=60)
    backoff: float = opt(
        600.0, "Seconds a provider that answered 429 is left alone (at least; Retry-After wins).", lo=1, hi=86400
    )


@dataclass(frozen=True)
class PortsTargetConfig:
    """A machine whose open TCP ports are watched."""

    host: str = opt("", "IP address or host name to scan.", check=_host, example='"192.168.1.1"')
    ports: str = opt("1-1024", "Ports to scan, nmap's -p syntax (digits, commas, ranges).", check=_nmap_ports)
    expected: list[int] = opt(
        [],
        "Ports expected open; any other open port, or one of these closed, is reported.",
        check=_ports_list,
        example="[22, 80]",
    )


@dataclass(frozen=True)
class PortsCheckConfig:
    """Open TCP ports of the targets (nmap connect scan), compared with the expected ones."""

    interval: float = opt(3600.0, "Seconds between two scheduled checks (0 = not scheduled).", lo=0, hi=604800)
    nmap: str = opt("nmap", "The nmap program (a name looked up in PATH, or a path).")
    timeout: float = opt(120.0, "Seconds one nmap run may take before it is killed.", lo=1, hi=3600)
    targets: list[PortsTargetConfig] = opt([], "A target to scan (repeat the table for more).")


@dataclass(frozen=True)
class PeerConfig:
    """A machine reached over SSH that scans the same targets, to compare what each vantage point sees."""

    name: str = opt("", "Name of the peer in reports and InfluxDB tags.", check=_name, example='"office"')
    host: str = opt("", "Address or host name of the peer.", check=_host, example='"192.168.1.20"')
    port: int = opt(22, "SSH port.", lo=1, hi=65535)
    user: str = opt("teleinfo", "User to log in as.")
    key_file: str = opt("", "Private key (Ed25519 recommended) to log in with.", example='"/etc/teleinfo/id_ed25519"')
    nmap: str = opt("nmap", "The nmap program on the peer.")


@dataclass(frozen=True)
class PeersCheckConfig:
    """SSH peers that scan every ports target; every port seen open from one side only is reported."""

    interval: float = opt(3600.0, "Seconds between two scheduled checks (0 = not scheduled).", lo=0, hi=604800)
    known_hosts: str = opt(
        "",
        'Host keys of the peers, written by "teleinfo peers enroll" ("" = known_hosts in the state directory). '
        "Unknown or changed keys are refused.",
    )
    connect_timeout: float = opt(10.0, "Seconds for each of: TCP connect, SSH banner, authentication.", lo=0.5, hi=300)
    command_timeout: float = opt(180.0, "Seconds the remote scan may take.", lo=1, hi=3600)
    hosts: list[PeerConfig] = opt([], "A peer (repeat the table for more).")

    def validate(self) -> list[tuple[str, str]]:
        names = [p.name for p in self.hosts]
        errors: list[tuple[str, str]] = []
        if len(set(names)) != len(names):
            errors.append(("hosts", f"peer names must be unique (got {names})"))
        errors.extend(
            (f"hosts[{i}].{key}", "is required")
            for i, p in enumerate(self.hosts)
            for key in ("name", "host", "key_file")
            if not getattr(p, key)
        )
        return errors


@dataclass(frozen=True)
class ChecksConfig:
    """Network self-checks: public IP, open ports (nmap), SSH peers comparing the ports they see.  Results go to
    InfluxDB (outputs.influxdb, when enabled), to the health socket's /status and to "teleinfo check"."""

    enabled: bool = opt(False, "Run the checks periodically inside the service (teleinfo check works either way).")
    deadline: float = opt(
        300.0, "Hard limit of one check run (s): past it the run is reported as failed and abandoned.", lo=5, hi=7200
    )
    backlog: int = opt(1000, "Result points kept in memory while InfluxDB cannot be written.", lo=0, hi=100_000)
    public_ip: PublicIpCheckConfig = section(PublicIpCheckConfig)
    ports: PortsCheckConfig = section(PortsCheckConfig)
    peers: PeersCheckConfig = section(PeersCheckConfig)

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for i, t in enumerate(self.ports.targets):
            if not t.host:
                errors.append((f"ports.targets[{i}].host", "is required"))
            if _nmap_ports(t.ports) is None:
                ranges = [[int(b) for b in part.split("-")] for part in t.ports.split(",")]
                outside = [p for p in t.expected if not any(r[0] <= p <= r[-1] for r in ranges)]
                if outside:
                    errors.append((f"ports.targets[{i}].expected", f"{outside} not in the scanned ports {t.ports!r}"))
        if self.peers.hosts and not self.ports.targets:
            errors.append(
                ("peers.hosts", "peers scan the ports targets: configure at least one [[checks.ports.targets]]")
            )
        return errors


@dataclass(frozen=True)
class StateConfig:
    """Files the service keeps (systemd's StateDirectory)."""

    directory: str = opt(
        "/var/lib/teleinfo", "Where the spools of unreachable outputs live (touched only during outages)."
    )


@dataclass(frozen=True)
class LoggingConfig:
    """Logging (to the journal under systemd, to standard error otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = opt("info", "Minimum level logged.")


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


def _client_name(value: str) -> str | None:
    if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        return f"must be 1-64 letters, digits, '_' or '-' (got {value!r}): it names a directory on the server"
    return None


@dataclass(frozen=True)
class JournalConfig:
    """Raw capture journal: the meter's bytes exactly as received, each chunk with its reception time, in
    compressed segments that "teleinfo replay" turns back into the same points.  Written in large batches (one
    write per flush) to spare the SD card."""

    enabled: bool = opt(False, "Keep the journal.")
    directory: str = opt("", 'Where segments are written ("" = journal/ in the state directory).')
    segment_seconds: int = opt(3600, "A new segment at least this often (s; 3600 = hourly).", lo=60, hi=86400)
    segment_max_mb: float = opt(16.0, "A new segment once the current one reaches this size (MB).", lo=0.01, hi=4096)
    flush_interval: float = opt(60.0, "Buffered bytes are written at least this often (s).", lo=0.05, hi=3600)
    flush_kb: int = opt(256, "...or as soon as this much is buffered (kB).", lo=1, hi=65536)
    buffer_max_mb: float = opt(
        16.0, "Memory kept while the disk cannot be written; past it the oldest chunks are dropped (MB).", lo=1, hi=1024
    )
    keep_days: float = opt(31.0, "Segments older than this are deleted (days; 0 = no age limit).", lo=0, hi=36500)
    max_total_mb: float = opt(
        512.0, "Oldest segments are deleted while the journal is bigger than this (MB).", lo=1, hi=1_000_000
    )


@dataclass(frozen=True)
class SyncServerConfig:
    """teleinfo sync-server: receives every client's tree (docs/SYNC.md)."""

    bind: str = opt("127.0.0.1", "Address to listen on (0.0.0.0: every IPv4 interface).", check=_ip_address)
    port: int = opt(4243, "TCP port.", lo=1, hi=65535)
    root: str = opt("/srv/teleinfo-sync", "Each client's tree is stored in <root>/<client name>/.")
    tokens_file: str = opt(
        "/etc/teleinfo/sync-clients", 'One "name token" line per client (tokens at least 16 characters).'
    )
    tls_cert: str = opt("", 'Certificate chain file for TLS ("" = plain TCP).')
    tls_key: str = opt("", "Private key of tls_cert.")
    max_connections: int = opt(64, "Connections served at once; further ones are refused.", lo=1, hi=4096)
    max_file_mb: float = opt(1024.0, "Largest file a client may declare (MB).", lo=0.001, hi=1_000_000)
    max_tree_mb: float = opt(10240.0, "Largest tree a client may store (MB).", lo=0.001, hi=100_000_000)
    max_files: int = opt(100_000, "Most files and directories a client may store.", lo=1, hi=100_000_000)
    max_requests_per_second: float = opt(
        200.0, "Requests a connection may make per second (burst: as many); a faster one is cut off.", lo=1, hi=100_000
    )
    idle_timeout: float = opt(300.0, "A connection silent this long is closed (s).", lo=1, hi=86400)

    def validate(self) -> list[tuple[str, str]]:
        if bool(self.tls_cert) != bool(self.tls_key):
            return [("tls_key" if self.tls_cert else "tls_cert", "TLS needs both tls_cert and tls_key")]
        return []


@dataclass(frozen=True)
class SyncConfig:
    """teleinfo sync: mirror a directory (the journal by default) to a sync-server, live (inotify)."""

    address: str = opt("", 'The sync-server, "host:port" ("" = not configured).', example='"nas.lan:4243"')
    name: str = opt("", 'This client\'s name on the server ("" = the host name).', check=_client_name)
    token: Secret | None = opt(None, "This client's token on the server.", example='{ env = "TELEINFO_SYNC_TOKEN" }')
    directory: str = opt("", 'Directory to mirror ("" = the journal directory).')
    tls: bool = opt(False, "Connect with TLS.")
    ca_file: str = opt("", 'CA certificate to verify the server with ("" = the system\'s CAs).')
    reconnect_max_backoff: float = opt(30.0, "Longest wait between two connection attempts (s).", lo=0.1, hi=3600)
    server: SyncServerConfig = section(SyncServerConfig)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    source: SourceConfig = section(SourceConfig)
    outputs: OutputsConfig = section(OutputsConfig)
    health: HealthConfig = section(HealthConfig)
    control: ControlConfig = section(ControlConfig)
    state: StateConfig = section(StateConfig)
    logging: LoggingConfig = section(LoggingConfig)
    checks: ChecksConfig = section(ChecksConfig)
    gpio: GpioConfig = section(GpioConfig)
    journal: JournalConfig = section(JournalConfig)
    sync: SyncConfig = section(SyncConfig)


# --- loading -----------------------------------------------------------------------------------------------
def config_path(explicit: str | None) -> tuple[Path, bool]:
    """The file to load and whether the user named it (flag or $TELEINFO_CONFIG), which makes it mandatory."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get(ENV_PATH)
    if env:
        return Path(env), True
    return DEFAULT_PATH, False


def load_config(path: str | Path | None = None, *, required: bool = True) -> Config:
    """Load and validate a file; raise :class:`ConfigError` listing every problem.

    With ``required=False`` a missing file gives the defaults (the service then runs on its built-in defaults).
    """
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return Config()
        raise ConfigError([f"file not found: {p}"], str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read {p}: {e}"], str(p)) from None
    return parse_config(text, str(p))


def parse_config(text: str, source: str = "configuration") -> Config:
    """Validate TOML text against the schema."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], source) from None
    errors: list[str] = []
    cfg = _build(Config, data, "", errors)
    if errors:
        raise ConfigError(errors, source)
    assert isinstance(cfg, Config)
    return cfg


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(t))
    if t is Secret:
        return 'a string, { env = "NAME" } or { file = "/path" }'
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(t, str(t))


def _convert(t: Any, value: Any, key: str, errors: list[str]) -> Any:
    """Check ``value`` against type ``t``; append an error and return None if it does not fit."""
    origin = typing.get_origin(t)
    if origin is Literal:
        choices = typing.get_args(t)
        if value in choices and type(value) is type(choices[0]):
            return value
        errors.append(f"{key}: must be {_type_name(t)} (got {value!r})")
        return None
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return _convert(args[0], value, key, errors)
    if origin is list:
        (item,) = typing.get_args(t)
        if not isinstance(value, list):
            errors.append(f"{key}: must be a list (got {value!r})")
            return None
        if dataclasses.is_dataclass(item):  # an array of tables: [[checks.peers]]
            return [_build(item, v, f"{key}[{i}]", errors) for i, v in enumerate(value)]  # type: ignore[arg-type]
        return [_convert(item, v, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if t is Secret:
        return _secret(value, key, errors)
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif t is str:
        ok = isinstance(value, str)
    else:
        ok = False
    if not ok:
        errors.append(f"{key}: must be {_type_name(t)} (got {type(value).__name__} {value!r})")
        return None
    return value


def _secret(value: Any, key: str, errors: list[str]) -> Secret | None:
    if isinstance(value, str):
        return Secret(value)
    if isinstance(value, dict) and len(value) == 1 and ("env" in value or "file" in value):
        if "env" in value:
            name = value["env"]
            if not isinstance(name, str) or name not in os.environ:
                errors.append(f"{key}: environment variable {name!r} is not set")
                return None
            return Secret(os.environ[name], f"${name}")
        path = value["file"]
        if not isinstance(path, str):
            errors.append(f"{key}: file must be a path string")
            return None
        p = Path(os.path.expandvars(path))
        try:
            return Secret(p.read_text(encoding="utf-8").rstrip("\r\n"), str(p))
        except (OSError, UnicodeDecodeError) as e:
            errors.append(f"{key}: cannot read secret file {p}: {getattr(e, 'strerror', None) or e}")
            return None
    errors.append(f"{key}: must be {_type_name(Secret)}")
    return None


def _build(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{prefix or 'top level'}: must be a table (got {data!r})")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else key
            errors.append(f"{where}: unknown key (expected one of: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        t = hints[name]
        if dataclasses.is_dataclass(t):
            value = _build(t, data[name], key, errors)  # type: ignore[arg-type]
        else:
            n_before = len(errors)
            value = _convert(t, data[name], key, errors)
            if len(errors) == n_before:
                _check_range(f, value, key, errors)
        if value is not None:
            kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # pragma: no cover - only on a schema bug
        errors.append(f"{prefix}: {e}")
        return None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        errors.extend(f"{prefix}.{k}: {msg}" if prefix else f"{k}: {msg}" for k, msg in validate())
    return obj


def _check_range(f: dataclasses.Field[Any], value: Any, key: str, errors: list[str]) -> None:
    meta = f.metadata
    lo, hi, check = meta.get("lo"), meta.get("hi"), meta.get("check")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            errors.append(f"{key}: must be at least {lo:g} (got {value!r})")
        if hi is not None and value > hi:
            errors.append(f"{key}: must be at most {hi:g} (got {value!r})")
    if check is not None:
        msg = check(value)
        if msg:
            errors.append(f"{key}: {msg}")


# --- example -----------------------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Secret):
        return '{ env = "SECRET_VARIABLE" }'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _wrap(text: str, indent: str = "# ") -> list[str]:
    import textwrap

    return [indent + line for line in textwrap.wrap(text, 116)] or [indent.rstrip()]


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """The value a key takes when the file leaves it out: every schema field is built by opt() or section(),
    which always give a default or a default factory."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"schema field {f.name!r} has neither a default nor a default factory")


def render_example() -> str:
    """A complete, commented configuration holding every key at its default value."""
    lines = [
        "# teleinfo configuration (TOML). Every key is optional; the values below are the defaults.",
        f"# Default location: {DEFAULT_PATH} (override with --config or ${ENV_PATH}).",
        '# Secrets may be written inline, or as { env = "NAME" } or { file = "/path" }.',
        "",
    ]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        subs = []
        tables = []
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                subs.append((f, t))
                continue
            args = typing.get_args(t)
            if typing.get_origin(t) is list and args and dataclasses.is_dataclass(args[0]):
                tables.append((f, args[0]))
                continue
            lines.extend(_wrap(f.metadata.get("doc", "")))
            allowed = typing.get_args(t) if typing.get_origin(t) is Literal else None
            if allowed and len(allowed) > 1:
                lines.append("# one of: " + ", ".join(_toml_value(a) for a in allowed))
            default = _field_default(f)
            if default is None:
                example = f.metadata.get("example")
                lines.append(f"# {f.name} = {example}" if example else f"# {f.name} =")
            else:
                lines.append(f"{f.name} = {_toml_value(default)}")
            lines.append("")
        for f, item in tables:  # commented out: an example entry of an array of tables
            name = f"{prefix}.{f.name}" if prefix else f.name
            lines.extend(_wrap(f.metadata.get("doc", "")))
            lines.append(f"# [[{name}]]")
            for g in dataclasses.fields(item):
                default = _field_default(g)
                example = g.metadata.get("example") or ("" if default is None else _toml_value(default))
                doc = g.metadata.get("doc", "")
                lines.append(f"# {g.name} = {example}" + (f"    # {doc}" if doc else ""))
            lines.append("")
        for f, t in subs:
            name = f"{prefix}.{f.name}" if prefix else f.name
            lines.extend(_wrap(f.metadata.get("doc", "")))
            lines.append(f"[{name}]")
            walk(t, name)

    walk(Config, "")
    return "\n".join(lines).rstrip() + "\n"
