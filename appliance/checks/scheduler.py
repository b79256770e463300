"""Running the self-checks: once (``teleinfo check``) or periodically inside the service.

Why the service's own scheduler rather than a systemd timer: the latest results belong in the health socket's
status document and ``check now`` belongs on the control socket, both of which live in the service; a timer would
start a second Python process (seconds of CPU on a Pi Zero) that must then hand its results back to the service
through yet another channel, and the public-IP backoff and last address would have to live on disk between runs.

Isolation from the meter pipeline: the scheduler is one thread that only waits and dispatches, and every check
runs in a thread of its own under a hard deadline (``checks.deadline``).  Inside, every blocking step has its own
timeout: nmap is a subprocess killed at its timeout, HTTP requests have socket timeouts and a whole-answer
deadline, paramiko has its connect, banner, authentication, channel and command timeouts.  If a check still
overruns (a bug, a library that ignores its timeout), it is reported as an error and abandoned (the thread is a
daemon, and that check is not started again until it ends); an exception is an error result.  The reader loop,
the outputs and the sockets never wait on a check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from appliance.checks import CHECKS as REGISTRY
from appliance.checks import Check, check_plugin
from appliance.checks.results import ERROR, STATUS_CODES, CheckResult
from appliance.records import CheckRun, Record
from appliance.runtime import stop_thread
from appliance.schema import Config
from appliance.stats import Stats

__all__ = ["CHECKS", "CheckRunner", "CheckScheduler"]

_LOG = logging.getLogger(__name__)
#: Every check's name, in the order they run (the registry: :data:`appliance.checks.CHECKS`).
CHECKS: Final = tuple(p.name for p in REGISTRY)
GRACE: Final = 2.0  # seconds past the deadline before a check is abandoned (its own timeouts end it first)


class CheckRunner:
    """The checks of one configuration, each run in its own thread under a hard deadline."""

    def __init__(self, cfg: Config, *, persist: bool) -> None:
        """``persist``: whether the public IP's last address is written to the state directory (the service),
        or only read (one-shot commands)."""
        self.cfg = cfg
        # Built once: a check keeps state between runs (the public IP's backoff and last address).
        self.checks: dict[str, Check] = {p.name: p.build(cfg, persist) for p in REGISTRY if p.configured(cfg)}
        self._threads: dict[str, threading.Thread] = {}

    def configured(self, name: str) -> bool:
        """Whether ``name`` has something to check (providers, targets, peers)."""
        return name in self.checks

    def _call(self, name: str, deadline: float) -> list[CheckResult]:
        return self.checks[name].run(deadline)

    def run(self, name: str, stop: threading.Event | None = None) -> list[CheckResult]:
        """Run one check; never raises, never takes much longer than ``checks.deadline``.

        When ``stop`` is set meanwhile, returns ``[]`` at once (the service is stopping; the check is abandoned).
        """
        previous = self._threads.get(name)
        if previous is not None and previous.is_alive():
            return [_error(name, "its previous run, abandoned after the deadline, is still running")]
        limit = self.cfg.checks.deadline
        deadline = time.monotonic() + limit
        box: list[list[CheckResult]] = []

        def work() -> None:
            try:
                box.append(self._call(name, deadline))
            except Exception as e:
                _LOG.exception("check %s crashed", name)
                box.append([_error(name, f"crashed: {type(e).__name__}: {e}")])

        thread = threading.Thread(target=work, name=f"check-{name}", daemon=True)
        self._threads[name] = thread
        start = time.monotonic()
        thread.start()
        while thread.is_alive() and time.monotonic() < deadline + GRACE:
            if stop is not None and stop.is_set():
                return []
            thread.join(0.1)
        if thread.is_alive():
            _LOG.error("check %s did not finish within %g s: abandoned", name, limit)
            return [_error(name, f"did not finish within {limit:g} s (abandoned)", time.monotonic() - start)]
        return box[0]

    def run_many(self, names: list[str]) -> list[CheckResult]:
        return [r for name in names for r in self.run(name)]


def _error(name: str, message: str, duration: float = 0.0) -> CheckResult:
    return CheckResult(name, "-", ERROR, message, duration_s=duration)


class CheckScheduler:
    """The periodic checks of the service: each run to the fan-out as a :class:`~appliance.records.CheckRun`
    (InfluxDB, MQTT: the outputs that take ``check`` records), to ``Stats`` (``checks`` in /status), to the log.

    ::

        scheduler = CheckScheduler(cfg, stats, fanout.publish)
        scheduler.start()
        control.register_command("check now", lambda _s, _a: scheduler.check_now())
        scheduler.stop(1.0)
    """

    def __init__(
        self,
        cfg: Config,
        stats: Stats,
        publish: Callable[[Record], None] | None = None,
        *,
        first_delay: float = 10.0,
    ) -> None:
        """``publish`` takes each run (the service's ``Fanout.publish``); ``first_delay``: seconds after start
        before the first checks (the service settles first)."""
        self.cfg = cfg
        self.stats = stats
        self.publish = publish
        self.runner = CheckRunner(cfg, persist=True)
        self._first_delay = first_delay
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._requested = False
        self._running: str | None = None
        self._next: dict[str, float] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._runs = 0
        self._thread: threading.Thread | None = None

    def _interval(self, name: str) -> float:
        return float(check_plugin(name).section(self.cfg).interval)

    def start(self) -> None:
        first = time.monotonic() + self._first_delay
        self._next = {n: first for n in CHECKS if self.runner.configured(n) and self._interval(n) > 0}
        self._publish()
        self._thread = threading.Thread(target=self._loop, name="checks", daemon=True)
        self._thread.start()
        _LOG.info("self-checks scheduled: %s", ", ".join(f"{n} every {self._interval(n):g} s" for n in self._next))

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop; a running check is abandoned.  True when the scheduler thread has ended."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        return stop_thread(self._thread, timeout, "self-check scheduler", _LOG)

    def check_now(self) -> str:
        """Run every configured check as soon as possible (the control socket's ``check now``); returns at once."""
        names = [n for n in CHECKS if self.runner.configured(n)]
        if not names:
            return "error check now: no check is configured (see the [checks] section)"
        with self._lock:
            self._requested = True
            running = self._running
        self._wake.set()
        after = f" after the running {running} check" if running else ""
        return f"ok check now: {', '.join(names)} started{after}; results in status (checks)"

    # --- the thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                requested, self._requested = self._requested, False
            if requested:
                due = [n for n in CHECKS if self.runner.configured(n)]
            else:
                due = [n for n, t in self._next.items() if t <= now]
            if not due:
                wait = min(self._next.values(), default=now + 3600) - now
                self._wake.wait(max(0.05, wait))
                self._wake.clear()
                continue
            for name in due:
                self._run(name)
                if self._stop.is_set():
                    return

    def _run(self, name: str) -> None:
        with self._lock:
            self._running = name
        self._publish()
        results = self.runner.run(name, self._stop)
        with self._lock:
            self._running = None
        if self._stop.is_set():
            return
        if name in self._next:
            self._next[name] = time.monotonic() + self._interval(name)
        self._runs += 1
        worst = max(results, key=lambda r: r.code).status if results else "ok"
        run = CheckRun(name, worst, time.time(), tuple(results))
        self._last[name] = run.to_json()
        for r in results:
            log: Callable[..., None] = _LOG.info if r.status == "ok" else _LOG.warning
            log("check %s %s: %s", r.check, r.status, r.message)
        if self.publish is not None:
            self.publish(run)
        self._publish()

    def _publish(self) -> None:
        now = time.monotonic()
        with self._lock:
            running = self._running
        statuses = [STATUS_CODES[v["status"]] for v in self._last.values()]
        doc: dict[str, Any] = {
            "status": ("ok", "problem", "error")[max(statuses)] if statuses else None,
            "running": running,
            "runs": self._runs,
            "next_in_s": {n: round(max(0.0, t - now), 1) for n, t in self._next.items()},
            "last": dict(self._last),
        }
        self.stats.set_extra("checks", doc)
