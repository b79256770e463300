"""Where bundles come from: a local file, the boot partition, or an https URL (with ``requests``).

Downloads are hostile-server safe: a connect timeout, a deadline for the whole download enforced by a timer that
shuts the socket down (so a server trickling one byte at a time cannot hold it, whatever the per-read timeout), a
byte bound checked before (``Content-Length``) and during the transfer, no content decoding (no gzip bomb),
certificates always verified, at most 5 redirects.  The body goes to a file in the update's own state directory and
is only ever read back through :func:`appliance.update.bundle.verify_and_extract`: an interrupted or corrupted
download can never reach the running release.  Credentials in URLs are redacted in every message
(:func:`redact`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from appliance.redaction import redact_url

__all__ = ["BOOT_GLOB", "ChannelEntry", "DownloadError", "boot_bundles", "download", "read_channel", "redact"]

BOOT_GLOB = "teleinfo-update-*.tar"
MAX_INDEX = 64 * 1024
MAX_REDIRECTS = 5


class DownloadError(Exception):
    """The download failed; the message names the URL redacted."""


redact = redact_url  # the one helper (appliance.redaction); the name the update code has always used


@dataclass(frozen=True)
class ChannelEntry:
    """What ``<url>/<channel>.json`` says of this machine's bundle."""

    version: str
    url: str
    size: int


def _get(url: str, *, connect_timeout: float, deadline: float, ca_file: str = "") -> Any:
    import requests

    if not url.startswith(("https://", "http://")):
        raise DownloadError(f"{redact(url)}: only http(s) URLs are fetched")
    session = requests.Session()
    session.trust_env = False  # no proxy or .netrc credentials from the environment: the configuration says all
    session.max_redirects = MAX_REDIRECTS
    read_timeout = max(0.1, min(30.0, deadline - time.monotonic()))
    try:
        response = session.get(
            url,
            stream=True,
            timeout=(connect_timeout, read_timeout),
            verify=ca_file or True,
            headers={"Accept-Encoding": "identity", "User-Agent": "teleinfo-update"},
        )
    except requests.exceptions.SSLError:
        raise DownloadError(f"{redact(url)}: TLS certificate not verified") from None
    except requests.exceptions.ConnectTimeout:
        raise DownloadError(f"{redact(url)}: no connection within {connect_timeout:g} s") from None
    except requests.exceptions.TooManyRedirects:
        raise DownloadError(f"{redact(url)}: more than {MAX_REDIRECTS} redirects") from None
    except requests.exceptions.RequestException as e:
        raise DownloadError(f"{redact(url)}: {type(e).__name__}") from None
    if response.status_code != 200:
        response.close()
        raise DownloadError(f"{redact(url)}: HTTP {response.status_code}")
    return response


def _stream(response: Any, url: str, sink: Any, *, deadline: float, max_bytes: int) -> int:
    """Copy the body into ``sink`` within ``deadline`` (monotonic) and ``max_bytes``; the byte count."""
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise DownloadError(f"{redact(url)}: {length} bytes announced, more than the {max_bytes} allowed")
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        try:
            response.raw.shutdown()  # wakes a recv() blocked on a silent or trickling server
        except (OSError, ValueError, RuntimeError, AttributeError):
            response.close()

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    total = 0
    try:
        while True:
            try:
                chunk = response.raw.read1(256 * 1024, decode_content=False)
            except Exception as e:  # urllib3's own errors are not all OSError; none may escape raw
                if expired.is_set():
                    break
                raise DownloadError(
                    f"{redact(url)}: connection lost after {total} bytes ({type(e).__name__})"
                ) from None
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise DownloadError(f"{redact(url)}: more than the {max_bytes} bytes allowed, cut off")
            sink.write(chunk)
            if expired.is_set() or time.monotonic() > deadline:
                expired.set()
                break
    finally:
        timer.cancel()
        response.close()
    if expired.is_set():
        raise DownloadError(f"{redact(url)}: not complete within the deadline ({total} bytes received)")
    if length is not None and length.isdigit() and total != int(length):
        raise DownloadError(f"{redact(url)}: truncated ({total} of {length} bytes)")
    return total


def download(
    url: str,
    directory: Path,
    *,
    connect_timeout: float,
    timeout: float,
    max_bytes: int,
    ca_file: str = "",
) -> Path:
    """Download ``url`` into ``directory/partial`` (replaced); the file, once complete.  Raises
    :class:`DownloadError` (the partial file is removed)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / "bundle.tar"
    partial = directory / "partial"
    deadline = time.monotonic() + timeout
    response = _get(url, connect_timeout=connect_timeout, deadline=deadline, ca_file=ca_file)
    try:
        with partial.open("wb") as f:
            _stream(response, url, f, deadline=deadline, max_bytes=max_bytes)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target


def read_channel(
    base_url: str, channel: str, machine: str, *, connect_timeout: float, timeout: float, ca_file: str = ""
) -> ChannelEntry:
    """This machine's entry of ``<base_url>/<channel>.json``."""
    import io

    index_url = base_url.rstrip("/") + f"/{channel}.json"
    deadline = time.monotonic() + timeout
    response = _get(index_url, connect_timeout=connect_timeout, deadline=deadline, ca_file=ca_file)
    buffer = io.BytesIO()
    _stream(response, index_url, buffer, deadline=deadline, max_bytes=MAX_INDEX)
    try:
        doc = json.loads(buffer.getvalue())
        entry = doc["bundles"][machine]
        version, file, size = str(entry["version"]), str(entry["file"]), int(entry["size"])
    except (ValueError, KeyError, TypeError):
        raise DownloadError(f"{redact(index_url)}: no bundle for {machine} in the channel file") from None
    if "/" in file or "\\" in file or not file.endswith(".tar"):
        raise DownloadError(f"{redact(index_url)}: bad bundle file name in the channel file")
    return ChannelEntry(version=version, url=urljoin(index_url, file), size=size)


def boot_bundles(boot: Path) -> list[Path]:
    """Bundles dropped on the boot partition, oldest name first."""
    try:
        return sorted(p for p in boot.glob(BOOT_GLOB) if p.is_file() and not p.is_symlink())
    except OSError:
        return []
