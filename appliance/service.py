"""The service: wires a source, the reader and the outputs together, and talks to systemd.  Wiring only.

The main thread is the reader: it reads bytes (each read returns within ~0.75 s), journals them, has
:class:`~appliance.reader.FrameReader` decode and account for them, and hands every frame to the fan-out, whose
per-output queues and threads keep slow outputs away from it. Signals only set flags that the loop looks at
between reads, and SIGHUP reloads the configuration between two reads, keeping the old one if the new is invalid.

SIGTERM stops within 5 s whatever hangs: after the source, every part that may wait (the outputs draining to
their servers, the journal's last write, the self-checks) is asked to stop at once and waited for against one
deadline (:data:`STOP_TIMEOUT`), not one after the other; what cannot finish is abandoned (outputs keep what they
have not delivered in their spools: written ahead), and the last log line says what was kept on disk.

The systemd watchdog is pinged only while this loop makes progress (a read returned, decoding done, every output
thread alive); a silent meter is not a hang: it is reported by the health state, not by a restart.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from appliance.config import ConfigError
from appliance.control import ControlServer
from appliance.health import HealthServer, summary
from appliance.logs import setup_logging
from appliance.outputs import enabled_outputs
from appliance.outputs.base import Fanout, OutputWorker
from appliance.outputs.spool import Spool
from appliance.reader import FrameReader
from appliance.records import CHECK, HEALTH
from appliance.schema import Config
from appliance.sources import Source, build_source
from appliance.stats import Stats
from appliance.systemd import Notifier
from appliance.tic import Frame
from appliance.update.reboot import UpdateReporter, start_reporter

if TYPE_CHECKING:
    from appliance.checks.scheduler import CheckScheduler
    from appliance.console import LiveView
    from appliance.gpio import GpioController
    from appliance.journal import Journal
    from appliance.metrics import HealthSampler
    from appliance.records import Record
    from appliance.tariff.feed import TariffFeed
    from appliance.web.feed import LiveFeed
    from appliance.web.server import WebServer

__all__ = ["Service", "Source", "build_source", "build_workers"]

_LOG = logging.getLogger(__name__)
STOP_TIMEOUT = 3.5  # seconds from the source's close to the sockets' (systemd waits 15 s; we promise 5 in all)
DRAIN_S = 2.5  # of which the outputs keep delivering what they hold, if their servers answer
# Seconds the reader pauses after waking output threads for a frame, before its own per-frame work.  An output
# thread that has to wait for the interpreter while the reader updates the tariff, the page and the control
# clients (a few hundred microseconds on a cold cache) adds that to the frame's latency, and MQTT takes two hops
# (the worker, then paho's network thread); sleep(0) only lets the first one in.  0.5 ms covers both hops on the
# bench's machine (ETX -> MQTT p50 1.31 -> 1.15 ms); it costs one timer wake-up per frame, and never waits on an
# output: a slow one simply competes with the reader after it, as before.
OUTPUT_HEAD_START = 0.0005


def runtime_directory() -> Path | None:
    """systemd's ``RuntimeDirectory`` (``$RUNTIME_DIRECTORY``: ``/run/teleinfo``, a RAM file system), if any."""
    value = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(value) if value else None


def build_workers(cfg: Config, stats: Stats) -> list[OutputWorker]:
    """A worker for every enabled output (:data:`appliance.outputs.OUTPUTS`); spools under the state directory,
    the segment a healthy output writes ahead in systemd's runtime directory when there is one (RAM: the SD card
    sees nothing while outputs keep up; :mod:`appliance.outputs.spool`)."""
    workers: list[OutputWorker] = []
    spools = Path(cfg.state.directory) / "spool"
    runtime = runtime_directory()
    from appliance.metrics import BACKLOG_LINES

    lanes = {CHECK: cfg.checks.backlog, HEALTH: BACKLOG_LINES}
    for plugin, settings in enabled_outputs(cfg):
        o = plugin.options(settings)
        spool = None
        if o.spool_max_bytes is not None:
            hot = runtime / "spool" / plugin.name if runtime is not None else None
            spool = Spool(spools / plugin.name, max_bytes=o.spool_max_bytes, hot=hot)
        output = plugin.build(settings)
        sizes = {**lanes, **o.lane_sizes}
        workers.append(
            OutputWorker(output, stats, queue_size=o.queue_size, spool=spool, batch_size=o.batch_size, lane_sizes=sizes)
        )
    return workers


