"""The tariff state on disk: one small JSON file, written rarely and atomically.

Why rarely is enough: the meter's indexes are cumulative.  The file holds the ledger *and* the index values it
was counted up to, written together in one atomic replace, so after a power cut the first frame's indexes minus
the saved ones is exactly the energy the ledger lacks: nothing counted twice, nothing lost.  What a power cut
costs is only *where in time* that energy lands: the increase since the last save is spread over the interval
from the saved reading to the first reading after the restart (engine rules), so its split between days is an
estimate when that interval crosses midnight.  Written every ``tariff.save_interval`` seconds (15 minutes by
default: 96 small writes a day, nothing an SD card notices) and at every clean stop, each time only if the state
changed since the last write.

Atomic: the new content goes to ``<file>.tmp``, is flushed and fsync'ed, renamed over the file, and the directory
is fsync'ed, so the file is always either the old state or the new one, never a mix.  A file that cannot be read
back (corrupted, hand-edited, from a future version) is moved aside to ``<file>.bad`` and counting starts afresh:
the ledger is lost, never the service.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.tariff.config import TariffConfig
from appliance.tariff.engine import TariffEngine
from appliance.tariff.meter import MeterReading

__all__ = ["MAX_STATE_BYTES", "TariffKeeper", "TariffStore", "atomic_write"]

log = logging.getLogger(__name__)
MAX_STATE_BYTES = 4 * 1024 * 1024  # 70 days x 11 periods + 36 months is a few tens of kB; refuse anything absurd


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a crash at any instant leaves the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class TariffStore:
    """Reads and writes the state file (``<state.directory>/tariff.json`` in the service)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0
        self.last_error: str | None = None

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None (no file yet, or one that could not be read: moved aside as ``.bad``)."""
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.last_error = f"cannot read {self.path}: {e.strerror or e}"
            log.warning("tariff: %s; counting starts afresh", self.last_error)
            return None
        try:
            if len(raw) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            state = json.loads(raw.decode("utf-8"))
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            self.set_aside(f"unreadable state ({e})")
            return None
        return state

    def set_aside(self, why: str) -> None:
        """Move a bad state file out of the way (kept for a human to look at) and say so once."""
        self.last_error = why
        bad = self.path.with_name(self.path.name + ".bad")
        try:
            os.replace(self.path, bad)
        except OSError:
            pass
        log.warning("tariff: %s in %s, moved to %s; counting starts afresh", why, self.path, bad)

    def save(self, state: Mapping[str, Any]) -> bool:
        """Write ``state`` atomically; False (and ``last_error``) when the disk refused."""
        data = json.dumps({**state, "saved_at": time.time()}, separators=(",", ":")).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data)
        except OSError as e:
            self.last_error = f"cannot write {self.path}: {e.strerror or e}"
            log.warning("tariff: %s", self.last_error)
            return False
        self.writes += 1
        self.last_error = None
        return True


class TariffKeeper:
    """A :class:`TariffEngine` with its state file: restored at start, saved every ``save_interval`` and at stop.

    ``clock`` is monotonic seconds (injectable for tests); the saving schedule never depends on the wall clock,
    which a Pi without a real-time clock may step at boot.
    """

    def __init__(self, cfg: TariffConfig, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = TariffStore(path)
        self.clock = clock
        self.interval = cfg.save_interval
        state = self.store.load()
        try:
            self.engine = TariffEngine(cfg, state)
        except ValueError as e:
            self.store.set_aside(str(e))
            self.engine = TariffEngine(cfg)
        self._saved_at = clock()
        self._saved_state = self.engine.to_state()  # what the file holds (or would: a fresh ledger needs no file)

    def update_frame(self, mode: str, values: Mapping[str, object], meter: str | None, at: datetime) -> MeterReading:
        """Count a frame, and save when the interval has passed."""
        reading = self.engine.update_frame(mode, values, meter, at)
        self.maybe_save()
        return reading

    def maybe_save(self) -> bool:
        """Save if ``save_interval`` seconds have passed since the last save; True when it wrote."""
        if self.clock() - self._saved_at < self.interval:
            return False
        return self.save()

    def save(self) -> bool:
        """Write the state if it changed since the last write (a silent meter costs the SD card nothing)."""
        self._saved_at = self.clock()
        state = self.engine.to_state()
        if state == self._saved_state:
            return True
        if not self.store.save(state):
            return False
        self._saved_state = state
        return True

    def close(self) -> None:
        """The clean stop: the last save."""
        self.save()
