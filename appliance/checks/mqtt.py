"""Self-check results to MQTT: the latest result of each check as a retained JSON message.

Topic ``<outputs.mqtt.base_topic>/checks/<check>`` (``teleinfo/checks/ports``), payload
``{"status", "at", "results": [...]}`` as in the health socket's ``checks.last`` (docs/DATA_FORMAT.md section 5).
Retained, so a dashboard or Home Assistant that connects later sees the latest state at once; a run that cannot
be published is counted and logged, and the next run publishes the then-latest state (nothing to replay: only
the latest state matters).  The broker settings (host, port, TLS, credentials, protocol) are those of
``outputs.mqtt``, with QoS at least 1 (to know the broker has it); one short connection per run, every step under
``timeout`` seconds, on the scheduler's thread.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from typing import Any

from appliance.config import MqttConfig

__all__ = ["MqttPublisher"]

_LOG = logging.getLogger(__name__)


class MqttPublisher:
    """Publishes one retained message per check run; never raises."""

    def __init__(self, cfg: MqttConfig, timeout: float = 5.0) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.published = 0
        self.failed = 0
        self.last_error: str | None = None

    def topic(self, check: str) -> str:
        return f"{self.cfg.base_topic}/checks/{check}"

    def counters(self) -> dict[str, Any]:
        return {"published": self.published, "failed": self.failed, "last_error": self.last_error}

    def publish(self, check: str, state: dict[str, Any]) -> bool:
        """Publish ``state`` retained on :meth:`topic`; True once the broker acknowledged it (QoS 1/2)."""
        try:
            self._publish(self.topic(check), json.dumps(state, ensure_ascii=False, separators=(",", ":")))
        except Exception as e:
            self.failed += 1
            self.last_error = _reason(e)
            _LOG.warning("checks: %s not published to MQTT %s:%d (%s)", check, self.cfg.host, self.cfg.port, e)
            return False
        self.published += 1
        self.last_error = None
        return True

    def _publish(self, topic: str, payload: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        cfg = self.cfg
        protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        client_id = f"{cfg.client_id or 'teleinfo-' + socket.gethostname()}-checks"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        client.connect_timeout = self.timeout
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get() if cfg.password is not None else None)
        if cfg.tls:
            context = ssl.create_default_context(cafile=cfg.ca_file or None)
            if cfg.cert_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
            client.tls_set_context(context)
        connected = threading.Event()
        refusal: list[str] = []

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            if reason.is_failure:
                refusal.append(str(reason))
            connected.set()

        client.on_connect = on_connect
        client.connect(cfg.host, cfg.port, keepalive=max(5, int(self.timeout * 2)))
        client.loop_start()
        try:
            if not connected.wait(self.timeout):
                raise TimeoutError(f"no CONNACK within {self.timeout:g} s")
            if refusal:
                raise ConnectionError(f"broker refused the connection: {refusal[0]}")
            info = client.publish(topic, payload, qos=max(1, cfg.qos), retain=True)
            info.wait_for_publish(self.timeout)
            if not info.is_published():
                raise TimeoutError(f"not acknowledged within {self.timeout:g} s")
            client.disconnect()
        finally:
            client.loop_stop()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__
