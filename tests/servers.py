"""Real servers for the tests, started on 127.0.0.1 with free ports and stopped by their own PID.

* :class:`InfluxD`: influxd 1.6.7 from Debian (``apt-get install influxdb``), the strict line-protocol parser,
  InfluxQL and the ``[[udp]]`` listener (docs/NETWORK.md §4.4).  Tests are skipped when the binary is missing.
* :class:`VictoriaMetrics`: victoria-metrics from Debian (``apt-get install victoria-metrics``), which takes
  InfluxDB line protocol on ``/api/v2/write`` like InfluxDB 1.8+/2.x/3.x and is read back through
  ``/api/v1/export`` (docs/NETWORK.md §4.1).  It can be stopped and started again on the same port and data, for
  outages.  Tests are skipped when the binary is missing.
* :class:`MulticastRelay`: forwards a multicast group joined on 127.0.0.1 to a unicast UDP port, because
  influxd's UDP listener does not join groups (docs/NETWORK.md §3.3): ``socat`` as tested there, or a Python thread.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .util import free_port, stop_process, wait_until

__all__ = ["InfluxD", "MulticastRelay", "VictoriaMetrics"]


class InfluxD:
    """influxd 1.6.7 with a throwaway config and data directory.

    ``start(tmp_path)`` returns ``(http_port, udp_port)``; the UDP listener writes to ``udp_database`` with the
    given precision (``""`` = influxd's default, nanoseconds, what the appliance sends by default).
    """

    BINARY = "influxd"
    START_TIMEOUT = 10.0

    def __init__(self, udp_database: str = "udpdb", udp_precision: str = "") -> None:
        self.udp_database = udp_database
        self.udp_precision = udp_precision
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.udp_port = 0
        self.log_path: Path | None = None

    @classmethod
    def binary(cls) -> str | None:
        return shutil.which(cls.BINARY)

    def _config(self, root: Path, rpc: int) -> str:
        precision = f'  precision = "{self.udp_precision}"\n' if self.udp_precision else ""
        return (
            "reporting-enabled = false\n"  # Debian's build spells it this way (upstream: reporting-disabled)
            f'bind-address = "127.0.0.1:{rpc}"\n'
            f'[meta]\n  dir = "{root}/meta"\n  logging-enabled = false\n'
            f'[data]\n  dir = "{root}/data"\n  wal-dir = "{root}/wal"\n  query-log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
            "[subscriber]\n  enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
            "[retention]\n  enabled = false\n"
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{self.http_port}"\n  log-enabled = false\n'
            f'[[udp]]\n  enabled = true\n  bind-address = "127.0.0.1:{self.udp_port}"\n'
            f'  database = "{self.udp_database}"\n{precision}  batch-size = 1\n  batch-timeout = "50ms"\n'
        )

    def start(self, tmp_path: Path) -> tuple[int, int]:
        """Start influxd; skip the test if it is not installed.  Retries with new ports if one was taken."""
        binary = self.binary()
        if binary is None:
            pytest.skip("influxd not installed (apt-get install -y influxdb)")
        root = tmp_path / "influxd"
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "influxd.log"
        for _attempt in range(3):
            rpc, self.http_port = free_port(), free_port()
            self.udp_port = free_port(socket.SOCK_DGRAM)
            conf = root / "influxdb.conf"
            conf.write_text(self._config(root, rpc))
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [binary, "run", "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=root
                )
            deadline = time.monotonic() + self.START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._ping():
                    self.execute(f'CREATE DATABASE "{self.udp_database}"')
                    return self.http_port, self.udp_port
                time.sleep(0.02)
            self.stop()  # exited (a port was taken meanwhile) or never answered: try again
        raise RuntimeError(f"influxd did not start; log:\n{self.log_path.read_text()[-3000:]}")

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping", timeout=1) as r:
                return int(r.status) == 204
        except (OSError, urllib.error.URLError):
            return False

    def execute(self, q: str) -> dict[str, Any]:
        """POST /query (CREATE, DROP...)."""
        data = urllib.parse.urlencode({"q": q}).encode()
        url = f"http://127.0.0.1:{self.http_port}/query"
        with urllib.request.urlopen(url, data=data, timeout=5) as r:
            return dict(json.load(r))

    def query(self, db: str, q: str, epoch: str = "ns") -> dict[str, Any]:
        """GET /query?db=&q=&epoch= and the decoded JSON answer (times as integers in ``epoch``)."""
        params = urllib.parse.urlencode({"db": db, "q": q, "epoch": epoch})
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/query?{params}", timeout=5) as r:
            return dict(json.load(r))

    def rows(self, db: str, q: str) -> list[dict[str, Any]]:
        """The query's rows as dicts (column -> value), all series together."""
        out = []
        for result in self.query(db, q).get("results", []):
            for series in result.get("series", []):
                cols = series["columns"]
                out.extend(dict(zip(cols, values, strict=True)) for values in series["values"])
        return out

    def stop(self) -> None:
        """Terminate our influxd by its PID (never by name)."""
        proc, self.proc = self.proc, None
        stop_process(proc, 10)


class VictoriaMetrics:
    """victoria-metrics with a throwaway data directory, on 127.0.0.1.

    ``start(tmp_path)`` picks a free port; ``stop()`` then ``start(tmp_path)`` again is an outage: the same port
    and the same data, so points written before are still there.  With ``username``/``password`` every write
    and read needs HTTP basic authentication (``-httpAuth.*``; ``/ping`` stays open).  Retention is 100 years
    (the default month would silently drop older test timestamps), and identical timestamps are kept, not
    deduplicated, so a test sees every duplicate.  ``tls=(certificate, key)`` serves https only.
    """

    BINARY = "victoria-metrics"
    START_TIMEOUT = 10.0

    def __init__(self, username: str = "", password: str = "", tls: tuple[Path, Path] | None = None) -> None:
        self.username, self.password = username, password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.root: Path | None = None
        self.log_path: Path | None = None
        # The test reads its own loopback server back: no need to verify the certificate it was given.
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, tmp_path: Path | None = None) -> int:
        """Start (again, on the same port and data, if it ran before); return the HTTP port.

        ``tmp_path`` holds the data and log; a restart may omit it.
        """
        binary = shutil.which(self.BINARY)
        if binary is None:
            pytest.skip("victoria-metrics not installed (apt-get install -y victoria-metrics)")
        if self.root is None:
            assert tmp_path is not None, "the first start needs a directory for the data"
            self.root = tmp_path / "victoria-metrics"
            self.root.mkdir(parents=True, exist_ok=True)
            self.log_path = self.root / "vm.log"
        assert self.log_path is not None
        restart = bool(self.port)
        for _attempt in range(1 if restart else 3):
            self.port = self.port or free_port()
            argv = [
                binary,
                f"-storageDataPath={self.root / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-selfScrapeInterval=0",
                "-retentionPeriod=100y",
                "-loggerLevel=ERROR",
            ]
            if self.username:
                argv += [f"-httpAuth.username={self.username}", f"-httpAuth.password={self.password}"]
            if self.tls:
                argv += ["-tls", f"-tlsCertFile={self.tls[0]}", f"-tlsKeyFile={self.tls[1]}"]
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
            deadline = time.monotonic() + self.START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._ping():
                    return self.port
                time.sleep(0.02)
            self.stop()
            if not restart:
                self.port = 0  # taken meanwhile: try another one (a restart must keep its port: fail loudly)
        raise RuntimeError(f"victoria-metrics did not start; log:\n{self.log_path.read_text()[-3000:]}")

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1, context=self._context) as r:  # noqa: S310
                return int(r.status) == 204
        except (OSError, urllib.error.URLError):
            return False

    def _request(self, path: str, data: dict[str, str] | None = None) -> bytes:
        req = urllib.request.Request(f"{self.url}{path}", data=urllib.parse.urlencode(data or {}).encode())  # noqa: S310
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10, context=self._context) as r:  # noqa: S310 - http(s) above
            return bytes(r.read())

    def export(self, match: str = '{__name__=~"teleinfo_.*"}') -> list[dict[str, Any]]:
        """Every stored sample of the matching series (after a flush, so fresh rows are included)."""
        self._request("/internal/force_flush")
        body = self._request("/api/v1/export", {"match[]": match, "start": "0", "end": str(2**31)})
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def samples(self, match: str = '{__name__=~"teleinfo_.*"}') -> dict[tuple[str, str, str], list[tuple[int, float]]]:
        """``(metric name, meter, mode) -> [(time in s, value)...]`` sorted by time, duplicates kept."""
        out: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
        for series in self.export(match):
            m = series["metric"]
            key = (m["__name__"], m.get("meter", ""), m.get("mode", ""))
            pairs = zip(series["timestamps"], series["values"], strict=True)
            out.setdefault(key, []).extend((int(t) // 1000, float(v)) for t, v in pairs)
        for v in out.values():
            v.sort()
        return out

    def pause(self) -> None:
        """SIGSTOP: a hung server.  The kernel still completes connections and takes requests into its
        buffers; nothing is answered until :meth:`resume`, which then executes everything it was sent."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Terminate our victoria-metrics by its PID (never by name); its data stays for a restart.  A paused
        one is resumed first, or SIGTERM would wait for the SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc, 10)


def _igmp_hex(group: str) -> str:
    """How /proc/net/igmp prints a group (the network-order address read as a little-endian word)."""
    return f"{struct.unpack('<I', socket.inet_aton(group))[0]:08X}"


def _joined_on_lo(group: str) -> bool:
    device = ""
    for line in Path("/proc/net/igmp").read_text().splitlines()[1:]:
        if not line.startswith(("\t", " ")):
            device = line.split()[1]
        elif device == "lo" and line.split()[0] == _igmp_hex(group):
            return True
    return False


class MulticastRelay:
    """Forward ``group:port`` (joined on 127.0.0.1) to ``127.0.0.1:target_port``.

    ``kind="socat"`` runs docs/NETWORK.md §3.3's socat command (skipped if socat is missing) and waits until the
    group shows as joined on lo in /proc/net/igmp; ``kind="python"`` is a thread doing the same with
    :func:`appliance.outputs.multicast.open_receiver`.  Use a group no other test uses, so "joined" means "ours".
    """

    def __init__(self, group: str, port: int, target_port: int, kind: str = "socat") -> None:
        self.group, self.port, self.target_port, self.kind = group, port, target_port, kind
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.forwarded = 0

    def start(self) -> None:
        if self.kind == "socat":
            socat = shutil.which("socat")
            if socat is None:
                pytest.skip("socat not installed (apt-get install -y socat)")
            source = f"UDP4-RECV:{self.port},bind={self.group},reuseaddr,ip-add-membership={self.group}:127.0.0.1"
            self.proc = subprocess.Popen(
                [socat, "-u", source, f"UDP4-SENDTO:127.0.0.1:{self.target_port}"], stderr=subprocess.PIPE
            )
            wait_until(lambda: _joined_on_lo(self.group) or self.proc is None or self.proc.poll() is not None, 5)
            if self.proc.poll() is not None:
                raise RuntimeError(f"socat exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            return
        from appliance.outputs.multicast.receiver import open_receiver

        sock = open_receiver(self.group, self.port, "127.0.0.1")
        sock.settimeout(0.1)
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def forward() -> None:
            with sock, out:
                while not self._stop.is_set():
                    try:
                        data = sock.recv(65535)
                    except TimeoutError:
                        continue
                    out.sendto(data, ("127.0.0.1", self.target_port))
                    self.forwarded += 1

        self._thread = threading.Thread(target=forward, name="multicast-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        proc, self.proc = self.proc, None
        stop_process(proc, 5)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
