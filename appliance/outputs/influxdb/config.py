"""``[outputs.influxdb]``: the InfluxDB output's settings (docs/DATA_FORMAT.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import Secret, http_url, measurement_name, opt

__all__ = ["InfluxConfig"]


@dataclass(frozen=True)
class InfluxConfig:
    """InfluxDB through /api/v2/write (InfluxDB 1.8+, 2.x, 3.x, VictoriaMetrics).  Frames that cannot be written
    are spooled on disk and replayed with their original timestamps."""

    enabled: bool = opt(False, "Write to InfluxDB.")
    url: str = opt("http://localhost:8086", "Server URL.", check=http_url)
    org: str = opt("", "Organisation (InfluxDB 2.x; ignored by 1.8 and 3.x).")
    bucket: str = opt("teleinfo", "Bucket (InfluxDB 1.8: database/retention-policy).")
    token: Secret | None = opt(
        None, 'API token (InfluxDB 1.8: "user:password").', example='{ env = "TELEINFO_INFLUX_TOKEN" }'
    )
    measurement: str = opt("teleinfo", "Measurement name.", check=measurement_name)
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
