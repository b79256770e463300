"""Pending reboots and the running release, for the health socket's ``/status`` and ``teleinfo doctor``.

Debian's security updates install themselves (unattended-upgrades), but a new kernel or firmware only runs after
a reboot, which an appliance behind the meter never does on its own.  Reported as pending:

* ``/run/reboot-required`` (unattended-upgrades' kernel hook and other packages write it; the lines of
  ``/run/reboot-required.pkgs`` say which packages);
* the running kernel's modules are gone (``/lib/modules/$(uname -r)`` missing: the kernel package was replaced;
  seen by ``doctor`` only, the service's sandbox hides ``/lib/modules``);
* a newer kernel image installed in ``/boot`` than the running one, or the running one's image rewritten since the
  boot (an update that kept the ABI number).

A pending reboot is information, not an incident: it never changes the health state (``up`` stays ``up``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.records import Record

__all__ = ["UpdateReporter", "pending_reboot", "release_info", "start_reporter"]


def _boot_time(proc: Path) -> float | None:
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _kernel_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release))


def pending_reboot(root: Path = Path("/"), kernel: str | None = None, proc: Path = Path("/proc")) -> list[str]:
    """Why a reboot is pending (empty: none)."""
    kernel = kernel or os.uname().release
    reasons = []
    run = root / "run"
    if (run / "reboot-required").exists():
        try:
            pkgs = sorted(set((run / "reboot-required.pkgs").read_text().split()))
        except OSError:
            pkgs = []
        reasons.append("updates need a reboot" + (f" ({', '.join(pkgs[:8])})" if pkgs else ""))
    boot = root / "boot"
    images = sorted((p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*")), key=_kernel_key)
    try:  # the service's ProtectKernelModules= hides /lib/modules: then this check is only doctor's
        modules = os.listdir(root / "lib" / "modules")
    except OSError:
        modules = []
    if images and modules and kernel not in modules:
        reasons.append(f"the running kernel {kernel} was removed (modules gone)")
    if images and _kernel_key(images[-1]) > _kernel_key(kernel):
        reasons.append(f"kernel {images[-1]} installed, {kernel} running")
    booted = _boot_time(proc)
    try:
        mtime = (boot / f"vmlinuz-{kernel}").stat().st_mtime
    except OSError:
        mtime = None
    if booted is not None and mtime is not None and mtime > booted + 60:
        reasons.append(f"kernel {kernel} updated since the boot")
    return reasons


def release_info(root: Path = Path("/")) -> dict[str, Any]:
    """The running release as the update machinery sees it (``current``), and an unfinished update, if any."""
    from appliance.update.guard import Paths, link_name, read_json

    paths = Paths(root)
    info: dict[str, Any] = {"release": link_name(paths.current)}
    tx = read_json(paths.transaction)
    if tx is not None:
        info["last_update"] = {k: tx.get(k) for k in ("phase", "to", "reason", "ended") if tx.get(k) is not None}
    return info


class UpdateReporter:
    """Keeps the ``update`` section of :class:`~appliance.stats.Stats` fresh (the running release, the last
    update, pending reboots) from a daemon thread, since updates happen while the service runs: the release and
    the transaction when their files change (a stat every ``poll`` s), pending reboots every ``interval`` s.

    With ``publish`` (the service's fan-out), the section also travels as an :class:`~appliance.records.
    UpdateState` record with the running version: at start, whenever it changes, and on :meth:`publish_again`
    (outputs rebuilt by a reload)."""

    def __init__(
        self,
        stats: Any,
        root: Path = Path("/"),
        interval: float = 60.0,
        poll: float = 2.0,
        publish: Callable[[Record], None] | None = None,
    ) -> None:
        from appliance.update.guard import Paths

        self._stats = stats
        self._publish = publish
        self._published: dict[str, Any] | None = None
        self._root = root
        self._paths = Paths(root)
        self._interval = interval
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="update-reporter", daemon=True)
        self._reasons: list[str] = []
        self._seen: tuple[object, ...] = ()

    def _marks(self) -> tuple[object, ...]:
        marks: list[object] = []
        for path in (self._paths.transaction, self._paths.current):
            try:
                st = path.lstat()
                marks.append((st.st_mtime_ns, st.st_ino, st.st_size))
            except OSError:
                marks.append(None)
        return tuple(marks)

    def refresh(self, reboot: bool = True) -> dict[str, Any]:
        if reboot:
            self._reasons = pending_reboot(self._root)
        self._seen = self._marks()
        doc = {**release_info(self._root), "reboot_required": bool(self._reasons), "reboot_reasons": self._reasons}
        self._stats.set_extra("update", doc)
        if doc != self._published:
            self._send(doc)
        return doc

    def _send(self, doc: dict[str, Any]) -> None:
        if self._publish is not None:
            from appliance import __version__
            from appliance.records import UpdateState

            self._published = doc
            self._publish(UpdateState(time.time(), __version__, doc))

    def publish_again(self) -> None:
        """Publish the current section again (the outputs were rebuilt and hold nothing)."""
        if self._published is not None:
            self._send(self._published)

    def start(self) -> UpdateReporter:
        self.refresh()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        last_reboot = time.monotonic()
        while not self._stop.wait(self._poll):
            try:
                due = time.monotonic() - last_reboot >= self._interval
                if due or self._marks() != self._seen:
                    self.refresh(reboot=due)
                    last_reboot = time.monotonic() if due else last_reboot
            except Exception as e:  # a report must never stop the service
                self._stats.set_extra("update", {"error": f"{type(e).__name__}: {e}"[:200]})


def start_reporter(stats: Any, publish: Callable[[Record], None] | None = None) -> UpdateReporter:
    """The reporter the service runs: the system under ``$TELEINFO_ROOT`` (tests), else ``/``."""
    return UpdateReporter(stats, Path(os.environ.get("TELEINFO_ROOT") or "/"), publish=publish).start()
