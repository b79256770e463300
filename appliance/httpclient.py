"""The one way the appliance asks an HTTP server something: a GET through ``requests``, bounded in time and size.

Every HTTP client call (the public-IP providers, ``teleinfo doctor``'s probes, ``teleinfo status``) assumes a
hostile or broken server, so :func:`get` bounds everything it waits for:

- the connection: ``timeout`` seconds (a host that does not answer SYN);
- the whole answer, status line to last body byte: one monotonic deadline ``timeout`` seconds after the call.
  The body is read with ``stream=True`` in chunks, each read waiting no longer than what is left, so a server
  that trickles a byte every 100 ms cannot hold the caller (a per-read timeout alone would let it);
- the size: at most ``max_bytes`` of body are read, the rest is never downloaded (``truncated`` says so);
- redirects are not followed (a provider that redirects gave no answer), nothing is retried.

Errors are :class:`HttpError` with a short reason (``connection refused``, ``no answer within 0.5 s``), never a
traceback nor a server's page.  ``requests`` is imported on first use: the service imports this module only
when a check or a command needs it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.errors import ApplianceError, error_reason

__all__ = ["CHUNK", "Answer", "HttpError", "get"]

CHUNK: Final = 4096  # bytes asked of the socket per read


class HttpError(ApplianceError):
    """No usable HTTP answer (connection, timeout, protocol); the message is the short reason."""

    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server answered: its status, headers (case-insensitive names) and up to ``max_bytes`` of body."""

    status: int
    reason: str
    body: bytes
    truncated: bool = False  # the server had more than max_bytes to say (none of it was read)
    headers: Mapping[str, str] = field(default_factory=dict)


def get(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    verify: bool | str = True,
) -> Answer:
    """GET ``url``; ``timeout`` bounds the connection and, from the call on, the whole answer.

    Raises :class:`HttpError` when no whole answer came in time; an HTTP error status is an :class:`Answer`.
    """
    import requests

    deadline = time.monotonic() + timeout
    try:
        response = requests.get(
            url,
            headers=dict(headers or {}),
            timeout=(timeout, timeout),
            stream=True,
            allow_redirects=False,
            verify=verify,
        )
    except requests.exceptions.ConnectTimeout:
        raise HttpError(f"no connection within {timeout:.3g} s") from None
    except requests.exceptions.Timeout:
        raise HttpError(f"no answer within {timeout:.3g} s") from None
    except requests.exceptions.SSLError as e:
        raise HttpError(f"TLS error ({_innermost(e)})") from None
    except (requests.exceptions.RequestException, OSError) as e:
        raise HttpError(error_reason(e, timeout)) from None
    try:
        body, truncated = _read(response, deadline, max_bytes, timeout)
        return Answer(response.status_code, response.reason or "", body, truncated, response.headers)
    finally:
        response.close()


def _read(response: Any, deadline: float, max_bytes: int, timeout: float) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` of body before ``deadline``; True when more was there."""
    import requests
    import urllib3.exceptions

    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)  # None once a short body was read whole
    body = bytearray()
    try:
        while len(body) <= max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(remaining)  # this read waits no longer than the answer has left
            chunk = raw.read1(min(CHUNK, max_bytes + 1 - len(body)))
            if not chunk:
                break
            body += chunk
    except (TimeoutError, urllib3.exceptions.TimeoutError, requests.exceptions.Timeout):
        raise HttpError(f"no answer within {timeout:.3g} s") from None
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as e:
        raise HttpError(f"bad HTTP answer ({type(e).__name__})") from None
    if len(body) > max_bytes:
        return bytes(body[:max_bytes]), True
    return bytes(body), False


def _innermost(exc: BaseException) -> str:
    """The SSL library's own words, without the layers requests and urllib3 wrap around them."""
    e: BaseException | None = exc
    while e is not None:
        nxt = e.__cause__ or e.__context__ or getattr(e, "reason", None)
        if not isinstance(nxt, BaseException):
            break
        e = nxt
    return str(getattr(e, "reason", None) or e)[:200]
