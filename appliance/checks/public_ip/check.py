"""The public IP address in use, asked of HTTP services that answer it in plain text (docs/NETWORK.md §7).

Providers are tried in random order (no single service sees every poll, and one that is down costs one short
timeout), each with a connect timeout and a deadline for its whole answer (:mod:`appliance.httpclient`), so a
server that trickles bytes cannot hold the check. An answer counts only if its body is a bare global IP address:
an HTML page (a captive portal, a service that changed its format), a private, loopback or link-local address are
rejected and the next provider is asked. A provider answering 429 is left alone for ``backoff`` seconds (or its
Retry-After, if longer), doubled at each further 429. The provider that answered is recorded, and a change of
address is an event (logged, and ``changed = true`` in InfluxDB); the last address is kept in the state directory
so a restart does not hide one.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from appliance import __version__, httpclient
from appliance.checks.public_ip.config import PublicIpCheckConfig
from appliance.checks.results import ERROR, OK, CheckResult
from appliance.errors import ApplianceError
from appliance.runtime import Backoff

__all__ = ["USER_AGENT", "ProviderError", "PublicIpChecker", "ask_provider"]

_LOG = logging.getLogger(__name__)
USER_AGENT = f"teleinfo-appliance/{__version__} (public IP self-check)"
MAX_ANSWER = 256  # bytes: an address is at most 45 characters; more is a page, not an answer
MAX_BACKOFF = 86400.0


class ProviderError(ApplianceError):
    """A provider gave no usable answer; ``retry_after`` is set for a 429."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (only the delta-seconds form; an HTTP date counts as 0: our own backoff rules)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def ask_provider(url: str, timeout: float) -> str:
    """The address ``url`` answers, validated; raises :class:`ProviderError` with a short reason.

    ``timeout`` bounds the connection and the whole answer (status, headers and body): :func:`appliance.httpclient.get`.
    """
    try:
        answer = httpclient.get(
            url, timeout=timeout, max_bytes=MAX_ANSWER, headers={"User-Agent": USER_AGENT, "Accept": "text/plain"}
        )
    except httpclient.HttpError as e:
        raise ProviderError(e.reason) from None
    if answer.status == 429:
        raise ProviderError("429 Too Many Requests", _retry_after(answer.headers.get("Retry-After")))
    if answer.status != 200:
        raise ProviderError(f"HTTP {answer.status} {answer.reason}")
    if answer.truncated:
        raise ProviderError(f"answer longer than {MAX_ANSWER} bytes: not a bare address (an HTML page?)")
    return _address(answer.body)


def _address(body: bytes) -> str:
    text = body.decode("ascii", "replace").strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        shown = text[:40].replace("\n", " ")
        raise ProviderError(f"answer is not an IP address: {shown!r}") from None
    if not addr.is_global:
        raise ProviderError(f"answer {addr} is not a public address (private, loopback or reserved)")
    return str(addr)


@dataclass(slots=True)
class _Provider:
    """A provider's 429 backoff: left alone until ``until`` (monotonic), each further 429 doubling the wait."""

    backoff: Backoff
    until: float = 0.0


class PublicIpChecker:
    """Asks the providers; keeps the per-provider backoff and the last address between runs."""

    def __init__(self, cfg: PublicIpCheckConfig, state_file: Path | None = None, *, persist: bool = True) -> None:
        """``state_file`` holds the last address; ``persist=False`` (one-shot commands) reads it, never writes."""
        self.cfg = cfg
        self.state_file = state_file
        self.persist = persist
        self._providers: dict[str, _Provider] = {}
        self.last_address = self._load()

    def _load(self) -> str | None:
        if self.state_file is None:
            return None
        try:
            text = self.state_file.read_text(encoding="ascii").strip()
            return str(ipaddress.ip_address(text))
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def _save(self, address: str) -> None:
        if self.state_file is None or not self.persist:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            tmp.write_text(address + "\n", encoding="ascii")
            tmp.replace(self.state_file)
        except OSError as e:
            _LOG.warning("public IP: cannot record the address in %s: %s", self.state_file, e)

    def run(self, deadline: float) -> list[CheckResult]:
        """One check; ``deadline`` is a ``time.monotonic()`` past which no further provider is asked."""
        start = time.monotonic()
        providers = list(self.cfg.providers)
        random.shuffle(providers)
        attempts: list[dict[str, str]] = []
        for url in providers:
            now = time.monotonic()
            state = self._providers.setdefault(url, _Provider(Backoff(self.cfg.backoff, MAX_BACKOFF)))
            if state.until > now:
                attempts.append({"provider": url, "error": f"backing off after 429 ({state.until - now:.0f} s left)"})
                continue
            if now >= deadline:
                attempts.append({"provider": url, "error": "not asked: the check's deadline passed"})
                continue
            try:
                address = ask_provider(url, min(self.cfg.timeout, deadline - now))
            except ProviderError as e:
                attempts.append({"provider": url, "error": str(e)})
                if e.retry_after is not None:
                    wait = min(MAX_BACKOFF, max(state.backoff.next(), e.retry_after))
                    state.until = time.monotonic() + wait
                    _LOG.info("public IP: %s answered 429, left alone for %.0f s", url, wait)
                continue
            state.backoff.reset()
            return [self._found(address, url, attempts, time.monotonic() - start)]
        reasons = "; ".join(f"{urlsplit(a['provider']).netloc}: {a['error']}" for a in attempts) or "no provider"
        return [
            CheckResult(
                "public_ip",
                "public",
                ERROR,
                f"no provider gave a valid address ({reasons})",
                {"attempts": attempts},
                duration_s=time.monotonic() - start,
            )
        ]

    def _found(self, address: str, url: str, attempts: list[dict[str, str]], duration: float) -> CheckResult:
        previous = self.last_address
        changed = previous is not None and previous != address
        if changed:
            _LOG.warning("public IP changed: %s -> %s (answered by %s)", previous, address, url)
        if address != previous:
            self.last_address = address
            self._save(address)
        message = f"public address {address} (from {urlsplit(url).netloc})"
        if changed:
            message += f", changed from {previous}"
        details = {"address": address, "provider": url, "changed": changed, "previous": previous}
        fields: dict[str, bool | int | float | str] = {
            "address": address,
            "version": ipaddress.ip_address(address).version,
            "changed": changed,
            "provider": url,
            "previous": previous or "",
        }
        return CheckResult(
            "public_ip",
            "public",
            OK,
            message,
            details | {"attempts": attempts},
            measurement="public_ip",
            fields=fields,
            duration_s=duration,
        )
