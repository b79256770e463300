"""InfluxDB: every frame as one point, written through ``/api/v2/write`` (``docs/DATA_FORMAT.md`` §2).

``/api/v2/write`` is what InfluxDB 1.8+, 2.x and 3.x and VictoriaMetrics all accept, so one code path serves
them all; dashboards read the data back with InfluxQL, which all of them answer too.  Points carry whole-second
timestamps (the meter's DATE when sane, else the reception time: :func:`appliance.lineproto.frame_time`) and
are written with ``precision=s``.

Division of labour.  The :class:`~appliance.outputs.base.OutputWorker` owns the queue, the on-disk spool, the
ordered replay in batches (``batch_size``) and the capped exponential backoff.  So every write is one request of
the client's ``WriteService`` that succeeds or raises here: influxdb-client's write API would, in batching mode,
hide failures in a background thread (errors only reach callbacks), retry on its own schedule, and wait up to
``max_close_wait`` (5 minutes by default) in ``close()`` for a dead server.  urllib3 retries are off too
(``retries=False``): one attempt per write, the worker decides what happens next.

What a failed write does (the worker's spool keeps every frame that is retried, in order):

============================================  ==================================================================
connection refused / reset, DNS, TLS,          :class:`InfluxError` -> retried from the spool with backoff
timeout, 5xx, 429
401 / 403 (token), 404 (bucket, org, or a      :class:`InfluxError` -> retried: the user can fix the token or
server without ``/api/v2/write``)              create the bucket, and nothing is lost meanwhile
400 / 422 (bad line, field type conflict),     the batch is split in halves until the refused frames are
413 (too large)                                isolated; those are dropped, logged (rate-limited) and counted as
                                               failed (:class:`~appliance.outputs.base.Rejected`), the others
                                               are delivered.  Retrying data the server refuses can never
                                               succeed and would block the pipeline forever.
============================================  ==================================================================

Re-sending the good half of a refused batch can write a point twice; InfluxDB keeps one point per series and
timestamp, so this is not a duplicate there.

Credentials: ``token`` is sent as ``Authorization: Token <token>`` (InfluxDB 2.x/3.x tokens, and InfluxDB
1.8's ``user:password`` form).  A token of the form ``user:password`` is sent as HTTP Basic instead, which
InfluxDB 1.8 accepts too and which is the only scheme VictoriaMetrics (``-httpAuth.*``) and reverse proxies with
basic authentication understand; InfluxDB 2.x and 3.x tokens never contain a colon.

Time bounds: a connection attempt gives up after ``min(timeout, 2 s)``, a write after ``timeout`` seconds
without an answer; :meth:`InfluxOutput.close` only drops pooled sockets and returns at once.

One write in doubt at a time.  A server that accepts a request and does not answer (a hung process, a stalled
disk) may still execute it later: victoria-metrics, SIGSTOPped for a minute, executed every retry it had been
sent once resumed, and kept each copy (it does not deduplicate by default).  So a write that got no answer within
``timeout`` is not abandoned: its request stays open (up to :data:`PENDING_MAX`) and the output sends nothing
else until it is settled.  The next call waits for it (``timeout`` again); once it is answered, the frames it
carried count as delivered if the server took them (they lead the next batch, which is the same spooled frames
plus newer ones) and are not sent again.  Only when the server answers ``/ping`` but still not that write after
another ``timeout`` is it given up and resent, the one case where a batch can be stored twice (besides a stop or
a crash while a write is in doubt).  :meth:`InfluxOutput.probe` is the cheap ``/ping`` the worker uses to notice
that a server is back before its backoff ends.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.checks.results import to_lines
from appliance.errors import ApplianceError, error_reason
from appliance.lineproto import frame_to_lines
from appliance.metrics import sample_lines
from appliance.outputs.base import PartialDelivery, Rejected
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.records import CHECK, HEALTH, TARIFF, CheckRun, HealthSample, Record, TariffRecord
from appliance.tariff.lines import tariff_lines
from appliance.tic import Frame

__all__ = [
    "CONNECT_TIMEOUT",
    "PENDING_MAX",
    "PROBE_TIMEOUT",
    "InfluxError",
    "InfluxOutput",
    "frame_lines",
    "make_client",
]

_LOG = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 2.0  # seconds: a host that does not answer SYN is down; no need to wait the full timeout
MAX_LINE: Final = 64 * 1024  # one line per frame over HTTP (no datagram limit); every parser accepts 64 kB lines
REJECT_LOG_INTERVAL: Final = 60.0  # at most one log line a minute about refused frames (the count is in stats)
PENDING_MAX: Final = 600.0  # seconds a write without an answer is kept open, waiting for the server to execute it
PROBE_TIMEOUT: Final = 1.0  # seconds /ping may take when the output checks whether the server is back
_DATA_REJECTED: Final = frozenset({400, 413, 422})


def frame_lines(frame: Frame, measurement: str = "teleinfo") -> list[str]:
    """The line protocol this output writes for ``frame``: one line, whole seconds (``precision=s``)."""
    return frame_to_lines(frame, measurement, "s", max_line=MAX_LINE)


def make_client(cfg: InfluxConfig) -> Any:
    """An influxdb-client set up the one way this project writes to InfluxDB (no network traffic yet).

    One attempt per request (``retries=False``: the caller decides what happens next), a connection attempt bounded
    by ``min(timeout, 2 s)``, a ``user:password`` token sent as HTTP Basic; the self-checks and the health counters
    write through the same settings as the frames.
    """
    from influxdb_client.client.influxdb_client import InfluxDBClient

    from appliance.outputs.influxdb.bounded import bound_replies

    token = cfg.token.get() if cfg.token is not None else ""
    timeout_ms = int(cfg.timeout * 1000)
    kwargs: dict[str, Any] = {"verify_ssl": cfg.verify_tls, "retries": False, "auth_basic": ":" in token}
    if cfg.ca_file:
        kwargs["ssl_ca_cert"] = cfg.ca_file
    return bound_replies(  # a reply's body is read up to 64 kB, whatever the server sends
        InfluxDBClient(
            url=cfg.url.rstrip("/"),
            token=token,  # "" sends no Authorization header, like None: the client only tests its truth
            org=cfg.org or "-",  # InfluxDB 1.8 and 3.x ignore org, but the client insists on one
            timeout=(min(timeout_ms, int(CONNECT_TIMEOUT * 1000)), timeout_ms),
            debug=False,
            **kwargs,
        )
    )


class InfluxError(ApplianceError):
    """A write or ping failed for a reason that may go away (server down, token, bucket): retry later.

    ``status`` is the HTTP status when the server answered, else None; ``reason`` the short cause.
    """

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class _Write:
    """One POST running in a thread of its own: the bodies it carries and, once ``done``, its outcome."""

    bodies: list[bytes | None]
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None  # InfluxError or _DataRejected; None once done: the server took it


class _DataRejected(ApplianceError):
    """The server refused the data itself (400/413/422); internal to the bisection."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _reason(exc: BaseException, timeout: float) -> str:
    """A short human reason for a transport error, from the chain urllib3 wraps it in."""
    import urllib3.exceptions as u3

    # urllib3 2.x makes NewConnectionError (refused, unreachable...) a subclass of ConnectTimeoutError for
    # compatibility: only a real connect timeout is worded as one; the rest is the one reason helper's.
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, u3.ConnectTimeoutError) and not isinstance(e, u3.NewConnectionError):
            return f"no connection within {min(timeout, CONNECT_TIMEOUT):g} s"
        nxt = getattr(e, "reason", None)
        e = nxt if isinstance(nxt, BaseException) and nxt is not e else None
    return error_reason(exc, timeout)


