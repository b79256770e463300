"""The built-in meter simulator as a source: ``teleinfo run --simulate`` needs no hardware and no server.

Bytes arrive exactly as a real meter would deliver them, paced at the mode's baud rate, so everything
downstream (decoder, outputs, health, watchdog) runs as it would on a Pi.
"""

from __future__ import annotations

import threading
from datetime import datetime

from appliance.simulator import PARIS, ErrorInjector, MeterSimulator, SimulatedStream
from appliance.sources.simulator.config import SimulatorConfig
from appliance.stats import Stats

__all__ = ["SimulatedSource"]

READ_TIMEOUT = 0.25  # the service loop looks at its flags (stop, reload, watchdog) at least this often


class SimulatedSource:
    """A :class:`~appliance.service.Source` backed by :class:`~appliance.simulator.SimulatedStream`."""

    def __init__(self, cfg: SimulatorConfig, stats: Stats, stop: threading.Event) -> None:
        self._stats = stats
        self._service_stop = stop
        sim = MeterSimulator(
            start=datetime.now(PARIS).replace(microsecond=0),
            mode=cfg.mode,
            phases=cfg.phases,
            contract=cfg.contract,
            producer=cfg.producer,
            seed=cfg.seed,
        )
        injector = ErrorInjector(cfg.errors, seed=cfg.seed) if cfg.errors else None
        # Its own stop event: closing this source on a reload must not stop the service.
        self._stream = SimulatedStream(sim, injector=injector, stop=threading.Event())
        detail = f"simulator {cfg.mode} {cfg.phases}-phase {cfg.contract} at {sim.baudrate} Bd"
        stats.source(state="open", detail=detail, mode=cfg.mode)

    def read(self) -> bytes:
        if self._service_stop.is_set():
            return b""
        data = self._stream.read(READ_TIMEOUT)
        if data:
            self._stats.source(nbytes=len(data))
        return data

    def frame_ok(self, mode: str) -> None:
        """Nothing to lock: the simulator's mode is configured."""

    def frame_bad(self) -> None:
        """The simulator has no port to reopen; injected errors are counted by the decoder."""

    def close(self) -> None:
        self._stream.close()
        self._stats.source(state="closed")
