"""``[outputs.mqtt]``: the MQTT output's settings (docs/DATA_FORMAT.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.config import Secret, opt

__all__ = ["MqttConfig"]


def _topic(value: str) -> str | None:
    if not value or any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
        return f"invalid MQTT topic prefix {value!r} (no wildcards, no leading or trailing '/')"
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
