"""Secrets out of everything people and strangers can read: the one redaction helper.

Configured secrets are :class:`appliance.config.Secret` objects and never print themselves; but a user may also
write credentials *inside a URL* (``http://user:pass@influx:8086``, ``...?token=...``), and URLs travel into
error messages, counters and log lines.  :func:`redact` removes them from any text; :func:`redact_url` shows a
URL without its credentials nor its query; :func:`redact_tree` applies :func:`redact` to every string of a JSON
document (``GET /status``, the control socket's ``status``); :class:`RedactingFilter` does it to every log
record, on every handler the appliance installs.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

from appliance.textsafe import printable

__all__ = ["RedactingFilter", "redact", "redact_tree", "redact_url"]

#: ``scheme://userinfo@``: everything between ``//`` and ``@`` within one URL (no space, slash or another @).
_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@?#]+@")
#: A secret-looking query or form parameter: ``token=...``, ``password=...``, ``api_key=...``.
_PARAM: Final = re.compile(
    r"(?i)([?&](?:[a-z0-9_\-]*(?:token|passw(?:or)?d|pwd|secret|api[_\-]?key|auth|key|signature)[a-z0-9_\-]*)=)"
    r"[^&#\s\"']+"
)


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    >>> redact("InfluxDB http://admin:hunter2@db:8086/api?org=x&token=abc unreachable")
    'InfluxDB http://***@db:8086/api?org=x&token=*** unreachable'
    """
    if "://" not in text and "=" not in text:
        return text
    return _PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_url(url: str) -> str:
    """``url`` without its user name, password and query (where tokens usually hide): what a URL shows in a
    message.

    >>> redact_url("https://u:p@updates.example/stable.json?key=1")
    'https://***@updates.example/stable.json?***'
    """
    from urllib.parse import urlsplit, urlunsplit  # here: with ipaddress, 0.5 MiB the plain MQTT service never needs

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid URL>"
    netloc = f"***@{host}" if (parts.username or parts.password) else host
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def redact_tree(value: Any) -> Any:
    """A copy of a JSON-ready document with :func:`redact` applied to every string (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message (and its traceback's text) with :func:`redact` applied, and any
    character that could drive a terminal escaped (a peer's words often end up in a message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself
            return True
        clean = "\n".join(printable(line) for line in redact(message).split("\n"))
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
