"""A real Mosquitto broker for the tests, on 127.0.0.1 with free ports, stopped by its own PID.

``Mosquitto(tmp_path, ...).start()`` writes a configuration, optionally a password file (``mosquitto_passwd``)
and a TLS listener whose certificates come from a throwaway CA made with ``openssl`` at test time (:class:`TestCA`),
then starts ``mosquitto -c <conf>`` and waits until the ports accept connections.  Tests are skipped when the
binary is missing (``apt-get install mosquitto mosquitto-clients openssl``; ``scripts/test`` does it).

``kill()`` is SIGKILL (a crash: clients lose their connection without a DISCONNECT), ``stop()`` SIGTERM, and
``start()`` again reuses the same ports and files, so a test can restart "the same" broker mid-stream.  Without
persistence a restarted broker has lost its retained messages, like a default install after a reboot.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .util import free_port, wait_until

__all__ = ["Mosquitto", "Subscriber", "TestCA"]

LOOPBACK = "127.0.0.1"


def _binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


class TestCA:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made by ``openssl``.

    Each instance is a new CA: a second one is the "certificate not trusted" case.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, directory: Path) -> None:
        openssl = _binary("openssl")
        if openssl is None:
            pytest.skip("openssl not installed")
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.server_cert = directory / "server.crt"
        self.server_key = directory / "server.key"
        self.client_cert = directory / "client.crt"
        self.client_key = directory / "client.key"
        self._openssl = openssl
        self._run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=teleinfo test CA", "-keyout", self.ca_key, "-out", self.ca_cert,
        )  # fmt: skip
        self._leaf("server", self.server_key, self.server_cert, "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self._leaf("client", self.client_key, self.client_cert, "extendedKeyUsage=clientAuth")

    def _run(self, *args: object) -> None:
        subprocess.run([self._openssl, *map(str, args)], check=True, capture_output=True, timeout=30)

    def _leaf(self, cn: str, key: Path, cert: Path, ext: str) -> None:
        csr = self.dir / f"{cn}.csr"
        extfile = self.dir / f"{cn}.ext"
        extfile.write_text(ext + "\n", encoding="ascii")
        self._run(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", key, "-out", csr,
        )  # fmt: skip
        self._run(
            "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", extfile, "-out", cert,
        )  # fmt: skip


@dataclass
class Mosquitto:
    """mosquitto with a throwaway configuration.

    ``users`` enables password authentication (``allow_anonymous false``); ``tls`` adds a TLS listener on
    :attr:`tls_port` with ``ca``'s server certificate (``require_certificate`` if ``client_certs``).
    ``persistence`` saves sessions and retained messages after every change, so a persistent subscriber
    (``Subscriber(clean=False)``) gets what was published while it was reconnecting after a restart.
    """

    directory: Path
    users: dict[str, str] = field(default_factory=dict)
    tls: TestCA | None = None
    client_certs: bool = False
    persistence: bool = False
    port: int = 0
    tls_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    START_TIMEOUT = 10.0

    @property
    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config(self) -> str:
        d = self.directory
        lines = [
            "per_listener_settings false",
            # Stay the current user: run as root, mosquitto would switch to "mosquitto", which cannot write here.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {d}/",
            "autosave_on_changes true",
            "autosave_interval 1",
            f"log_dest file {d / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"allow_anonymous {'false' if self.users else 'true'}",
            f"listener {self.port} {LOOPBACK}",
        ]
        if self.users:
            lines.insert(0, f"password_file {d / 'passwd'}")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {LOOPBACK}",
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.client_certs else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    def _passwords(self) -> None:
        tool = _binary("mosquitto_passwd")
        if tool is None:
            pytest.skip("mosquitto_passwd not installed (apt-get install mosquitto)")
        path = self.directory / "passwd"
        path.write_text("", encoding="ascii")
        for user, password in self.users.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True, timeout=30)
        os.chmod(path, 0o600)

    def start(self) -> Mosquitto:
        """Start the broker (the first time: write its files and choose ports); skip if not installed."""
        binary = _binary("mosquitto")
        if binary is None:
            pytest.skip("mosquitto not installed (apt-get install mosquitto)")
        first = not self.port
        self.directory.mkdir(parents=True, exist_ok=True)
        if first:
            self.port = free_port()
            if self.tls is not None:
                self.tls_port = free_port()
            if self.users:
                self._passwords()
        conf = self.directory / "mosquitto.conf"
        conf.write_text(self._config(), encoding="ascii")
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        ports = [self.port] + ([self.tls_port] if self.tls is not None else [])
        deadline = time.monotonic() + self.START_TIMEOUT
        while not all(_accepts(p) for p in ports):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {err}{self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen within {self.START_TIMEOUT} s: {self.log}")
            time.sleep(0.02)
        return self

    def _signal(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a paused broker handles SIGTERM only once resumed
        os.kill(proc.pid, sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()

    def pause(self) -> None:
        """SIGSTOP: a hung broker (connections are still accepted by the kernel, nothing is answered)."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`: the broker handles everything it was sent meanwhile."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the broker dies at once (clients see their connection reset)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM and wait (a no-op if not running)."""
        self._signal(signal.SIGTERM)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


class Subscriber:
    """A real paho subscriber that records every message (topic, payload, retain, time) in arrival order.

    Messages the broker sends again with the DUP flag (a persistent broker restarted after a crash resends what
    it had not recorded as acknowledged) are kept apart in :attr:`redelivered`: they are the broker's
    duplicates, not the publisher's.
    """

    def __init__(
        self,
        port: int,
        topics: list[str],
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        clean: bool = True,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.redelivered: list[tuple[str, bytes]] = []  # DUP flag set: the broker resent a message
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.reconnect_delay_set(1, 1)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(LOOPBACK, port, 30)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 5)

    def _on_subscribe(self, *_args: object) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.dup:  # the broker's own retransmission (e.g. restored from its persistence after a crash)
                self.redelivered.append((msg.topic, bytes(msg.payload)))
                return
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on ``topic``, in order."""
        with self._lock:
            return [p for t, p, _r, _at in self.messages if t == topic]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
