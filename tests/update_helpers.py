"""What the update tests need without the internet: wheels, bundles, an installed release, and a small service
manager that runs the real unit's commands.

* :func:`dependency_wheels`: the appliance's dependencies as wheels, **repacked from this virtualenv's installed
  distributions** (their files as RECORD lists them, their own WHEEL tags), so a release virtualenv can be built
  with ``pip install --no-index`` exactly as on the device, offline.  The real architecture's bundle is built by
  ``image/bundle`` from downloaded wheels.
* :func:`appliance_wheel`: the appliance's own wheel from a copy of this checkout, at any version, optionally
  *broken* on purpose (never READY, crashing at start, a configuration schema without its migration...): the
  variants the rollback tests install.  Phase 2's QEMU test can build its broken bundle the same way.
* :class:`Supervisor`: the three things the installer asks of systemd (:class:`appliance.update.control.
  ServiceControl`), by running ``systemd/teleinfo.service``'s own ``ExecStartPre=`` and ``ExecStart=`` lines under
  the test's root, with a real ``$NOTIFY_SOCKET`` for READY, ``Restart=on-failure`` and its start limit.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from appliance.update.control import ServiceState

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "teleinfo.service"
PREFIXED = ("/opt/teleinfo", "/usr/lib/teleinfo", "/etc/teleinfo", "/var/lib/teleinfo")


# --- wheels ------------------------------------------------------------------------------------------------
def _closure(name: str) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``name`` requires, recursively (markers evaluated here, no extras)."""
    env = {k: str(v) for k, v in default_environment().items()}
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(req.name)
    seen.pop(name, None)
    return list(seen.values())


def repack(dist: importlib.metadata.Distribution, dest: Path) -> Path:
    """A wheel of an installed distribution: the files its RECORD lists (scripts aside: pip makes them again from
    entry_points.txt), a fresh RECORD, the file name from its WHEEL tag."""
    files = [f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in str(f)]
    info = next(str(f).split("/")[0] for f in files if str(f).split("/")[0].endswith(".dist-info"))
    wheel_meta = (Path(str(dist.locate_file(f"{info}/WHEEL")))).read_text()
    tags = [line.split(":", 1)[1].strip().split("-") for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))  # py2-none-any + py3-... -> py2.py3-
    target = dest / f"{info.removesuffix('.dist-info')}-{tag}.whl"
    record = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            name = str(f)
            if name.endswith(("/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json")):
                continue
            data = Path(str(dist.locate_file(f))).read_bytes()
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return target


def dependency_wheels(dest: Path) -> Path:
    """Every dependency of teleinfo-appliance as a wheel in ``dest``, with ``requirements.txt`` pinning them."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = []
    for dist in _closure("teleinfo-appliance"):
        repack(dist, dest)
        pins.append(f"{dist.metadata['Name']}=={dist.version}")
    (dest / "requirements.txt").write_text("\n".join(sorted(pins)) + "\n")
    return dest


BREAKS = {
    # READY never reaches systemd: the service runs, health answers, but the manager never sees it started.
    "never-ready": ("appliance/systemd.py", 'self.notify("READY=1")', "pass"),
    # Exits at once at every start: systemd restarts it, the guard counts the starts.
    "crash": (
        "appliance/commands/run.py",
        "    if args.sim_errors is not None",
        '    raise SystemExit("broken on purpose")\n    if args.sim_errors is not None',
    ),
    # A configuration schema 2 without the migration from 1: the install must be refused before the switch.
    "schema-without-migration": ("appliance/update/migrate.py", "CONFIG_SCHEMA = 1", "CONFIG_SCHEMA = 2"),
    # Schema 2 with a migration (logging.level becomes "debug"): the configuration is migrated, backed up.
    "schema-with-migration": (
        "appliance/update/migrate.py",
        "CONFIG_SCHEMA = 1",
        "CONFIG_SCHEMA = 2\n\n\ndef _m1(doc):\n    doc.setdefault('logging', {})['level'] = 'debug'\n"
        "    return ['logging.level set to debug']",
    ),
}


def appliance_wheel(dest: Path, version: str, broken: str | None = None) -> Path:
    """The appliance's wheel at ``version`` (from a copy of this checkout), broken as :data:`BREAKS` says."""
    src = dest / f"src-{version}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "appliance", src / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "appliance" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))
    if broken is not None:
        path, old, new = BREAKS[broken]
        text = (src / path).read_text()
        assert old in text, f"{path} changed: update tests/update_helpers.BREAKS[{broken!r}]"
        text = text.replace(old, new, 1)
        if broken == "schema-with-migration":
            text += "\n\nMIGRATIONS[1] = _m1\n"
        (src / path).write_text(text)
    out = dest / f"wheel-{version}"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull},
    )
    shutil.rmtree(src)
    (wheel,) = out.glob("teleinfo_appliance-*.whl")
    return wheel


def wheels_dir(dest: Path, deps: Path, wheel: Path) -> Path:
    """A bundle's wheels/: the dependency wheels (hard links) and one appliance wheel."""
    dest.mkdir(parents=True)
    for f in deps.iterdir():
        os.link(f, dest / f.name)
    shutil.copy(wheel, dest / wheel.name)
    return dest


