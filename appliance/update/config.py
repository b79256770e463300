"""The ``[update]`` section of ``teleinfo.toml``: where updates come from and how long they may take.

Registered in :class:`appliance.schema.Config` like every other section, built with the same schema helpers, so
``check-config`` validates it and ``print-example-config`` documents it.  Trust never comes from here: the keys a
bundle must be signed with are files root installs (``/etc/teleinfo/update-keys``), not configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.config import Secret, opt

__all__ = ["UpdateConfig"]

_WINDOW = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


def _window(value: str) -> str | None:
    if value and not _WINDOW.match(value):
        return f'must be "HH:MM-HH:MM" in local time, or "" for any time (got {value!r})'
    return None


def _channel(value: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,31}", value):
        return f"must be 1-32 lower-case letters, digits, '.', '_' or '-' (got {value!r})"
    return None


def _https_url(value: Secret | None) -> str | None:
    if value is None:
        return None
    url = value.get()
    if not url.startswith(("https://", "http://")):
        return "must be an https:// (or http://) URL"
    return None


@dataclass(frozen=True)
class UpdateConfig:
    """Automatic updates: a signed bundle from a URL, checked on a schedule (the systemd timer
    teleinfo-update.timer asks every hour; installs happen only when due and inside the window).  A bundle
    dropped on the boot partition is installed at boot whatever these settings say (it is never unsigned)."""

    enabled: bool = opt(False, "Look for updates at url on the schedule below.")
    url: Secret | None = opt(
        None,
        "Where the channel files are: <url>/<channel>.json names the bundle of each machine (image/README.md). "
        "Credentials may be in the URL (they are redacted in every log line), or the whole URL in a "
        "{ env } / { file } secret.",
        check=_https_url,
        example='"https://updates.example.org/teleinfo"',
    )
    channel: str = opt("stable", "The channel followed (a bundle of another channel is refused).", check=_channel)
    interval_hours: float = opt(24.0, "Hours between two looks at the URL.", lo=1, hi=8760)
    window: str = opt("03:00-05:00", 'Installs only start between these local times ("" = any time).', check=_window)
    ca_file: str = opt("", 'CA certificate file for https ("" = the system\'s CAs; always verified).')
    connect_timeout: float = opt(15.0, "Seconds to connect to the update server.", lo=1, hi=300)
    download_timeout: float = opt(
        900.0, "Seconds a whole download may take, however the server trickles.", lo=5, hi=86400
    )
    max_mb: float = opt(256.0, "Largest bundle accepted (MB); a bigger answer is cut off.", lo=1, hi=4096)
    deadline: float = opt(
        180.0,
        "Seconds the new release has to report READY and health up (and frames, when they flowed before); "
        "otherwise the previous release is put back.",
        lo=10,
        hi=3600,
    )
    quiet_timeout: float = opt(
        300.0,
        "Seconds an install waits for the outputs' spools to drain before restarting the service (then restarts "
        "anyway: the spool is durable).",
        lo=0,
        hi=86400,
    )
