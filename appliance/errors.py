"""The appliance's exception base and the one way to turn any exception into a short reason for people.

Every exception the appliance raises on purpose derives from :class:`ApplianceError`, so a caller that wants
"anything we meant to raise" catches one class, and a bug (``TypeError``, ``KeyError``...) is never mistaken for
a reported problem.  Several also derive from the standard type their callers expect (``MqttError`` is a
``ConnectionError``), as gpiozero does.

:func:`error_reason` is what counters, ``/status`` and one-line log messages show: a single short line, the
innermost network cause when there is one (``connection refused``), never a traceback nor a multi-line server
answer.
"""

from __future__ import annotations

import socket
import ssl
from typing import Final

from appliance.textsafe import printable

__all__ = ["ApplianceError", "error_reason"]

MAX_REASON: Final = 200  # characters: a reason goes into /status and log lines, never a whole server answer


class ApplianceError(Exception):
    """Base of every exception the appliance raises on purpose.

    ``reason`` is the short cause (``connection refused``) when the message itself is longer
    (``InfluxDB http://db:8086 unreachable: connection refused``); :func:`error_reason` prefers it.
    """

    reason: str | None = None


def _status(exc: BaseException) -> int | None:
    """The HTTP status an HTTP client library attached to ``exc`` (influxdb-client, urllib3, requests)."""
    for obj in (exc, getattr(exc, "response", None)):
        for name in ("status", "status_code"):
            status = getattr(obj, name, None)
            if isinstance(status, int) and not isinstance(status, bool) and status:
                return status
    return None


def error_reason(exc: BaseException, timeout: float | None = None) -> str:
    """A short, single-line reason for ``exc``.

    The HTTP status and the server's message when a server answered; else the innermost network cause found by
    following ``reason`` attributes (urllib3) and ``__cause__``/``__context__``; else the first line of the
    message.  ``timeout`` (seconds) is named in timeout reasons when given.

    >>> error_reason(ConnectionRefusedError(111, "Connection refused"))
    'connection refused'
    >>> error_reason(OSError("first line\\nsecond line"))
    'first line'
    """
    return printable(_reason(exc, timeout), MAX_REASON)  # a server's words: never raw to a terminal or a log


def _reason(exc: BaseException, timeout: float | None) -> str:
    if isinstance(exc, ApplianceError) and exc.reason:
        return exc.reason[:MAX_REASON]
    status = _status(exc)
    if status is not None:
        body = " ".join(str(getattr(exc, "message", "") or "").split())[:MAX_REASON]
        return f"HTTP {status}" + (f": {body}" if body else "")
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return f"cannot resolve the host name ({e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, TimeoutError | socket.timeout) or type(e).__name__ in ("ReadTimeoutError", "ReadTimeout"):
            return "timed out" if timeout is None else f"no answer within {timeout:g} s"
        if isinstance(e, ssl.SSLError):
            return f"TLS error ({e})"
        if isinstance(e, OSError) and e.strerror:
            return e.strerror[0].lower() + e.strerror[1:]
        nxt = getattr(e, "reason", None)
        e = nxt if isinstance(nxt, BaseException) else (e.__cause__ or e.__context__)
    return (str(exc).splitlines() or [type(exc).__name__])[0][:MAX_REASON] or type(exc).__name__