# --- an installed system under a root ------------------------------------------------------------------------
def install_release(root: Path, wheels: Path, name: str) -> Path:
    """The image's way: a virtualenv in releases/<name>, pip --no-index from ``wheels``, ``teleinfo update seed``."""
    release = root / "opt" / "teleinfo" / "releases" / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    subprocess.run([sys.executable, "-m", "venv", str(release)], check=True, env=env)
    (wheel,) = wheels.glob("teleinfo_appliance-*.whl")
    subprocess.run(
        [str(release / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
         "-r", str(wheels / "requirements.txt"), str(wheel)],
        check=True,
        env=env,
    )  # fmt: skip
    subprocess.run(
        [str(release / "bin" / "teleinfo"), "update", "--root", str(root), "seed", "--name", name],
        check=True,
        capture_output=True,
        env=env,
    )
    guard = root / "usr" / "lib" / "teleinfo" / "update-guard"
    guard.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "appliance" / "update" / "guard.py", guard)
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    shutil.copy(UNIT, units / "teleinfo.service")
    return release


# --- a service manager for the tests ------------------------------------------------------------------------
class Supervisor:
    """Runs the installed ``teleinfo.service`` under ``root`` as systemd would, for what the installer needs:
    ``ExecStartPre=`` in order (``+`` and ``-`` prefixes honoured as far as a test can: ``-`` ignores a failure),
    then ``ExecStart=`` (plus ``extra_args``) with ``$NOTIFY_SOCKET``; ready once it sends READY=1;
    ``Restart=on-failure`` after ``restart_sec`` with at most ``burst`` starts per ``interval``, then failed.
    Paths under /opt/teleinfo, /usr/lib/teleinfo, /etc/teleinfo and /var/lib/teleinfo are taken under ``root``."""

    def __init__(
        self, root: Path, extra_args: tuple[str, ...] = ("--simulate",), restart_sec: float = 0.5, burst: int = 5
    ) -> None:
        self.root = root
        self.extra_args = extra_args
        self.restart_sec = restart_sec
        self.burst = burst
        self.log = root / "service.log"
        self.starts: list[float] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._failed = False
        self._stopping = False
        self._wanted = False
        self._thread: threading.Thread | None = None
        self._generation = 0

    def _rooted(self, word: str) -> str:
        for prefix in PREFIXED:
            if word == prefix or word.startswith(prefix + "/"):
                return str(self.root) + word
        return word

    def _commands(self) -> tuple[list[tuple[bool, list[str]]], list[str], dict[str, str]]:
        pre: list[tuple[bool, list[str]]] = []
        start: list[str] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "NOTIFY_", "TELEINFO_"))}
        unit = self.root / "etc" / "systemd" / "system" / "teleinfo.service"
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "ExecStartPre":
                ignore = False
                while value[:1] in "+-!@:":
                    ignore = ignore or value[0] == "-"
                    value = value[1:]
                pre.append((ignore, [self._rooted(w) for w in shlex.split(value)]))
            elif key == "ExecStart":
                start = [self._rooted(w) for w in shlex.split(value)]
            elif key == "Environment":
                name, _, val = value.partition("=")
                env[name] = self._rooted(val)
        env["TELEINFO_ROOT"] = str(self.root)
        return pre, [*start, *self.extra_args], env

    def start(self) -> None:
        with self._lock:
            self._wanted, self._failed = True, False
            self.starts = []
            self._generation += 1
            generation = self._generation
        self._thread = threading.Thread(target=self._loop, args=(generation,), daemon=True)
        self._thread.start()

    def _loop(self, generation: int) -> None:
        while True:
            with self._lock:
                if not self._wanted or generation != self._generation:
                    return
                now = time.monotonic()
                self.starts = [t for t in self.starts if now - t < 60] + [now]
                if len(self.starts) > self.burst:
                    self._failed = True
                    return
            status = self._run_once(generation)
            with self._lock:
                if not self._wanted or generation != self._generation:
                    return
            if status == 0:
                return  # Restart=on-failure: a clean exit stays stopped
            time.sleep(self.restart_sec)

    def _run_once(self, generation: int) -> int:
        pre, start, env = self._commands()
        with self.log.open("ab") as log:
            for ignore, argv in pre:
                result = subprocess.run(argv, stdout=log, stderr=log, env=env, check=False, timeout=120)
                if result.returncode != 0 and not ignore:
                    return result.returncode
            sock_path = self.root / f"notify-{generation}-{len(self.starts)}"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(sock_path))
            sock.settimeout(0.2)
            proc = subprocess.Popen(start, stdout=log, stderr=log, env=env | {"NOTIFY_SOCKET": str(sock_path)})
        with self._lock:
            self._proc, self._ready = proc, False
        try:
            while proc.poll() is None:
                try:
                    message = sock.recv(4096)
                except TimeoutError:
                    continue
                if b"READY=1" in message.split(b"\n"):
                    with self._lock:
                        self._ready = True
        finally:
            sock.close()
            sock_path.unlink(missing_ok=True)
            with self._lock:
                self._ready = False
        return proc.returncode

    def _kill(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        with self._lock:
            self._wanted = False
            self._generation += 1
        self._kill()
        if self._thread is not None:
            self._thread.join(20)

    # ServiceControl
    def reload_units(self) -> None:
        """The unit file is read again at every start."""

    def restart(self) -> None:
        self.stop()
        self.start()

    def state(self) -> ServiceState:
        with self._lock:
            return ServiceState(ready=self._ready, failed=self._failed, detail=f"{len(self.starts)} start(s)")

    def service_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
