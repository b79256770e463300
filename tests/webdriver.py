"""Debian's Chromium driven through chromedriver's W3C WebDriver protocol, spoken directly over http.client.

Why not selenium: the protocol calls a test needs (new session, navigate, execute script, window size,
screenshot, browser log) are a dozen small JSON requests; selenium would add a dependency tree and its
Selenium Manager, which looks for drivers on the internet when it is not told where they are.  Here the driver
is ``/usr/bin/chromedriver`` and the browser ``/usr/bin/chromium`` (Debian's ``chromium-driver`` and
``chromium``, installed by ``scripts/test``), nothing else.

Network safety: chromedriver listens on 127.0.0.1 only; Chromium runs headless as root with ``--no-sandbox`` and
without any background networking (updates, sync, safe browsing, QUIC), a fresh ``--user-data-dir``, and a host
resolver that answers nothing, so the only place it can reach is the 127.0.0.1 address a test gives it.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .util import free_port, stop_process, wait_until

__all__ = ["CHROMEDRIVER", "CHROMIUM", "WebDriver", "browser_available"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # nothing resolves but 127.0.0.1
)


def browser_available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


class WebDriverError(AssertionError):
    """A WebDriver command failed (the driver's error and message)."""


class WebDriver:
    """One headless Chromium session.  ``lang`` sets the browser's languages (navigator.languages, Accept-Language)."""

    def __init__(self, workdir: Path, lang: str = "fr-FR", width: int = 1280, height: int = 900) -> None:
        if not browser_available():
            pytest.skip("chromium and chromium-driver are not installed (scripts/test installs them)")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "chromedriver.log"
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}", f"--log-path={self.log_path}", "--allowed-ips=127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.session: str | None = None
        try:
            wait_until(self._ready, timeout=20)
            profile = workdir / "profile"
            profile.mkdir(exist_ok=True)
            caps = {
                "browserName": "chrome",
                "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        *CHROMIUM_ARGS,
                        f"--user-data-dir={profile}",
                        f"--lang={lang}",
                        f"--window-size={width},{height}",
                    ],
                    "prefs": {"intl.accept_languages": lang},
                },
            }
            value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self.session = str(value["sessionId"])
        except BaseException:
            self.quit()
            raise

    def _ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status", timeout=2).get("ready"))
        except (OSError, WebDriverError):
            return False

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, payload, headers)
            response = conn.getresponse()
            data = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        value = data.get("value") if isinstance(data, dict) else None
        if response.status != 200:
            err = value if isinstance(value, dict) else {}
            raise WebDriverError(f"{method} {path}: {err.get('error')}: {str(err.get('message'))[:300]}")
        return value

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    # --- commands ----------------------------------------------------------------------------------------
    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def execute(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body: ``return ...``) in the page."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def text(self, selector: str) -> str | None:
        """The rendered text of the first element matching ``selector``, None when there is none."""
        value = self.execute("const n = document.querySelector(arguments[0]); return n ? n.innerText : null;", selector)
        return None if value is None else str(value)

    def visible(self, selector: str) -> bool:
        script = "const n = document.querySelector(arguments[0]); return !!n && n.offsetParent !== null;"
        return bool(self.execute(script, selector))

    def set_window(self, width: int, height: int) -> None:
        self._call("POST", self._s("/window/rect"), {"width": width, "height": height})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        return path

    def browser_log(self) -> list[dict[str, Any]]:
        """Console messages and page errors since the last call (chromedriver's log extension)."""
        return list(self._call("POST", self._s("/se/log"), {"type": "browser"}))

    def quit(self) -> None:
        try:
            if self.session is not None:
                self._call("DELETE", self._s(""), timeout=20)
        except (OSError, WebDriverError):
            pass
        self.session = None
        stop_process(self.proc)
        self.proc = None
