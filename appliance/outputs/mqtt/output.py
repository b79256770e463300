"""MQTT output: each frame's JSON for any subscriber, Home Assistant discovery, availability by last will.

Topics and payloads are the contract of ``docs/DATA_FORMAT.md`` §4; the Home Assistant side (discovery, units,
the index filter) is :mod:`appliance.ha`.

Delivery.  :meth:`MqttOutput.send` returns only once the broker has acknowledged the frame's messages (PUBACK
for QoS 1, PUBCOMP for QoS 2; QoS 0: once written to the socket), or raises, so the :class:`OutputWorker`
spools every frame that did not get through and replays it, in order, when the broker is back: nothing is lost
while the broker is down.  Every wait is bounded (``timeout``, 3 s by default, below the service's 4 s stop
deadline): connecting (name resolution included, which socket timeouts do not cover), each acknowledgement,
closing.  paho's own reconnection is off: a connection that failed or timed out is dropped with everything
paho still queued, and the next send opens a new one, because paho would otherwise resend the old messages
after frames the worker already replays from its spool, out of order.  The only duplicates left are those of
at-least-once delivery (an acknowledgement lost with the connection).

Each connection sets a retained last will ``offline`` on the availability topic, publishes ``online`` there,
subscribes to Home Assistant's birth topic (``<discovery_prefix>/status``) and publishes the discovery of every
meter seen so far and the last update state (the running version, ``<base>/bridge/<client id>/update``), since a
broker restarted without persistence has lost the retained ones.  When HA announces
``online``, discovery is published again.  The password never reaches a log: it lives in a
:class:`~appliance.config.Secret` until handed to paho.

While the worker backs off after a failure it asks :meth:`MqttOutput.probe` every second whether the broker
answers: one MQTT CONNECT with an empty client id and no credentials, on a socket of its own (TLS as configured),
whose answer (a CONNACK, even a refusal, or the broker closing the connection) proves the broker alive; then
DISCONNECT.  A TCP connection alone would not do: the kernel completes it for a hung broker too.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from appliance import ha
from appliance.errors import ApplianceError, error_reason
from appliance.lazy import loaded
from appliance.outputs.base import PartialDelivery
from appliance.outputs.mqtt.client import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion, ReasonCode, mqtt
from appliance.outputs.mqtt.config import MqttConfig
from appliance.records import CHECK, TARIFF, UPDATE, CheckRun, Record, TariffRecord, UpdateState
from appliance.tariff.lines import record_periods
from appliance.tic import Frame

if TYPE_CHECKING:
    import ssl

__all__ = ["PROBE_TIMEOUT", "TIMEOUT", "MqttError", "MqttOutput", "answers_connect"]

_LOG = logging.getLogger(__name__)
TIMEOUT = 3.0  # seconds: connect, each acknowledgement; the service gives outputs 4 s to stop
PROBE_TIMEOUT = 1.0  # seconds a probe waits for the broker's answer to its CONNECT


class MqttError(ApplianceError, ConnectionError):
    """The broker cannot be reached or refused us; the message says why in words a user can act on."""


@dataclass(frozen=True, slots=True)
class _Meter:
    """What was published for one meter; immutable, so a failed batch can go back to the state before it."""

    mode: str
    announced: frozenset[str] = frozenset()
    last_at: float | None = None
    last_values: dict[str, Any] | None = None
    guard: ha.IndexGuard = field(default_factory=ha.IndexGuard)


@dataclass(slots=True)
class _Message:
    """One MQTT publish, as queued for the connection."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class _Connection:
    """One paho client and one network connection; never reused once lost (see the module docstring)."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.done = threading.Event()  # CONNACK received, or the attempt failed
        self.connected = False
        self.lost = threading.Event()
        self.failure: str | None = None
        self.refused: str | None = None  # the CONNACK's reason code, when the broker said no
        self.publish_errors: dict[int, str] = {}


class MqttOutput:
    """Publishes frames to an MQTT broker (3.1.1 or 5, optionally TLS), with Home Assistant discovery.

    >>> from appliance.outputs.mqtt.config import MqttConfig
    >>> out = MqttOutput(MqttConfig(base_topic="home/linky", client_id="pi"))
    >>> out.availability_topic
    'home/linky/bridge/pi/status'
    """

    name = "mqtt"
    durable = True
    # The latest result of each self-check (docs/DATA_FORMAT.md section 5), the tariff record (section 7) and
    # the running version and pending reboot (docs/UPDATES.md), retained.
    accepts = frozenset({CHECK, TARIFF, UPDATE})

    def __init__(self, cfg: MqttConfig, timeout: float = TIMEOUT) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.client_id = cfg.client_id or f"teleinfo-{socket.gethostname()}"
        self.availability_topic = ha.availability_topic(cfg.base_topic, self.client_id)
        self.ha_status_topic = f"{cfg.discovery_prefix}/status"
        self.update_topic = ha.update_topic(cfg.base_topic, self.client_id)
        self._update: _Message | None = None  # the last update state delivered, published again by new connections
        self._conn: _Connection | None = None
        # _meters and _tariffs: read by the paho thread (HA birth), written by the worker and (tariffs) by encode.
        self._lock = threading.Lock()
        self._meters: dict[str, _Meter] = {}
        self._tariffs: dict[str, tuple[str | None, str, tuple[str, ...]]] = {}  # meter -> what its discovery says
        self.connects = 0
        self.connect_failures = 0
        self.skipped = 0  # frames not published on purpose (publish_interval, publish_on_change)
        self.dropped_values = 0  # energy indexes filtered out of states (lower than published, or implausible)

    # --- the Output protocol -----------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Counts the worker shows in /status: connections, frames skipped on purpose, values filtered out."""
        return {
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "skipped": self.skipped,
            "dropped_values": self.dropped_values,
        }

    def open(self) -> None:
        """Connect, or raise :class:`MqttError` saying why (refused, login refused with its reason, TLS...)."""
        self._ensure_connected()

    def send(self, frame: Frame) -> None:
        """Publish one frame; return once the broker acknowledged it, else raise."""
        try:
            self.send_batch([frame])
        except PartialDelivery as e:
            raise e.cause from None

    def send_batch(self, frames: list[Frame]) -> None:
        """Publish frames in order, pipelined (the spool's replay); :class:`PartialDelivery` on failure."""
        with self._lock:
            states = [dict(self._meters)]  # states[i]: before frame i was planned
        handed: list[list[mqtt.MQTTMessageInfo]] = []  # per frame, once all its messages are with paho
        conn: _Connection | None = None
        try:
            conn = self._ensure_connected()
            for frame in frames:
                with self._lock:
                    messages = self._plan(frame)
                    states.append(dict(self._meters))
                handed.append([self._publish(conn, m) for m in messages])
            for infos in handed:
                for info in infos:
                    self._acknowledged(conn, info)
        except (MqttError, OSError, ValueError, RuntimeError) as e:
            self._fail(conn, handed, states, e)

    def encode(self, record: Record) -> list[_Message]:
        """A check run: its ``{status, at, results}`` retained on ``<base>/checks/<check>``.  A tariff record: the
        record retained on ``<base>/<meter>/tariff``, after its Home Assistant discovery when the entities it
        calls for changed.  An update state: retained on ``<base>/bridge/<client id>/update`` (once delivered,
        kept to be published again by the next connection).  QoS 1 at least: the latest one must arrive."""
        qos = max(1, self.cfg.qos)
        if isinstance(record, UpdateState):
            return [_Message(self.update_topic, _json(record.to_json()), qos, retain=True)]
        if isinstance(record, CheckRun):
            topic = f"{self.cfg.base_topic}/checks/{record.check}"
            return [_Message(topic, _json(record.to_json()), qos, retain=True)]
        if isinstance(record, TariffRecord) and record.meter is not None:
            meter = record.meter
            messages = []
            if self.cfg.discovery:
                seen = (record.mode, str(record.snapshot.get("currency") or ""), tuple(record_periods(record.snapshot)))
                with self._lock:
                    changed = self._tariffs.get(meter) != seen
                    self._tariffs[meter] = seen
                if changed:
                    messages.append(self._tariff_discovery(meter, *seen))
            topic = ha.tariff_state_topic(self.cfg.base_topic, meter)
            messages.append(_Message(topic, _json(record.to_json()), qos, retain=True))
            return messages
        return []

    def deliver(self, units: Sequence[Any]) -> None:
        """Publish messages made by :meth:`encode`; return once the broker acknowledged them all, else raise."""
        conn: _Connection | None = None
        try:
            conn = self._ensure_connected()
            infos = [self._publish(conn, m) for m in units]
            for info in infos:
                self._acknowledged(conn, info)
            for m in units:
                if m.topic == self.update_topic:
                    with self._lock:
                        self._update = m  # what the next connection publishes again
        except (MqttError, OSError, ValueError, RuntimeError) as e:
            if conn is not None:
                self._conn = None
                self._drop(conn)
            if isinstance(e, MqttError):
                raise
            raise MqttError(f"MQTT publish failed: {type(e).__name__}: {e}") from e

    def probe(self) -> bool:
        """Whether the broker answers an MQTT CONNECT now (within :data:`PROBE_TIMEOUT`); never raises."""
        cfg = self.cfg
        try:
            context = _tls_context(cfg) if cfg.tls else None
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            return False
        return answers_connect(cfg.host, cfg.port, cfg.protocol == "5", context, PROBE_TIMEOUT)

    def close(self) -> None:
        """Publish ``offline`` (a clean stop sends no last will) and disconnect, within about 2 s."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.connected and not conn.lost.is_set():
            try:
                info = conn.client.publish(self.availability_topic, b"offline", qos=1, retain=True)
                info.wait_for_publish(min(1.0, self.timeout))
            except (ValueError, RuntimeError):
                pass
        self._drop(conn)

    # --- planning ------------------------------------------------------------------------------------------
    def _plan(self, frame: Frame) -> list[_Message]:
        """The messages of one frame (discovery first if it brings new entities), updating ``_meters``."""
        meter = frame.meter
        if meter is None:  # the service never hands such a frame over; a replayed old record might
            self.skipped += 1
            return []
        cfg = self.cfg
        st = self._meters.get(meter)
        if st is None or st.mode != frame.mode:  # a meter switched between historique and standard
            st = _Meter(frame.mode)
        at = frame.received_at
        if (
            cfg.publish_interval > 0
            and at is not None
            and st.last_at is not None
            and 0 <= at - st.last_at < cfg.publish_interval
        ) or (cfg.publish_on_change and st.last_values == frame.values):
            self.skipped += 1
            return []
        dropped, guard = st.guard.check(frame.mode, frame.values, at)
        if dropped:
            self.dropped_values += len(dropped)
            _LOG.debug("meter %s: %s held back (lower than published, or implausible)", meter, dropped)
        messages: list[_Message] = []
        announced = st.announced
        if cfg.discovery:
            kept = {k: v for k, v in frame.values.items() if k not in dropped}
            new = ha.usable_labels(frame.mode, kept) - announced
            if new:
                announced = announced | new
                messages.append(self._discovery(meter, frame.mode, announced))
        body = ha.state_body(frame, dropped)  # the frame's shared JSON unless a value is held back
        messages.append(_Message(ha.state_topic(cfg.base_topic, meter), body, cfg.qos, retain=False))
        self._meters[meter] = replace(st, announced=announced, last_at=at, last_values=dict(frame.values), guard=guard)
        return messages

    def _discovery(self, meter: str, mode: str, labels: frozenset[str]) -> _Message:
        payload = ha.discovery_payload(
            meter,
            mode,
            labels,
            state=ha.state_topic(self.cfg.base_topic, meter),
            availability=self.availability_topic,
            qos=self.cfg.qos,
        )
        return _Message(ha.discovery_topic(self.cfg.discovery_prefix, meter), _json(payload), 1, retain=True)

    def _tariff_discovery(self, meter: str, mode: str | None, currency: str, periods: tuple[str, ...]) -> _Message:
        payload = ha.tariff_discovery_payload(
            meter,
            mode,
            currency,
            periods,
            state=ha.tariff_state_topic(self.cfg.base_topic, meter),
            availability=self.availability_topic,
            qos=max(1, self.cfg.qos),
        )
        return _Message(ha.tariff_discovery_topic(self.cfg.discovery_prefix, meter), _json(payload), 1, retain=True)

    def _retained_again(self) -> list[_Message]:
        """What a new connection publishes again (a broker restarted without persistence lost it): discovery and
        the last update state."""
        with self._lock:
            update = [self._update] if self._update is not None else []
        return update + self._all_discovery()

    def _all_discovery(self) -> list[_Message]:
        if not self.cfg.discovery:
            return []
        with self._lock:
            meters = list(self._meters.items())
            tariffs = list(self._tariffs.items())
        return [self._discovery(m, st.mode, st.announced) for m, st in meters if st.announced] + [
            self._tariff_discovery(m, *seen) for m, seen in tariffs
        ]

    # --- publishing ----------------------------------------------------------------------------------------
    def _publish(self, conn: _Connection, m: _Message) -> mqtt.MQTTMessageInfo:
        info = conn.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN or conn.lost.is_set():
            raise MqttError(f"connection to the MQTT broker lost{self._why(conn)}")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            raise MqttError(f"cannot publish to {m.topic}: {mqtt.error_string(info.rc)}")
        return info

    def _acknowledged(self, conn: _Connection, info: mqtt.MQTTMessageInfo) -> None:
        """Wait for one message's acknowledgement; raise if the connection is lost or the broker is silent."""
        deadline = time.monotonic() + self.timeout
        while not info.is_published():
            if conn.lost.is_set():
                raise MqttError(f"connection to the MQTT broker lost before acknowledgement{self._why(conn)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MqttError(f"no acknowledgement from the MQTT broker within {self.timeout:g} s")
            info.wait_for_publish(min(remaining, 0.2))
        error = conn.publish_errors.get(info.mid)
        if error is not None:  # MQTT 5: the broker refused the message (ACL, quota...)
            raise MqttError(f"the MQTT broker refused a message: {error}")

    def _fail(
        self,
        conn: _Connection | None,
        handed: list[list[mqtt.MQTTMessageInfo]],
        states: list[dict[str, _Meter]],
        error: BaseException,
    ) -> None:
        """Count the leading frames whose messages were all acknowledged, go back to the state after them, and
        raise :class:`PartialDelivery`.  The connection is dropped with whatever paho still holds: those frames
        are replayed from the spool."""
        refused = conn.publish_errors if conn is not None else {}
        delivered = 0
        for infos in handed:
            if not all(info.is_published() and info.mid not in refused for info in infos):
                break
            delivered += 1
        with self._lock:
            self._meters = states[delivered]
        if conn is not None:
            self._conn = None
            self._drop(conn)
        if not isinstance(error, MqttError):
            error = MqttError(f"MQTT publish failed: {type(error).__name__}: {error}")
        raise PartialDelivery(delivered, error) from error

    # --- connection ----------------------------------------------------------------------------------------
    def _ensure_connected(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.lost.is_set():
            return conn
        if conn is not None:
            self._conn = None
            self._drop(conn)
        try:
            self._conn = self._connect()
        except MqttError:
            self.connect_failures += 1
            raise
        self.connects += 1
        return self._conn

    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _why(self, conn: _Connection) -> str:
        return f" ({conn.failure})" if conn.failure else ""

    def _client(self, conn_box: list[_Connection]) -> mqtt.Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        client.will_set(self.availability_topic, b"offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get() if cfg.password is not None else None)
        if cfg.tls:
            try:
                client.tls_set(
                    ca_certs=cfg.ca_file or None,
                    certfile=cfg.cert_file or None,
                    keyfile=cfg.key_file or None,
                )
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise MqttError(f"cannot set up TLS (ca_file, cert_file, key_file): {e}") from e
        client.connect_timeout = self.timeout

        def on_connect(_c: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, _props: Any) -> None:
            conn = conn_box[0]
            if rc.is_failure:
                conn.refused = conn.failure = f"{rc} (code {rc.value})"
            else:
                conn.connected = True
            conn.done.set()

        def on_disconnect(_c: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, _props: Any) -> None:
            conn = conn_box[0]
            if conn.failure is None and rc.is_failure:
                conn.failure = str(rc)
            conn.lost.set()
            conn.done.set()

        def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _props: Any) -> None:
            if rc.is_failure:
                conn_box[0].publish_errors[mid] = f"{rc} (code {rc.value})"

        def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            if msg.topic == self.ha_status_topic and msg.payload.strip().lower() == b"online":
                messages = self._all_discovery()
                for m in messages:
                    c.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                _LOG.info("Home Assistant is online: discovery published again for %d meter(s)", len(messages))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        return client

    def _connect(self) -> _Connection:
        """A new connection, acknowledged by the broker within ``timeout``; :class:`MqttError` otherwise."""
        cfg = self.cfg
        box: list[_Connection] = []
        client = self._client(box)
        conn = _Connection(client)
        box.append(conn)
        deadline = time.monotonic() + self.timeout
        error = _bounded_connect(client, cfg, self.timeout)
        if error is not None:
            failure = MqttError(self._explain(error))
            failure.reason = error_reason(error, self.timeout)
            raise failure from None
        client.loop_start()
        conn.done.wait(max(0.0, deadline - time.monotonic()))
        if not conn.connected or conn.lost.is_set():
            if conn.refused is not None:
                why = f"the MQTT broker {self._where()} refused the connection: {conn.refused}"
            elif conn.lost.is_set():
                why = (
                    f"the MQTT broker {self._where()} closed the connection before accepting it"
                    f"{self._why(conn)} (TLS expected by the broker, or a client id/ACL rule?)"
                )
            else:
                why = f"no answer from the MQTT broker {self._where()} within {self.timeout:g} s"
            self._drop(conn)
            raise MqttError(why)
        sub_topics = [(self.ha_status_topic, 1)] if cfg.discovery else []
        for topic, qos in sub_topics:
            client.subscribe(topic, qos)
        client.publish(self.availability_topic, b"online", qos=1, retain=True)
        for m in self._retained_again():
            client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        _LOG.info(
            "connected to MQTT broker %s (MQTT %s%s) as %s",
            self._where(),
            cfg.protocol,
            ", TLS" if cfg.tls else "",
            self.client_id,
        )
        return conn

    def _explain(self, error: BaseException) -> str:
        where = self._where()
        if isinstance(error, socket.gaierror):
            return f"cannot resolve the MQTT broker's host name {self.cfg.host!r}: {error.strerror or error}"
        ssl = loaded("ssl")  # not loaded: no TLS was ever attempted, so no TLS error (and no megabytes spent)
        if ssl is not None and isinstance(error, ssl.SSLCertVerificationError):
            return f"TLS: the MQTT broker {where}'s certificate is not trusted: {error.verify_message or error}"
        if ssl is not None and isinstance(error, ssl.SSLError):
            return f"TLS handshake with the MQTT broker {where} failed (is that port TLS?): {error.reason or error}"
        if self.cfg.tls and isinstance(error, ConnectionResetError | ConnectionAbortedError):
            return f"TLS handshake with the MQTT broker {where} failed: connection reset (is that port TLS?)"
        if isinstance(error, ConnectionRefusedError):
            return f"the MQTT broker {where} refused the TCP connection (nothing listening on that port?)"
        if isinstance(error, TimeoutError | socket.timeout):
            return f"no answer from the MQTT broker {where} within {self.timeout:g} s ({error or 'connect'})"
        if isinstance(error, OSError):
            return f"cannot reach the MQTT broker {where}: {error.strerror or error}"
        return f"cannot connect to the MQTT broker {where}: {type(error).__name__}: {error}"

    def _drop(self, conn: _Connection) -> None:
        """Disconnect and stop paho's thread within ~1.5 s, even if the socket is wedged."""
        client = conn.client
        try:
            client.disconnect()
        except (OSError, ValueError):
            pass
        stopper = threading.Thread(target=client.loop_stop, name="mqtt-close", daemon=True)
        stopper.start()
        stopper.join(1.0)
        if stopper.is_alive():
            shutdown = getattr(client.socket(), "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown(socket.SHUT_RDWR)  # wakes paho's select: the loop sees the connection lost
                except OSError:
                    pass
            stopper.join(0.5)
            if stopper.is_alive():
                _LOG.warning("MQTT network thread did not stop; abandoning it")


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS settings paho gets from ``tls_set``: the CA file (else the system's), a client certificate."""
    import ssl  # only with TLS configured: megabytes of OpenSSL (appliance.lazy)

    context = ssl.create_default_context(cafile=cfg.ca_file or None)
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return context


def answers_connect(host: str, port: int, v5: bool, context: ssl.SSLContext | None, timeout: float) -> bool:
    """Whether an MQTT broker answers a CONNECT (clean, empty client id, no credentials) within ``timeout`` s.

    Any answer counts, a refused login as much as a CONNACK, and so does the broker closing the connection or a
    TLS alert: only a broker that says nothing at all (hung, or not there) makes this False.
    """
    level, props = (5, b"\x00") if v5 else (4, b"")
    body = b"\x00\x04MQTT" + bytes((level, 0x02)) + b"\x00\x0a" + props + b"\x00\x00"
    connect = bytes((0x10, len(body))) + body
    deadline = time.monotonic() + timeout
    tls_errors: tuple[type[Exception], ...] = ()  # a plain connection never imports ssl (appliance.lazy)
    if context is not None:
        import ssl

        tls_errors = (ssl.SSLError,)
    refusals: tuple[type[Exception], ...] = (*tls_errors, ConnectionResetError)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if context is not None:
                raw.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    sock = context.wrap_socket(raw, server_hostname=host)
                except tls_errors:
                    return True  # the broker's TLS layer answered (a certificate it refuses...)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(connect)
            try:
                sock.recv(4)  # a CONNACK, whatever its code; b"": closed by the broker, an answer too
            except refusals:
                return True  # refused by a live broker (a TLS alert, a reset)
            try:
                sock.sendall(b"\xe0\x00")  # DISCONNECT: the broker logs a clean goodbye
            except OSError:
                pass
            return True
    except (OSError, ValueError):  # refused, unreachable, no answer in time
        return False


def _json(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as ``teleinfo decode`` prints it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _bounded_connect(client: mqtt.Client, cfg: MqttConfig, timeout: float) -> BaseException | None:
    """``client.connect`` in a thread, waited for at most ``timeout`` s: name resolution has no timeout of its own.

    Returns None once connected (CONNECT sent), the exception it raised, or :class:`TimeoutError` if it is still
    running: it is then abandoned, and closes the socket it may still open when it ends.
    """
    outcome: list[BaseException | None] = []
    lock = threading.Lock()
    abandoned = threading.Event()

    def run() -> None:
        try:
            client.connect(
                cfg.host,
                cfg.port,
                cfg.keepalive,
                clean_start=True if cfg.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            )
            result: BaseException | None = None
        except Exception as e:  # reported to the caller
            result = e
        with lock:
            outcome.append(result)
        if abandoned.is_set() and result is None and (sock := client.socket()) is not None:
            sock.close()

    t = threading.Thread(target=run, name="mqtt-connect", daemon=True)
    t.start()
    t.join(timeout)
    with lock:
        if outcome:
            return outcome[0]
        abandoned.set()
    return TimeoutError("name resolution, TCP or TLS connect")