def _body_message(exc: Any) -> str:
    """The server's own explanation (JSON ``message`` or plain text), on one short line."""
    msg = getattr(exc, "message", None) or getattr(exc, "body", None) or ""
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    msg = " ".join(str(msg).split())
    return msg[:300]


class InfluxOutput:
    """Writes frames to InfluxDB (or VictoriaMetrics) through ``/api/v2/write``; see the module docstring."""

    name = "influxdb"
    durable = True
    # Self-check results (section 5), the appliance's counters (section 6), the tariff record (section 7).
    accepts = frozenset({CHECK, HEALTH, TARIFF})

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        self.rejected = 0  # frames the server refused for their content (dropped, never retried)
        self._client: Any = None
        self._precision: Any = None
        self._pending: _Write | None = None  # the write in doubt: sent, not answered within timeout
        self._taken: list[bytes | None] | None = None  # bodies of a write in doubt that the server took later
        self._rejected_unlogged = 0
        self._insecure_logged = False
        self._last_reject_log = -REJECT_LOG_INTERVAL

    # --- lifecycle -----------------------------------------------------------------------------------------
    def _connect(self) -> None:
        """Create the client (no network traffic)."""
        from influxdb_client.domain.write_precision import WritePrecision

        if not self.cfg.verify_tls and self.url.startswith("https://"):
            self._quiet_insecure()
        self._client = make_client(self.cfg)
        self._precision = WritePrecision.S

    def _quiet_insecure(self) -> None:
        """``verify_tls = false``: say it once, instead of urllib3's warning on every request to this host."""
        import warnings

        from urllib3.exceptions import InsecureRequestWarning

        host = urllib.parse.urlsplit(self.url).hostname or ""
        warnings.filterwarnings("ignore", f".*host '{re.escape(host)}'", InsecureRequestWarning)
        if not self._insecure_logged:
            self._insecure_logged = True
            _LOG.warning("InfluxDB %s: the server's TLS certificate is not verified (verify_tls = false)", self.url)

    def counters(self) -> dict[str, int]:
        """Counts the worker shows in /status: frames the server refused for their content."""
        return {"rejected": self.rejected}

    def open(self) -> None:
        """Check the server answers ``/ping`` (quickly: ``min(timeout, 2 s)`` to connect); raise a clear error."""
        if self._client is None:
            self._connect()
        from influxdb_client.service.ping_service import PingService

        try:
            # the generated service has no annotations; the client's own ping() would swallow the HTTP status
            PingService(self._client.api_client).get_ping()  # type: ignore[no-untyped-call]
        except Exception as e:
            status = getattr(e, "status", None)
            self.close()
            if isinstance(status, int) and status:
                raise self._http_error(e, status) from None
            why = _reason(e, self.cfg.timeout)
            raise InfluxError(f"InfluxDB {self.url} unreachable: {why}", reason=why) from None

    def probe(self) -> bool:
        """Whether the server answers ``/ping`` now (any HTTP status), within :data:`PROBE_TIMEOUT`; never raises.

        The worker asks while it backs off, so that the first write follows the server's return within about a
        second instead of waiting for the end of the backoff (up to 30 s)."""
        return self._answers_ping(PROBE_TIMEOUT)

    def _answers_ping(self, timeout: float) -> bool:
        from influxdb_client.service.ping_service import PingService

        try:
            if self._client is None:
                self._connect()
            ms = int(timeout * 1000)
            PingService(self._client.api_client).get_ping(_request_timeout=(ms, ms))  # type: ignore[no-untyped-call]
        except Exception as e:
            status = getattr(e, "status", None)
            return isinstance(status, int) and status > 0  # an HTTP error is an answer: the server is there
        return True

    def close(self) -> None:
        """Drop the client and its pooled sockets; never raises, never waits on the server."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.close()  # idle pooled sockets only: a write in doubt keeps its own until it is answered
        except Exception as e:  # pragma: no cover - closing sockets does not fail in practice
            _LOG.debug("influxdb: error while closing: %s", e)

    # --- records (RecordOutput) ---------------------------------------------------------------------------
    def encode(self, record: Record) -> list[str]:
        """Check runs, health samples and tariff records as line protocol, second precision like the frames."""
        if isinstance(record, CheckRun):
            return to_lines(list(record.results))
        if isinstance(record, HealthSample):
            return sample_lines(record)
        if isinstance(record, TariffRecord):
            return tariff_lines(record)
        return []

    def deliver(self, units: Sequence[Any]) -> None:
        """Write lines in one request; refused lines are isolated like refused frames (:class:`Rejected`)."""
        self._write_all([str(u).encode() for u in units], 0, "line(s)")

    # --- writing -------------------------------------------------------------------------------------------
    def send(self, frame: Frame) -> None:
        """Write one frame; raises :class:`InfluxError` (retry) or :class:`Rejected` (dropped, counted)."""
        self.send_batch([frame])

    def send_batch(self, frames: Sequence[Frame]) -> None:
        """Write frames in one request, in order.

        Raises :class:`InfluxError` when nothing was written (the worker retries the whole batch),
        :class:`PartialDelivery` when the bisection of a refused batch was cut short by a retryable error, and
        :class:`Rejected` when every frame was dealt with but some were refused for their content.
        """
        bodies: list[bytes | None] = []
        bad = 0
        for frame in frames:
            try:
                lines = frame_lines(frame, self.cfg.measurement)
            except ValueError as e:  # no usable timestamp: cannot become a point, ever
                bodies.append(None)
                bad += 1
                self._note_rejected(1, f"frame not writable: {e}")
                continue
            bodies.append("\n".join(lines).encode() if lines else b"")
        self._write_all(bodies, bad, "frame(s)")

    def _write_all(self, bodies: list[bytes | None], bad: int, what: str) -> None:
        """:meth:`_write`, then the outcome as the worker expects it: :class:`PartialDelivery` when a retryable
        error cut the bisection short, :class:`Rejected` when some (``bad`` already) were refused."""
        skip = self._settle(bodies)
        done = [skip]
        try:
            bad += self._write(bodies[skip:], done)
        except InfluxError as e:
            if done[0]:
                raise PartialDelivery(done[0], e) from e
            raise
        if bad:
            raise Rejected(bad, f"InfluxDB {self.url} refused {bad} of {len(bodies)} {what}")

    def _settle(self, bodies: list[bytes | None]) -> int:
        """Settle the write in doubt before anything else is sent; how many leading ``bodies`` it delivered.

        Raises :class:`InfluxError` while it stays unanswered and the server does not answer ``/ping`` either
        (still hung, or gone).  A server that answers ``/ping`` but not that write for another ``timeout`` has
        lost it (or will never finish it): it is given up, and its frames are sent again."""
        req = self._pending
        if req is not None:
            timeout = self.cfg.timeout
            if not req.done.wait(timeout):
                age = time.monotonic() - req.started
                if not self._answers_ping(PROBE_TIMEOUT):
                    why = f"no answer within {timeout:g} s"
                    raise InfluxError(
                        f"InfluxDB {self.url} unreachable: {why} (a write sent {age:.0f} s ago is still unanswered: "
                        "nothing else is sent until it is)",
                        reason=why,
                    )
                if not req.done.wait(timeout):
                    _LOG.warning(
                        "InfluxDB %s answers /ping but not a write sent %.0f s ago: sending its %d frame(s) again "
                        "(stored twice if the server still executes it)",
                        self.url,
                        age,
                        len(req.bodies),
                    )
                    self._pending = None
                    return 0
            self._pending = None
            if req.error is None:
                self._taken = req.bodies  # a 4xx/5xx or a reset: not taken, sent again below
        taken = self._taken
        if taken is not None and bodies[: len(taken)] == taken:
            # The same frames lead this batch (the spool resends from where it was): they are in the database.
            # Identical bodies are identical points, so a match can never skip anything the server lacks.
            self._taken = None
            return len(taken)
        return 0

    def _write(self, bodies: list[bytes | None], done: list[int]) -> int:
        """Write ``bodies`` (one per frame; None: not writable, b"": nothing to write); return how many the
        server refused.  ``done[0]`` counts the frames dealt with, so a retryable error part-way is a partial
        delivery."""
        if not any(bodies):
            done[0] += len(bodies)
            return 0
        try:
            self._post(bodies)
        except _DataRejected as e:
            n = sum(1 for b in bodies if b)
            if n == 1:
                self._note_rejected(1, str(e))
                done[0] += len(bodies)
                return 1
            mid = len(bodies) // 2
            return self._write(bodies[:mid], done) + self._write(bodies[mid:], done)
        done[0] += len(bodies)
        return 0

    def _post(self, bodies: list[bytes | None]) -> None:
        """One POST /api/v2/write of ``bodies``, in a thread, waited for ``timeout`` s; raises
        :class:`InfluxError` or :class:`_DataRejected`.  Unanswered, it becomes the write in doubt."""
        if self._client is None:
            self._connect()
        req = _Write(bodies)
        payload = b"\n".join(b for b in bodies if b)
        api = self._client.api_client  # the thread keeps its own reference: close() may drop the client meanwhile
        threading.Thread(target=self._send, args=(api, req, payload), name="influxdb-write", daemon=True).start()
        timeout = self.cfg.timeout
        if not req.done.wait(timeout):
            self._pending = req
            why = f"no answer within {timeout:g} s"
            raise InfluxError(
                f"InfluxDB {self.url} unreachable: {why} (the write stays open: nothing else is sent until it is "
                "answered)",
                reason=why,
            )
        if req.error is not None:
            raise req.error

    def _send(self, api: Any, req: _Write, payload: bytes) -> None:
        """The request itself (in its own thread): connect within ``min(timeout, 2 s)``, then wait up to
        :data:`PENDING_MAX` for the answer, so that a hung server's late answer is still seen."""
        from influxdb_client.service.write_service import WriteService

        connect_ms = int(min(self.cfg.timeout, CONNECT_TIMEOUT) * 1000)
        try:
            # the generated service has no annotations
            WriteService(api).post_write(  # type: ignore[no-untyped-call]
                org=self.cfg.org or "-",
                bucket=self.cfg.bucket,
                body=payload,
                precision=self._precision,
                content_type="text/plain; charset=utf-8",
                _request_timeout=(connect_ms, int(PENDING_MAX * 1000)),
            )
        except Exception as e:
            req.error = self._write_error(e)
        finally:
            req.done.set()

    def _write_error(self, e: BaseException) -> ApplianceError:
        status = getattr(e, "status", None)
        if not (isinstance(status, int) and status):
            resp = getattr(e, "response", None)
            status = getattr(resp, "status", None)
        if isinstance(status, int) and status:
            if status in _DATA_REJECTED:
                return _DataRejected(f"{status} {_status_text(status)}: {_body_message(e)}", status)
            return self._http_error(e, status)
        why = _reason(e, PENDING_MAX)
        return InfluxError(f"InfluxDB {self.url} unreachable: {why}", reason=why)

    def _http_error(self, exc: BaseException, status: int) -> InfluxError:
        detail = _body_message(exc)
        head = f"InfluxDB {self.url}"
        code = f"{status} {_status_text(status)}"
        if status == 401:
            msg = f"{head} rejected the token ({code})"
        elif status == 403:
            msg = f"{head} refused the write ({code}): may this token write to bucket {self.cfg.bucket!r}?"
        elif status == 404:
            msg = (
                f"{head} answered {code} for bucket {self.cfg.bucket!r}: no such bucket or org, or a server "
                "without /api/v2/write (InfluxDB older than 1.8)"
            )
        else:
            msg = f"{head} answered {code}"
        return InfluxError(f"{msg}: {detail}" if detail else msg, status)

    def _note_rejected(self, n: int, reason: str) -> None:
        """Count refused frames; log the first at once and then at most one summary a minute (no flood)."""
        self.rejected += n
        self._rejected_unlogged += n
        now = time.monotonic()
        if now - self._last_reject_log < REJECT_LOG_INTERVAL:
            return
        count, self._rejected_unlogged = self._rejected_unlogged, 0
        self._last_reject_log = now
        _LOG.warning(
            "InfluxDB %s refused %d frame(s) for their content (%s); dropped, not retried (%d in all)",
            self.url,
            count,
            reason,
            self.rejected,
        )


def _status_text(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"
