"""Downloading bundles from a hostile or broken server, on 127.0.0.1 only: a server that trickles, one that cuts
the body short, one that announces or sends more than the bound, one that redirects forever, a TLS certificate
nobody vouched for; credentials in URLs never appear in a message; a downloaded bundle with a bad signature is
refused like a local one, with nothing changed; the channel file names this machine's bundle."""

from __future__ import annotations

import json
import platform
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.update.bundle import build_bundle, public_pem
from appliance.update.fetch import DownloadError, download, read_channel, redact

REPO = Path(__file__).resolve().parent.parent
BODY = bytes(range(256)) * 4096  # 1 MiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}  # noqa: RUF012 - set by the fixture
    seen_auth: list[str] = []  # noqa: RUF012

    def log_message(self, *_args: object) -> None:
        pass

    def _head(self, length: int | None, status: int = 200, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if length is None:
            self.send_header("Connection", "close")
        self.end_headers()

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        path = self.path.split("?")[0]
        try:
            if path in self.files:
                self._head(len(self.files[path]))
                self.wfile.write(self.files[path])
            elif path == "/trickle":
                self._head(len(BODY))
                for i in range(600):  # at most 60 s, one byte every 0.1 s
                    self.wfile.write(BODY[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
            elif path == "/truncated":
                self._head(len(BODY))
                self.wfile.write(BODY[: len(BODY) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif path == "/announced-big":
                self._head(10**9)
                self.wfile.write(BODY[:1000])
            elif path == "/endless":  # no Content-Length: a body until the connection closes
                self._head(None)
                for _ in range(64):
                    self.wfile.write(BODY)
                self.close_connection = True
            elif path == "/loop":
                self._head(0, 302, {"Location": "/loop"})
            else:
                self._head(0, 404)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _download(url: str, tmp_path: Path, **kw: float) -> Path:
    args: dict[str, float] = {"connect_timeout": 2.0, "timeout": 10.0, "max_bytes": 4 * len(BODY)} | kw
    return download(url, tmp_path / "dl", connect_timeout=args["connect_timeout"], timeout=args["timeout"],
                    max_bytes=int(args["max_bytes"]))  # fmt: skip


def test_a_complete_download(server: str, tmp_path: Path) -> None:
    Handler.files = {"/b.tar": BODY}
    path = _download(f"{server}/b.tar", tmp_path)
    assert path.read_bytes() == BODY and not (tmp_path / "dl" / "partial").exists()


def test_a_trickling_server_is_cut_at_the_whole_download_deadline(server: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="not complete within the deadline"):
        _download(f"{server}/trickle", tmp_path, timeout=1.5)
    took = time.monotonic() - t0
    print(f"trickling server cut after {took:.2f} s (deadline 1.5 s)")
    assert took < 4.0  # the deadline holds for the whole download, not per read
    assert not list((tmp_path / "dl").iterdir())  # the partial file is gone


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/truncated", "truncated|connection lost"),
        ("/announced-big", "more than the"),
        ("/endless", "more than the"),
        ("/loop", "more than 5 redirects"),
        ("/missing", "HTTP 404"),
    ],
)
def test_broken_answers_leave_nothing(server: str, tmp_path: Path, path: str, message: str) -> None:
    with pytest.raises(DownloadError, match=message):
        _download(f"{server}{path}", tmp_path)
    assert not (tmp_path / "dl" / "bundle.tar").exists() and not (tmp_path / "dl" / "partial").exists()


def test_nothing_listening_and_credentials_redacted(tmp_path: Path) -> None:
    from tests.util import free_port

    url = f"http://user:s3cret@127.0.0.1:{free_port()}/b.tar?token=abc123"
    with pytest.raises(DownloadError) as e:
        _download(url, tmp_path)
    assert "s3cret" not in str(e.value) and "abc123" not in str(e.value) and "user" not in str(e.value)
    assert redact(url).startswith("http://***@127.0.0.1:") and redact(url).endswith("/b.tar?***")
    assert redact("https://example.org/x") == "https://example.org/x"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_https_certificates_are_verified(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    Handler.files = {"/b.tar": BODY}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/b.tar"
        with pytest.raises(DownloadError, match="TLS certificate not verified"):
            _download(url, tmp_path)
        path = download(url, tmp_path / "ok", connect_timeout=2, timeout=10, max_bytes=len(BODY), ca_file=str(cert))
        assert path.read_bytes() == BODY
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_channel_file_names_this_machines_bundle(server: str) -> None:
    doc = {"format": 1, "channel": "stable", "bundles": {platform.machine(): {"version": "1.2.3",
           "file": "teleinfo-update-1.2.3-x.tar", "size": 10, "sha256": "0" * 64}}}  # fmt: skip
    Handler.files = {"/updates/stable.json": json.dumps(doc).encode(), "/updates/evil.json": b'{"bundles": 1}'}
    entry = read_channel(f"{server}/updates", "stable", platform.machine(), connect_timeout=2, timeout=5)
    assert entry.version == "1.2.3" and entry.url == f"{server}/updates/teleinfo-update-1.2.3-x.tar"
    with pytest.raises(DownloadError, match="no bundle for"):
        read_channel(f"{server}/updates", "evil", platform.machine(), connect_timeout=2, timeout=5)


def test_downloaded_bundle_with_a_bad_signature_is_refused(server: str, tmp_path: Path) -> None:
    """teleinfo update install URL: downloaded, verified, refused; the URL's password never printed."""
    root = tmp_path / "root"
    release = root / "opt" / "teleinfo" / "releases" / "0.1.0-image"
    release.mkdir(parents=True)
    (release / "release.json").write_text('{"version": "0.1.0", "config_schema": 1}')
    (root / "opt" / "teleinfo" / "current").symlink_to("releases/0.1.0-image")
    keys = root / "etc" / "teleinfo" / "update-keys"
    keys.mkdir(parents=True)
    (keys / "release.pem").write_bytes(public_pem(Ed25519PrivateKey.generate()))
    (root / "var" / "lib" / "teleinfo-update").mkdir(parents=True)  # as the image makes it
    (root / "etc" / "teleinfo" / "teleinfo.toml").write_text("[health]\nenabled = false\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "teleinfo_appliance-0.2.0-py3-none-any.whl").write_bytes(b"PK")
    (wheels / "requirements.txt").write_text("")
    bundle, _ = build_bundle(tmp_path / "out", wheels=wheels, units=REPO / "systemd", firmware=REPO / "firmware",
                             key=Ed25519PrivateKey.generate(), machine=platform.machine())  # fmt: skip
    Handler.files = {"/b.tar": bundle.read_bytes()}
    before = sorted(str(p) for p in root.rglob("*") if not p.is_relative_to(root / "var/lib/teleinfo-update"))
    url = server.replace("http://", "http://admin:hunter2@") + "/b.tar"
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "update", "--root", str(root), "install", url],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1
    assert "bad signature" in result.stderr and "refused, nothing changed" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "http://***@127.0.0.1" in result.stderr
    after = sorted(str(p) for p in root.rglob("*") if not p.is_relative_to(root / "var/lib/teleinfo-update"))
    assert after == before  # the download itself went to the update's own state directory, then removed
    assert (root / "opt" / "teleinfo" / "current").readlink() == Path("releases/0.1.0-image")
    assert not list((root / "var/lib/teleinfo-update/downloads").iterdir())
