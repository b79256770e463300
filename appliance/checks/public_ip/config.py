"""``[checks.public_ip]``: the public-IP check's settings."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import http_url, opt

__all__ = ["PublicIpCheckConfig"]


def _urls(value: list[str]) -> str | None:
    from urllib.parse import urlsplit

    for url in value:
        msg = http_url(url)
        if msg:
            return msg
        try:
            if not urlsplit(url).hostname:
                return f"no host name in {url!r}"
            urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            return f"invalid URL {url!r} ({e})"
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