def simulated(cfg: Config) -> Config:
    """``--simulate``: the built-in meter, and multicast kept on loopback unless an interface was configured.

    The demo must never put a packet on a real interface nor listen on one (the README's main command runs it on
    any machine), so the health and control sockets and the live page are bound to loopback too.
    """
    m = cfg.outputs.multicast
    outputs = replace(cfg.outputs, multicast=replace(m, interface=m.interface or "127.0.0.1"))
    return replace(
        cfg,
        source=replace(cfg.source, kind="simulator"),
        outputs=outputs,
        health=replace(cfg.health, bind="127.0.0.1"),
        control=replace(cfg.control, bind="127.0.0.1"),
        web=replace(cfg.web, bind="127.0.0.1"),
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
        self.reader: FrameReader | None = None
        self.fanout: Fanout | None = None
        self.health: HealthServer | None = None
        self.control: ControlServer | None = None
        self.web: WebServer | None = None
        self.live: LiveFeed | None = None  # what the live page shows (appliance.web.feed); kept across reloads
        self.checks: CheckScheduler | None = None
        self.gpio: GpioController | None = None
        self.sampler: HealthSampler | None = None  # the appliance's counters, as records (appliance.metrics)
        self.journal: Journal | None = None
        self.tariff: TariffFeed | None = None  # energy and costs per period (appliance.tariff.feed)
        self.updates: UpdateReporter | None = None  # the running release and pending reboots (appliance.update)

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
            from appliance.metrics import HealthSampler

            self.sampler = HealthSampler(self.stats, self.publish, influx.health_interval)
            self.sampler.start()

    def publish(self, record: Record) -> None:
        """Hand a record (a check run, a health sample...) to the outputs that take its kind (any thread)."""
        fanout = self.fanout
        if fanout is not None:
            fanout.publish(record)

    def _start_servers(self) -> None:
        """The health and control sockets and the live page; a port already in use is a startup error (raised)."""
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
        if self.cfg.web.enabled:
            from zoneinfo import ZoneInfo

            from appliance.web.feed import LiveFeed
            from appliance.web.server import WebServer

            if self.live is None:
                self.live = LiveFeed(ZoneInfo(self.cfg.tariff.timezone), self.tariff)
            self.web = WebServer(self.cfg.web, self.live, self.stats, self.cfg.health)
            self.web.start()
        else:
            self.live = None  # disabled: its history too
            self.stats.remove_extra("web")

    def _stop_servers(self, timeout: float) -> None:
        for server in (self.web, self.control, self.health):
            if server is not None:
                server.stop(timeout)
        self.health = self.control = self.web = None

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

        self.checks = CheckScheduler(self.cfg, self.stats, self.publish)
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
        self.stats.remove_extra("journal")  # a reload may have disabled it: no stale state in health
        if self.cfg.journal.enabled:
            from appliance.journal import Journal, journal_directory

            directory = journal_directory(self.cfg.journal, self.cfg.state.directory)
            journal = Journal(self.cfg.journal, directory, self.cfg.source.mode, self.stats)
            try:
                journal.start()
            except OSError as e:  # the meter's data still flows to the outputs: an error, not a stop
                _LOG.error("journal disabled: cannot create %s: %s", directory, e)
                self.stats.set_extra("journal", {"directory": str(directory), "last_error": str(e)})  # health
                return
            self.journal = journal

    def _stop_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _start_tariff(self) -> None:
        """The cost engine on ``<state.directory>/tariff.json``; on the simulator in memory only, and without the
        wait for a synchronised clock: the simulated meter's ledger is not a household's, and it is its own clock."""
        cfg = self.cfg
        if not cfg.tariff.enabled:
            self.stats.remove_extra("tariff")
            return
        # Imported only when enabled: the engine, its store and the time zones are memory a Pi keeps for months.
        from zoneinfo import ZoneInfo

        from appliance.clock import ClockGate
        from appliance.tariff.feed import STATE_FILE, TariffFeed

        simulator = cfg.source.kind == "simulator"
        path = None if simulator else Path(cfg.state.directory) / STATE_FILE
        gate = ClockGate(require_sync=cfg.tariff.wait_for_clock_sync and not simulator)
        self.tariff = TariffFeed(cfg.tariff, path, self.publish, gate=gate, stats=self.stats)
        if self.live is not None:
            self.live.tz = ZoneInfo(cfg.tariff.timezone)
            self.live.attach(self.tariff)

    def _stop_tariff(self) -> None:
        """The last save of the ledger (a clean stop, or a reload that changes it)."""
        if self.tariff is not None:
            self.tariff.close()
            self.tariff = None
        if self.live is not None:
            self.live.attach(None)

    def _stop_outputs(self, timeout: float) -> None:
        if self.sampler is not None:
            self.sampler.stop(min(timeout, 1.0))
            self.sampler = None
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
        self._start_tariff()
        self._start_checks()
        self._start_journal()
        # /status and MQTT: the running version and release, the last update, pending reboots (appliance.update)
        updates = self.updates = start_reporter(self.stats, self.publish)
        self._open_source()
        # Everything start-up made (modules, configuration, servers) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it, so none pauses the reader for long.
        gc.freeze()
        assert self.source is not None
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
            updates.stop()
            self.updates = None
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        """Stop every part against one deadline; the sockets last, so health answers while stopping."""
        start = time.monotonic()
        deadline = start + STOP_TIMEOUT
        assert self.source is not None
        self.source.close()
        self._stop_gpio()
        fanout, journal = self.fanout, self.journal
        if journal is not None:
            journal.request_close()  # its last write, in parallel with the outputs' drain
        if fanout is not None:
            fanout.request_stop(start + DRAIN_S)
        self._stop_checks()
        self._stop_tariff()  # the ledger saved (one small file) while the outputs drain
        if self.sampler is not None:
            self.sampler.stop(0.2)
            self.sampler = None
        if journal is not None:
            journal.close(max(0.1, deadline - 0.6 - time.monotonic()))
        if fanout is not None:
            fanout.stop(max(0.1, deadline - time.monotonic()))
        self.fanout = self.journal = None
        self._stop_servers(0.5)
        kept = self._kept(fanout, journal)
        _LOG.info("stopped: %s; kept on disk: %s (stop took %.1f s)", self.summary(), kept, time.monotonic() - start)

    @staticmethod
    def _kept(fanout: Fanout | None, journal: Journal | None) -> str:
        """What waits on disk for the next start (the spools), and the journal's state, in words."""
        parts = [
            f"{w.kept} frame{'s' if w.kept != 1 else ''} in the {w.name} spool"
            for w in (fanout.workers if fanout is not None else [])
            if w.output.durable
        ]
        if journal is not None:
            lost = journal.unwritten
            parts.append(f"journal: {lost} chunks not written (logged)" if lost else "journal: everything written")
        return ", ".join(parts) or "nothing (no spool, no journal)"

    def _open_source(self) -> None:
        """The configured source, and a fresh reader (decoder, known meter, reject counts) for its bytes."""
        self.source = build_source(self.cfg, self.stats, self._stop)
        self.reader = FrameReader(self.source, self.cfg.source.mode, self.stats)

    def _handle(self, data: bytes) -> None:
        now = self._clock()
        if self.journal is not None:
            self.journal.append(data, now)
        assert self.reader is not None
        for frame in self.reader.feed(data, now):
            if frame.meter is not None and self.fanout is not None and self.fanout.submit(frame):
                # The output threads just woken get the interpreter to themselves for a moment: the frame goes out
                # now, and the reader's own per-frame work (tariff, page, control) follows, rather than the workers
                # (and paho's network thread after the MQTT worker) waiting for it to finish.
                time.sleep(OUTPUT_HEAD_START)
            if self.tariff is not None:
                self.tariff.on_frame(frame)
            if self.web is not None and self.live is not None:
                self.live.on_frame(frame)
            if self.control is not None:
                self.control.on_frame(frame)
            for fn in self._frame_listeners:
                fn(frame)
            if self._view is not None:
                self._view.update(frame)

    def _healthy(self) -> bool:
        return self.fanout is None or all(w._thread.is_alive() for w in self.fanout.workers)

    def summary(self) -> str:
        """The one-line state (systemd's status text): :func:`appliance.health.summary`."""
        return summary(self.stats.snapshot())

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
            if self.updates is not None:  # the new outputs hold nothing yet
                self.updates.publish_again()
            assert self.fanout is not None
            for name in before - {w.name for w in self.fanout.workers}:
                self.stats.remove_output(name)
        if new.gpio != old.gpio:  # the control socket restarts too: its gpio commands name the new outputs
            self._stop_gpio()
            self._start_gpio()
        if (new.health, new.control, new.gpio, new.web) != (old.health, old.control, old.gpio, old.web):
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
            self._open_source()
        if (new.tariff, new.state, new.source.kind) != (old.tariff, old.state, old.source.kind):
            self._stop_tariff()  # saved, then read back by the new one: the ledger goes on under the new prices
            self._start_tariff()
        if (new.journal, new.source, new.state) != (old.journal, old.source, old.state):
            self._stop_journal()  # a new decoder or directory: a new journal session, so replay starts afresh too
            self._start_journal()
        _LOG.info("configuration reloaded")
        self._notifier.ready()
