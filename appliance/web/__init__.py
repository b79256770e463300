"""The live page: its static files (package data), its data contract (:mod:`~appliance.web.live`, docs/WEB.md)
and the bounded in-memory power history (:mod:`~appliance.web.history`).  No server here yet: phase 2 serves it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONTENT_TYPES", "static_file", "static_names"]

CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}

# Next to this file, as the wheel installs package data: a plain path, not importlib.resources (which brings
# zipfile, tempfile and random into the service for files that are always on disk: about 240 kB of memory).
_STATIC = Path(__file__).resolve().parent / "static"


def static_names() -> list[str]:
    """The files under ``static/`` (flat: no directory, so no path ever needs resolving)."""
    return sorted(p.name for p in _STATIC.iterdir() if p.is_file())


def static_file(name: str) -> tuple[bytes, str] | None:
    """The bytes and content type of ``static/<name>``, or None for any name that is not one of them."""
    if name not in static_names():
        return None
    kind = name.rsplit(".", 1)[-1]
    data = (_STATIC / name).read_bytes()
    return data, CONTENT_TYPES.get(kind, "application/octet-stream")
