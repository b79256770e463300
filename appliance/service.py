"""The service: wires a source, the decoder and the outputs together, and talks to systemd.  Wiring only.

The main thread is the reader: it reads bytes (each read returns within ~0.25 s), decodes them and hands every
frame to the fan-out, whose per-output queues and threads keep slow outputs away from it.  Signals only set
flags that the loop looks at between reads, so SIGTERM stops within a read plus the outputs' drain deadline
(under 5 s), and SIGHUP reloads the configuration between two reads, keeping the old one if the new is invalid.

The systemd watchdog is pinged only while this loop makes progress (a read returned, decoding done, every output
thread alive); a silent meter is not a hang: it is reported by the health state, not by a restart.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from appliance.config import Config, ConfigError
from appliance.console import LiveView
from appliance.control import ControlServer
from appliance.health import HealthServer
from appliance.logs import setup_logging
from appliance.outputs.base import Fanout, OutputWorker
from appliance.outputs.spool import Spool
from appliance.stats import Stats
from appliance.systemd import Notifier
from appliance.tic import Decoder, Frame

if TYPE_CHECKING:
    from appliance.checks.scheduler import CheckScheduler
    from appliance.gpio import GpioController
    from appliance.journal import Journal
    from appliance.metrics import HealthReporter

__all__ = ["Service", "Source", "build_source", "build_workers"]

_LOG = logging.getLogger(__name__)
STOP_TIMEOUT = 4.0  # seconds the outputs get to deliver what they hold on SIGTERM (systemd waits 90 s; we promise 5)


class Source(Protocol):
    """Where the TIC bytes come from: the serial port or the simulator."""

    def read(self) -> bytes: ...
    def frame_ok(self, mode: str) -> None: ...
    def frame_bad(self) -> None: ...
    def close(self) -> None: ...


def build_source(cfg: Config, stats: Stats, stop: threading.Event) -> Source:
    """The configured source (imports only what it needs)."""
    if cfg.source.kind == "simulator":
        from appliance.sources.simulated import SimulatedSource

        return SimulatedSource(cfg.source.simulator, stats, stop)
    from appliance.sources.serial_source import SerialSource

    return SerialSource(cfg.source, stats, stop)


def build_workers(cfg: Config, stats: Stats) -> list[OutputWorker]:
    """A worker for every enabled output; durable ones get their spool under the state directory."""
    workers: list[OutputWorker] = []
    o = cfg.outputs
    spools = Path(cfg.state.directory) / "spool"
    if o.multicast.enabled:
        from appliance.outputs.multicast import MulticastOutput

        workers.append(OutputWorker(MulticastOutput(o.multicast), stats, queue_size=o.multicast.queue_size))
    if o.mqtt.enabled:
        from appliance.outputs.mqtt import MqttOutput

        spool = Spool(spools / "mqtt", max_bytes=int(o.mqtt.spool_max_mb * 1e6))
        workers.append(OutputWorker(MqttOutput(o.mqtt), stats, queue_size=o.mqtt.queue_size, spool=spool))
    if o.influxdb.enabled:
        from appliance.outputs.influx import InfluxOutput

        spool = Spool(spools / "influxdb", max_bytes=int(o.influxdb.spool_max_mb * 1e6))
        workers.append(
            OutputWorker(
                InfluxOutput(o.influxdb),
                stats,
                queue_size=o.influxdb.queue_size,
                spool=spool,
                batch_size=o.influxdb.batch_size,
            )
        )
    return workers


def simulated(cfg: Config) -> Config:
    """``--simulate``: the built-in meter, and multicast kept on loopback unless an interface was configured.

    The demo must never put a packet on a real interface nor listen on one (the README's main command runs it on
    any machine), so the health and control sockets are bound to loopback too.
    """
    m = cfg.outputs.multicast
    outputs = replace(cfg.outputs, multicast=replace(m, interface=m.interface or "127.0.0.1"))
    return replace(
        cfg,
        source=replace(cfg.source, kind="simulator"),
        outputs=outputs,
        health=replace(cfg.health, bind="127.0.0.1"),
        control=replace(cfg.control, bind="127.0.0.1"),
        checks=replace(cfg.checks, enabled=False),  # the demo never scans nor calls a public-IP service
    )


class Service:
    """The long-running appliance."""

    def __init__(
        self,
        cfg: Config,
        *,
        reload: Callable[[], Config] | None = None,
        view: LiveView | None = None,
        notifier: Notifier | None = None,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._clock = clock  # stamps each read: frames and journal chunks get the same reception time
        self.stats = stats or Stats()
        self._reload_config = reload
        self._view = view
        self._notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._reload_requested = False
        self._frame_listeners: list[Callable[[Frame], None]] = []
        self.source: Source | None = None
        self.fanout: Fanout | None = None
        self.decoder = Decoder(cfg.source.mode)
        self._last_rejects: Counter[str] = Counter()  # the decoder's counts already added to stats
        self._reject_epoch = self.decoder.epoch
        self._known_meter: str | None = None
        self.health: HealthServer | None = None
        self.control: ControlServer | None = None
        self.checks: CheckScheduler | None = None
        self.gpio: GpioController | None = None
        self.metrics: HealthReporter | None = None  # the counters to InfluxDB (appliance.metrics)
        self.journal: Journal | None = None

    # --- control -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested = True

    def add_frame_listener(self, fn: Callable[[Frame], None]) -> None:
        """Called in the reader thread for every frame (must be quick: health/control sockets, GPIO)."""
        self._frame_listeners.append(fn)

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            _LOG.info("received %s, stopping", signal.Signals(signum).name)
            self._stop.set()

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def _start_outputs(self) -> None:
        workers = build_workers(self.cfg, self.stats)
        self.fanout = Fanout(workers)
        self.fanout.start()
        _LOG.info("outputs: %s", ", ".join(w.name for w in workers) or "none")
        influx = self.cfg.outputs.influxdb
        if influx.enabled and influx.health_interval > 0:
            from appliance.metrics import HealthReporter

            self.metrics = HealthReporter(influx, self.stats)
            self.metrics.start()

    def _start_servers(self) -> None:
        """The health and control sockets; a port already in use is a startup error (raised)."""
        if self.cfg.health.enabled:
            self.health = HealthServer(self.cfg.health, self.stats)
            self.health.start()
        if self.cfg.control.enabled:
            self.control = ControlServer(
                self.cfg.control, self.stats, reload=self.request_reload, health=self.cfg.health
            )
            self.control.register_command("check now", self._check_now, help="run the network self-checks now")
            if self.gpio is not None:
                self.gpio.register(self.control)
            self.control.start()

    def _stop_servers(self, timeout: float) -> None:
        for server in (self.control, self.health):
            if server is not None:
                server.stop(timeout)
        self.health = self.control = None

    def _start_gpio(self) -> None:
        """The status LED and the relays; with gpio disabled nothing GPIO-related is even imported."""
        if self.cfg.gpio.enabled:
            from appliance import gpio

            self.gpio = gpio.start(self.cfg.gpio, self.stats)
            if self.gpio is not None:
                self.add_frame_listener(self.gpio.on_frame)

    def _stop_gpio(self) -> None:
        """Every output to its safe state (OFF) and the pins released."""
        if self.gpio is not None:
            self._frame_listeners.remove(self.gpio.on_frame)
            self.gpio.close()
            self.gpio = None

    def _start_checks(self) -> None:
        """The self-checks' scheduler thread (appliance.checks.scheduler says why not a systemd timer)."""
        if not self.cfg.checks.enabled:
            self.stats.remove_extra("checks")  # disabled by a reload: the last results would look current
            return
        from appliance.checks.scheduler import CheckScheduler

        self.checks = CheckScheduler(self.cfg, self.stats)
        self.checks.start()

    def _stop_checks(self) -> None:
        if self.checks is not None:
            self.checks.stop(0.5)  # a running check is abandoned, never waited for
            self.checks = None

    def _check_now(self, _session: object, _args: str) -> str:
        checks = self.checks
        if checks is None:
            return "error check now: the self-checks are disabled (checks.enabled = false)"
        return checks.check_now()

    def _start_journal(self) -> None:
        """The raw capture journal (appliance.journal): its own thread writes, the reader only appends."""
        if self.cfg.journal.enabled:
            from appliance.journal import Journal, journal_directory

            directory = journal_directory(self.cfg.journal, self.cfg.state.directory)
            journal = Journal(self.cfg.journal, directory, self.cfg.source.mode, self.stats)
            try:
                journal.start()
            except OSError as e:  # the meter's data still flows to the outputs: an error, not a stop
                _LOG.error("journal disabled: cannot create %s: %s", directory, e)
                return
            self.journal = journal

    def _stop_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _stop_outputs(self, timeout: float) -> None:
        if self.metrics is not None:
            self.metrics.stop(timeout)
            self.metrics = None
        if self.fanout is not None:
            self.fanout.stop(timeout)
            self.fanout = None

    def run(self) -> int:
        """Run until stopped; returns the exit status."""
        self._start_gpio()
        try:
            self._start_servers()
        except OSError as e:
            _LOG.error("cannot open a listening socket: %s", e)
            self._stop_servers(1.0)
            self._stop_gpio()
            return 1
        self._start_outputs()
        self._start_checks()
        self._start_journal()
        self.source = build_source(self.cfg, self.stats, self._stop)
        # Started means started: the sockets answer and the outputs run, whether or not the meter is there (a
        # missing adapter is a "down" health state with its reason, never a start timeout nor a restart loop).
        self._notifier.ready()
        last_ping = 0.0
        last_status = 0.0
        try:
            while not self._stop.is_set():
                data = self.source.read()
                if data:
                    self._handle(data)
                now = time.monotonic()
                interval = self._notifier.watchdog_interval
                if interval is not None and now - last_ping >= interval and self._healthy():
                    self._notifier.watchdog()
                    last_ping = now
                if now - last_status >= 2.0:
                    last_status = now
                    self._notifier.status(self.summary())
                    if self._view is not None:
                        self._view.tick()
                if self._reload_requested:
                    self._reload()
        finally:
            self._notifier.stopping()
            self.source.close()
            self._stop_gpio()
            self._stop_checks()
            self._stop_journal()
            self._stop_outputs(STOP_TIMEOUT)
            self._stop_servers(0.5)
            _LOG.info("stopped: %s", self.summary())
        return 0

    def _handle(self, data: bytes) -> None:
        now = self._clock()
        if self.journal is not None:
            self.journal.append(data, now)
        assert self.source is not None
        for frame in self.decoder.feed(data):
            frame.received_at = now
            if frame.meter is None:
                frame.known_meter = self._known_meter
            elif frame.meter != self._known_meter:
                self._known_meter = frame.meter
                self.stats.set_extra("meter", frame.meter)  # shown by health answers only if expose_meter
            good = len(frame.values) + len(frame.timestamps)
            if good and good >= len(frame.invalid):
                self.source.frame_ok(frame.mode)
            else:
                self.source.frame_bad()
            self.stats.frame(good)
            if frame.meter is not None and self.fanout is not None:
                self.fanout.submit(frame)
            if self.control is not None:
                self.control.on_frame(frame)
            for fn in self._frame_listeners:
                fn(frame)
            if self._view is not None:
                self._view.update(frame)
        epoch = self.decoder.epoch
        if epoch == self._reject_epoch:
            return
        self._reject_epoch = epoch
        rejects = self.decoder.rejects
        delta = rejects - self._last_rejects
        if delta:
            self.stats.rejected(delta)
        self._last_rejects = rejects

    def _healthy(self) -> bool:
        return self.fanout is None or all(w._thread.is_alive() for w in self.fanout.workers)

    def summary(self) -> str:
        s = self.stats.snapshot()
        outs = ", ".join(f"{n} {o['state']}" for n, o in s["outputs"].items()) or "no outputs"
        age = s["last_frame_age_s"]
        return (
            f"{s['source']['state']} {s['source']['mode'] or ''}".strip()
            + f"; {s['frames']} frames, {sum(s['rejects'].values())} rejected"
            + ("" if age is None else f", last {age:.0f} s ago")
            + f"; {outs}"
        )

    def _reload(self) -> None:
        self._reload_requested = False
        if self._reload_config is None:
            return
        self._notifier.reloading(time.monotonic_ns() // 1000)
        try:
            new = self._reload_config()
        except ConfigError as e:
            _LOG.error("reload refused, keeping the running configuration: %s", e)
            self._notifier.ready()
            return
        old = self.cfg
        self.cfg = new
        setup_logging(new.logging.level)
        if new.outputs != old.outputs:
            before = {w.name for w in self.fanout.workers} if self.fanout else set()
            self._stop_outputs(2.0)
            self._start_outputs()
            assert self.fanout is not None
            for name in before - {w.name for w in self.fanout.workers}:
                self.stats.remove_output(name)
        if new.gpio != old.gpio:  # the control socket restarts too: its gpio commands name the new outputs
            self._stop_gpio()
            self._start_gpio()
        if (new.health, new.control, new.gpio) != (old.health, old.control, old.gpio):
            self._stop_servers(1.0)
            try:
                self._start_servers()
            except OSError as e:
                _LOG.error("cannot open a listening socket after reload: %s", e)
        if (new.checks, new.outputs, new.state) != (old.checks, old.outputs, old.state):
            self._stop_checks()
            self._start_checks()
        if new.source != old.source:
            assert self.source is not None
            self.source.close()
            self.decoder = Decoder(new.source.mode)
            self._last_rejects = Counter()
            self._reject_epoch = self.decoder.epoch
            self.source = build_source(new, self.stats, self._stop)
        if (new.journal, new.source, new.state) != (old.journal, old.source, old.state):
            self._stop_journal()  # a new decoder or directory: a new journal session, so replay starts afresh too
            self._start_journal()
        _LOG.info("configuration reloaded")
        self._notifier.ready()
