"""The tariff engine in the service: what happens to every frame, in the reader's thread.

The service registers :meth:`TariffFeed.on_frame` as a frame listener (after the fan-out got the frame) and
wires nothing else::

    feed = TariffFeed(cfg.tariff, state_dir / "tariff.json", service.publish, stats=stats)
    service.add_frame_listener(feed.on_frame)
    ...
    feed.close()            # at stop and before a reload that changes [tariff]: the last save

Per frame: the clock rule (:class:`~appliance.clock.ClockGate`: nothing is counted before the clock is
plausible, docs/TARIFF.md section 2), then :class:`~appliance.tariff.TariffPublisher` counts it in the
:class:`~appliance.tariff.TariffKeeper` (which saves the state every ``save_interval``) and publishes a
:class:`~appliance.records.TariffRecord` through ``publish`` when one is due.  The ``tariff`` section of ``/status``
says which of these happened (:meth:`TariffFeed.status`), refreshed with every record and every 5 s, not every
frame.

Frames held back while the clock is not plausible lose nothing: the meter's indexes are cumulative, so the first
counted frame brings the whole increase since the last counted one, spread over that interval (the engine's gap
rule).  Without ``path`` (the built-in simulator: its ledger is not a household's) the state lives in memory only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from appliance.clock import ClockGate
from appliance.records import Record, TariffRecord
from appliance.stats import Stats
from appliance.tariff.config import TariffConfig
from appliance.tariff.engine import TariffEngine
from appliance.tariff.publisher import TariffPublisher
from appliance.tariff.store import TariffKeeper
from appliance.tic import Frame

__all__ = ["STATE_FILE", "TariffFeed"]

_LOG = logging.getLogger(__name__)
STATE_FILE: Final = "tariff.json"  # under state.directory
REPORT_S: Final = 5.0  # the /status section is refreshed on every change of state or record, else this often


class TariffFeed:
    """The engine, its state file, its publisher and the clock rule, fed one frame at a time (one thread)."""

    def __init__(
        self,
        cfg: TariffConfig,
        path: Path | None,
        publish: Callable[[Record], None],
        *,
        gate: ClockGate | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.cfg = cfg
        self.path = path
        self.keeper = TariffKeeper(cfg, path) if path is not None else None
        self.engine: TariffEngine = self.keeper.engine if self.keeper is not None else TariffEngine(cfg)
        self.publisher = TariffPublisher(self.keeper if self.keeper is not None else self.engine, publish)
        self.gate = gate if gate is not None else ClockGate(cfg.wait_for_clock_sync)
        self.counted = 0
        self.held = 0  # frames not counted because the clock was not plausible yet
        self.errors = 0  # frames the engine could not count (a bug: logged once)
        self.last_record: TariffRecord | None = None
        self._stats = stats
        self._said_waiting = False
        self._monotonic = time.monotonic
        self._reported_at = float("-inf")
        self._report()

    @property
    def waiting_for_clock(self) -> bool:
        return self.gate.waiting

    def on_frame(self, frame: Frame) -> None:
        """Count ``frame`` (a frame listener: quick, never raises for a frame it cannot use)."""
        t = frame.received_at
        if t is None:
            return
        changed = False
        if not self.gate.plausible(t):
            self.held += 1
            if not self._said_waiting:
                self._said_waiting = changed = True
                why = (
                    "the clock is not synchronised yet"
                    if self.gate.last is False
                    else "nothing tells whether the clock is synchronised (no systemd-timesyncd flag, adjtimex "
                    "refused); with another time service, set tariff.wait_for_clock_sync = false"
                )
                _LOG.warning(
                    "tariff: %s; energy and costs are counted once it is (tariff.wait_for_clock_sync; the meter's "
                    "indexes keep the energy meanwhile)",
                    why,
                )
        else:
            if self._said_waiting:
                self._said_waiting, changed = False, True
                _LOG.info("tariff: the clock is synchronised; counting from now (%d frame(s) held back)", self.held)
            try:
                record = self.publisher.on_frame(frame)
            except Exception:  # a bug in the engine costs the costs, never the meter's data: logged once, counted
                self.errors += 1
                if self.errors == 1:
                    _LOG.exception("tariff: cannot count a frame; the other frames are still tried")
                record, changed = None, True
            else:
                self.counted += 1
            if record is not None:
                self.last_record, changed = record, True
        now = self._monotonic()
        if changed or now - self._reported_at >= REPORT_S:
            self._reported_at = now
            self._report()

    def status(self) -> dict[str, Any]:
        """The ``tariff`` section of ``/status``: what is counted, what waits, the state file, the engine's counters
        (no meter address: the section is shown to anyone who may read the health socket)."""
        engine = self.engine
        live = engine.live
        store = self.keeper.store if self.keeper is not None else None
        if self.gate.waiting:
            state = "waiting_for_clock"
        else:
            state = "counting" if self.counted else "starting"
        return {
            "state": state,
            "frames_counted": self.counted,
            "frames_held": self.held,
            "records": self.publisher.published,
            "errors": self.errors,
            "contract": engine.contract,
            "period": live.period if live is not None else None,
            "state_file": None if self.path is None else str(self.path),
            "saves": None if store is None else store.writes,
            "save_error": None if store is None else store.last_error,
            "counters": asdict(engine.counters),
        }

    def _report(self) -> None:
        if self._stats is not None:
            self._stats.set_extra("tariff", self.status())

    def close(self) -> None:
        """The clean stop: the state saved one last time (nothing to do in memory only)."""
        if self.keeper is not None:
            self.keeper.close()
        self._report()
