"""The install transaction: verify, build the new release beside the running one, switch, gate on health, commit
or roll back.  The layout and the phases are described in :mod:`appliance.update.guard`.

1. **Lock** (``flock``): never two updates at once.  An earlier transaction whose installer died is finished first
   (the same recovery the guard does at the next start).
2. **Verify** the bundle into a staging directory (:func:`~appliance.update.bundle.verify_and_extract`): signature,
   every hash, every path.  Then the target (Python version, machine) and the version (no downgrade unless asked).
   Nothing of the running system has changed so far.
3. **Prepare** ``releases/<version>-<id>/``: a virtualenv, ``pip install --no-index`` from the bundle's own wheels
   (nothing is downloaded), ``teleinfo --version`` of the new release checked, the configuration migrated and
   validated *by the new release* (refused with its reasons, nothing switched), ``release.json`` written last.
4. **Quiet moment**: wait (bounded) until no output holds spooled frames, so the restart does not cut a replay.
5. **Switch**: back up the configuration and the units it replaces, write them, rename the ``current`` link, then
   restart the service.
6. **Gate**: within ``deadline``, the service must report READY, a health ``/status`` of the *new* version with
   state ``up`` (and decoded frames, when frames flowed before the switch), with no restart in between (each start
   passes the guard, which counts it).  Then **commit** (``previous`` -> the old release, older ones removed, the
   guard script refreshed, the firmware block applied if it changed).  Otherwise **roll back** (the old release,
   configuration and units back, the service restarted) and say why.

A kill or power cut at any point leaves either the old release running (before the switch, or after the guard's
rollback at the next start) or a committed new one.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.schema import Config
from appliance.update import guard as g
from appliance.update.bundle import APPLIANCE, BundleError, Manifest, load_public_keys, verify_and_extract
from appliance.update.control import ServiceControl, health_address, probe, spooled
from appliance.update.guard import Lock, Paths

__all__ = ["Outcome", "RolledBack", "UpdateError", "Updater", "compare_versions", "seed_release"]

_LOG = logging.getLogger("appliance.update")
SETTLE = 2.0  # seconds the new release must stay up, without a restart, once the gate's conditions are met
POLL = 0.25


class UpdateError(Exception):
    """The update was refused or failed before the switch: the running release was not touched."""


class RolledBack(UpdateError):
    """The new release did not pass the gate: the previous one was put back."""


@dataclass(frozen=True)
class Outcome:
    """What an install did: the release and version now current, and a message for the user."""

    release: str
    version: str
    message: str
    changed: bool = True


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older, equal or newer than ``b`` (numeric release segments first, then a
    pre-release suffix sorts before the release: 0.2.0rc1 < 0.2.0)."""

    def key(v: str) -> tuple[tuple[int, ...], int, str]:
        m = re.match(r"^(\d+(?:\.\d+)*)(.*)$", v)
        if m is None:
            return ((), 0, v)
        nums = tuple(int(x) for x in m.group(1).split("."))
        while nums and nums[-1] == 0:
            nums = nums[:-1]
        rest = m.group(2)
        rank = 1 if rest == "" or rest.startswith(("+", ".post", "post")) else 0
        return (nums, rank, rest)

    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def _clean_env() -> dict[str, str]:
    """The environment for pip and the new release's commands: no host pip settings (indexes, constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def release_record(paths: Paths, name: str) -> dict[str, Any] | None:
    return g.read_json(paths.release(name) / "release.json")


def seed_release(paths: Paths, name: str, source: str) -> dict[str, Any]:
    """Declare an already installed virtualenv ``releases/<name>`` the running release (the image build does this
    for the release it ships): ``release.json``, ``current`` and ``bin`` links."""
    from appliance import __version__
    from appliance.update.migrate import CONFIG_SCHEMA

    release = paths.release(name)
    if not (release / "bin" / "teleinfo").exists():
        raise UpdateError(f"{release}/bin/teleinfo does not exist: not a release")
    record = {
        "name": name,
        "version": __version__,
        "config_schema": CONFIG_SCHEMA,
        "installed": float(os.environ.get("SOURCE_DATE_EPOCH") or time.time()),  # reproducible image builds
        "source": source,
    }
    g.write_json(release / "release.json", record)
    g.set_link(paths.current, f"releases/{name}")
    if not paths.bin.is_symlink():
        g.set_link(paths.bin, "current/bin")
    return record


def _pinned(line: str) -> tuple[str, str]:
    """``(normalised name, version)`` of a ``pip freeze`` line ``Name==version``."""
    name, _, version = line.partition("==")
    return name.strip().lower().replace("_", "-"), version.strip()


def _relocate(release: Path, old: Path) -> None:
    """Point a copied virtualenv's scripts and ``pyvenv.cfg`` at ``release`` instead of ``old``: each file naming
    ``old`` is written anew (never modified in place: it is a hard link to the running release's file)."""
    before, after = str(old).encode(), str(release).encode()
    for path in [release / "pyvenv.cfg", *sorted((release / "bin").iterdir())]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if before not in data:
            continue
        tmp = path.with_name(f".{path.name}.relocated")
        tmp.write_bytes(data.replace(before, after))
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)


class Updater:
    """One install (or a status query) on the system under ``paths.root``."""

    def __init__(
        self,
        paths: Paths,
        cfg: Config,
        control: ServiceControl,
        *,
        python: str = "/usr/bin/python3",
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.paths = paths
        self.cfg = cfg
        self.control = control
        self.python = python
        self._say = say or _LOG.info
        self.messages: list[str] = []  # what was said, in order (the boot partition's log gets the last one)
        self.health = health_address(cfg.health)

    def say(self, message: str) -> None:
        self.messages.append(message)
        self._say(message)

    # --- the transaction ---------------------------------------------------------------------------------
    def install(
        self, bundle: Path, *, source: str, allow_downgrade: bool = False, channel: str | None = None
    ) -> Outcome:
        """Install ``bundle`` (a verified file path): see the module's docstring.  Raises :class:`UpdateError`
        (nothing changed) or :class:`RolledBack` (switched, then put back)."""
        paths = self.paths
        with Lock(paths):
            done = g.recover(paths, "its installer is gone")
            if done is not None:
                self.say(f"an earlier update was unfinished: {done['phase']}: {done['reason']}")
            g.remove_incomplete(paths)
            current = g.link_name(paths.current)
            if current is None or release_record(paths, current) is None:
                raise UpdateError(
                    f"{paths.current} does not name an installed release: this system predates updates "
                    "(image/README.md, recovering by hand)"
                )
            staging = paths.releases / f".incoming-{uuid.uuid4().hex[:8]}"
            try:
                manifest = self._verify(bundle, staging)
                self._check_target(manifest, current, allow_downgrade, channel)
                if manifest.release_name == current:
                    return Outcome(current, manifest.version, f"release {current} is already running", changed=False)
                tx = self._begin(manifest, current, source)
                try:
                    self._prepare(manifest, staging, current)
                except BaseException as e:
                    g.abort(paths, tx, f"refused before the switch: {e}")
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return self._switch_and_gate(tx, manifest, current)

    def _verify(self, bundle: Path, staging: Path) -> Manifest:
        keys = load_public_keys(self.paths.keys)
        max_bytes = int(self.cfg.update.max_mb * 1e6)
        try:
            manifest = verify_and_extract(bundle, keys, staging, max_bytes)
        except BundleError as e:
            raise UpdateError(f"bundle refused: {e}") from None
        self.say(f"bundle verified: teleinfo {manifest.version} ({manifest.release_name}), {len(manifest.files)} files")
        return manifest

    def _target(self) -> tuple[str, str]:
        out = subprocess.run(
            [self.python, "-c", "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine())"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        return out[0], out[1]

    def _check_target(self, m: Manifest, current: str, allow_downgrade: bool, channel: str | None) -> None:
        python, machine = self._target()
        if (m.python, m.machine) != (python, machine):
            raise UpdateError(
                f"the bundle is for Python {m.python} on {m.machine}, this system is {python} on {machine}"
            )
        if channel is not None and m.channel != channel:
            raise UpdateError(f"the bundle is of channel {m.channel!r}, this appliance follows {channel!r}")
        running = (release_record(self.paths, current) or {}).get("version", "0")
        if compare_versions(m.version, running) < 0 and not allow_downgrade:
            raise UpdateError(f"{m.version} is older than the running {running}: a downgrade needs --allow-downgrade")

    def _begin(self, m: Manifest, current: str, source: str) -> dict[str, Any]:
        tx = {
            "id": uuid.uuid4().hex[:12],
            "phase": "preparing",
            "from": current,
            "to": m.release_name,
            "version": m.version,
            "source": source,
            "started": time.time(),
            "boot_id": _boot_id(),
            "pid": os.getpid(),
        }
        g.write_json(self.paths.transaction, tx)
        return tx

    def _prepare(self, m: Manifest, staging: Path, current: str) -> None:
        paths = self.paths
        release = paths.release(m.release_name)
        previous = g.link_name(paths.previous)
        if m.release_name == previous and release_record(paths, previous) is not None:
            self.say(f"release {previous} (the previous one) is already installed: reused")
        else:
            shutil.rmtree(release, ignore_errors=True)
            release.mkdir(parents=True)
            os.replace(staging, release / "bundle")
            self._venv(release, m, current)
        self._migrate_config(release, m, current)
        record = {
            "name": m.release_name,
            "version": m.version,
            "config_schema": m.config_schema,
            "installed": time.time(),
            "manifest_sha256": m.digest,
            "packages": m.packages,
        }
        g.sync_filesystem(release)  # the venv on the disk before release.json says it is whole
        g.write_json(release / "release.json", record)

    def _run(self, argv: list[str], what: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=_clean_env(), check=False
            )
        except subprocess.TimeoutExpired:
            raise UpdateError(f"{what}: no result within {timeout:g} s") from None
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-6:]
            raise UpdateError(f"{what} failed (exit {result.returncode}): " + " | ".join(tail))
        return result

    def _venv(self, release: Path, m: Manifest, current: str) -> None:
        t0 = time.monotonic()
        reused = self._clone(release, m, current)
        if reused is None:
            self._run([self.python, "-m", "venv", str(release)], "creating the virtualenv")
        wheels = release / "bundle" / "wheels"
        self._run(
            [
                str(release / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--find-links",
                str(wheels),
                "-r",
                str(wheels / "requirements.txt"),
                str(release / m.appliance_wheel.replace("wheels/", "bundle/wheels/", 1)),
            ],
            "pip install from the bundle's wheels",
        )
        freeze = self._run([str(release / "bin" / "python"), "-m", "pip", "freeze", "--all"], "pip freeze")
        (release / "installed.txt").write_text(freeze.stdout)
        installed = dict(_pinned(line) for line in freeze.stdout.splitlines() if "==" in line)
        wrong = {n: installed.get(n) for n, v in m.packages.items() if n != APPLIANCE and installed.get(n) != v}
        if wrong:
            raise UpdateError(f"the new release's packages differ from the manifest's: {wrong}")
        version = self._run([str(release / "bin" / "teleinfo"), "--version"], "the new release's teleinfo --version")
        if version.stdout.split()[-1:] != [m.version]:
            raise UpdateError(f"the new release says {version.stdout.strip()!r}, the manifest {m.version}")
        how = f"pip --no-index, unchanged packages reused from {reused}" if reused else "pip --no-index"
        self.say(f"release {m.release_name} installed in {time.monotonic() - t0:.1f} s ({how})")

    def _clone(self, release: Path, m: Manifest, current: str) -> str | None:
        """Start the new virtualenv as a hard-linked copy of the running release's, so pip installs only the
        packages whose version changed (usually the appliance alone: seconds instead of minutes on a Pi, and
        little written to the card).  Safe for the running release: pip and Python never write into an installed
        file, they unlink, rename or create (and the scripts with the release's path are rewritten as new
        files).  Not when the appliance's version is the same (pip would keep the running code): the caller then
        makes a fresh virtualenv, as it does when this fails.  Returns the release copied, or None."""
        old = self.paths.release(current)
        record = release_record(self.paths, current) or {}
        if record.get("version") == m.version or not (old / "pyvenv.cfg").is_file():
            return None
        try:
            for name in ("pyvenv.cfg", "bin", "include", "lib", "lib64"):
                if (old / name).exists() or (old / name).is_symlink():
                    subprocess.run(
                        ["cp", "-a", "--link", str(old / name), str(release / name)],
                        check=True, capture_output=True, timeout=300,
                    )  # fmt: skip
            _relocate(release, old)
        except (OSError, subprocess.SubprocessError) as exc:
            self.say(f"could not reuse {current}'s packages ({exc}): a fresh virtualenv")
            for name in ("pyvenv.cfg", "bin", "include", "lib", "lib64"):
                path = release / name
                if path.is_symlink() or path.is_file():
                    path.unlink()
                else:
                    shutil.rmtree(path, ignore_errors=True)
            return None
        return current

    def _migrate_config(self, release: Path, m: Manifest, current: str) -> None:
        """The new release migrates and validates the running configuration; refused with its reasons."""
        paths = self.paths
        schema = int((release_record(paths, current) or {}).get("config_schema", 1))
        target = release / "teleinfo.toml.new"
        target.unlink(missing_ok=True)
        if not paths.config.exists():
            return
        result = subprocess.run(
            [
                str(release / "bin" / "teleinfo"),
                "update",
                "--config",
                str(paths.config),
                "migrate-config",
                "--from-schema",
                str(schema),
                "--output",
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=_clean_env(),
            check=False,
        )
        if result.returncode != 0:
            reasons = (result.stderr or result.stdout).strip()
            raise UpdateError(f"the configuration does not suit release {m.version}:\n{reasons}")
        if target.exists():
            self.say(f"configuration migrated from schema {schema}: {result.stdout.strip()}")

    # --- switch, gate, commit or roll back -----------------------------------------------------------------
    def _switch_and_gate(self, tx: dict[str, Any], m: Manifest, old: str) -> Outcome:
        """With the lock held (by :meth:`install`)."""
        paths = self.paths
        release = paths.release(m.release_name)
        before = self._status()
        flowing = isinstance(before, dict) and before.get("last_frame_age_s") is not None
        self._wait_quiet()
        tx = self._backup_and_plan(tx, release)
        g.write_json(paths.transaction, tx)
        self._apply_files(tx, release)
        g.set_link(paths.current, f"releases/{m.release_name}")
        if not paths.bin.is_symlink():
            g.set_link(paths.bin, "current/bin")
        paths.trial_starts.unlink(missing_ok=True)
        tx = {**tx, "phase": "trial", "trial_started": time.time()}
        g.write_json(paths.transaction, tx)
        self.say(f"switched to {m.release_name}; restarting the service (deadline {self.cfg.update.deadline:g} s)")
        if tx.get("units"):
            self.control.reload_units()
        t0 = time.monotonic()
        try:
            self.control.restart()
            failure = self._gate(m.version, flowing, trial=True)
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
        if failure is None:
            self._commit(tx, release, old)
            took = time.monotonic() - t0
            return Outcome(m.release_name, m.version, f"release {m.release_name} committed ({took:.1f} s to health up)")
        self.say(f"release {m.release_name} failed the gate: {failure}; putting {old} back")
        g.roll_back_files(paths, tx, f"{m.release_name} failed: {failure}; {old} put back")
        if tx.get("units"):
            self.control.reload_units()
        self.control.restart()
        back = self._gate(_version_of(paths, old), False)
        state = "runs again" if back is None else f"did not come back either ({back})"
        raise RolledBack(f"release {m.release_name} failed: {failure}. Release {old} {state}.")

    def _status(self) -> dict[str, Any] | str:
        if self.health is None:
            return "health socket disabled ([health] enabled = false)"
        return probe(*self.health)

    def _wait_quiet(self) -> None:
        """Until no output holds spooled frames (bounded): a restart then never cuts a spool replay short."""
        deadline = time.monotonic() + self.cfg.update.quiet_timeout
        waited = False
        while True:
            doc = self._status()
            if not isinstance(doc, dict):
                return
            held = spooled(doc)
            if not held:
                if waited:
                    self.say("spools drained")
                return
            if time.monotonic() > deadline:
                self.say(f"spools still hold frames ({held}) after {self.cfg.update.quiet_timeout:g} s: "
                         "restarting anyway (the spool is durable and resumes)")  # fmt: skip
                return
            if not waited:
                self.say(f"waiting for the spools to drain before the restart: {held}")
                waited = True
            time.sleep(1.0)

    def _backup_and_plan(self, tx: dict[str, Any], release: Path) -> dict[str, Any]:
        paths = self.paths
        shutil.rmtree(paths.backup, ignore_errors=True)
        (paths.backup / "units").mkdir(parents=True)
        config_new = release / "teleinfo.toml.new"
        config_replaced = config_new.exists() and paths.config.exists()
        if config_replaced:
            g.copy_durably(paths.config, paths.backup / "teleinfo.toml", 0o640)
        units: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for unit in sorted((release / "bundle" / "systemd").iterdir()):
                installed = paths.units / unit.name
                if installed.exists() and filecmp.cmp(installed, unit, shallow=False):
                    continue
                if installed.exists():
                    g.copy_durably(installed, paths.backup / "units" / unit.name)
                    units[unit.name] = "replaced"
                else:
                    units[unit.name] = "added"
        return {**tx, "phase": "switching", "config_replaced": config_replaced, "units": units}

    def _apply_files(self, tx: dict[str, Any], release: Path) -> None:
        paths = self.paths
        if tx["config_replaced"]:
            g.copy_durably(release / "teleinfo.toml.new", paths.config, 0o640)
            with contextlib.suppress(OSError, LookupError):
                shutil.chown(paths.config, "root", "teleinfo")
        for name in tx["units"]:
            g.copy_durably(release / "bundle" / "systemd" / name, paths.units / name)

    def _gate(self, version: str, need_frames: bool, *, trial: bool = False) -> str | None:
        """None once the service runs ``version``, READY and up (with frames if ``need_frames``) and stays so for
        :data:`SETTLE` s without a restart; else why not, at the deadline.  On ``trial``, only a start the guard
        counted is the new release's (before it, systemd may still show the old process)."""
        deadline = time.monotonic() + self.cfg.update.deadline
        why = "no start seen"
        good_since: float | None = None
        while time.monotonic() < deadline:
            starts = _count_lines(self.paths.trial_starts)
            if starts > 1:
                return f"the service restarted during the trial ({starts} starts: crash, watchdog or bad configuration)"
            state = self.control.state()
            doc = self._status() if state.ready else None
            if state.failed:
                return f"the service failed ({state.detail})"
            if trial and starts == 0:
                why, good_since = "the new release has not started yet (no start counted by the guard)", None
            elif not state.ready:
                why, good_since = f"READY not received ({state.detail})", None
            elif not isinstance(doc, dict):
                why, good_since = str(doc), None
            elif doc.get("version") != version:
                why, good_since = f"health reports version {doc.get('version')!r}, not {version}", None
            elif doc.get("health", {}).get("state") != "up":
                why, good_since = f"health is {doc.get('health', {}).get('line', '?')!r}", None
            elif need_frames and not doc.get("frames"):
                why, good_since = "no frame decoded yet (frames flowed before the update)", None
            else:
                good_since = good_since or time.monotonic()
                if time.monotonic() - good_since >= SETTLE:
                    return None
            time.sleep(POLL)
        return f"not healthy within {self.cfg.update.deadline:g} s: {why}"

    def _commit(self, tx: dict[str, Any], release: Path, old: str) -> None:
        paths = self.paths
        if (paths.release(old) / "release.json").is_file():
            g.set_link(paths.previous, f"releases/{old}")
        tx = {**tx, "phase": "committed", "ended": time.time(), "reason": "READY and health up"}
        g.write_json(paths.transaction, tx)
        paths.trial_starts.unlink(missing_ok=True)
        g.append_history(paths, g._history_entry(tx))
        keep = {g.link_name(paths.current), g.link_name(paths.previous)}
        for entry in paths.releases.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
        self._refresh_guard(release)
        self._apply_firmware(release)
        self.say(f"release {release.name} committed; previous release {old} kept for a rollback")

    def _refresh_guard(self, release: Path) -> None:
        """The guard outside the releases is the new release's copy (standard library only)."""
        found = sorted(release.glob("lib/python3*/site-packages/appliance/update/guard.py"))
        target = self.paths.guard_script
        if found and (not target.exists() or not filecmp.cmp(found[0], target, shallow=False)):
            g.copy_durably(found[0], target, 0o755)

    def _apply_firmware(self, release: Path) -> None:
        """On a Pi, the bundle's UART block goes to config.txt; a change needs a reboot (reported as pending)."""
        apply = release / "bundle" / "firmware" / "apply.py"
        boot = self.paths.boot
        if not apply.exists() or not (boot / "config.txt").exists():
            return
        check = subprocess.run(
            [sys.executable, str(apply), "--boot", str(boot), "--check"], capture_output=True, text=True, check=False
        )
        if check.returncode == 0:
            return
        done = subprocess.run(
            [sys.executable, str(apply), "--boot", str(boot)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            self.say(f"firmware block not applied: {done.stderr.strip()[-300:]}")
            return
        self.paths.run.mkdir(parents=True, exist_ok=True)
        (self.paths.run / "reboot-required").write_text("*** System restart required ***\n")
        with (self.paths.run / "reboot-required.pkgs").open("a") as f:
            f.write("teleinfo-firmware\n")
        self.say("firmware block updated on the boot partition: a reboot applies it")


def _version_of(paths: Paths, name: str) -> str:
    return str((release_record(paths, name) or {}).get("version", "?"))


def _count_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def status(paths: Paths) -> dict[str, Any]:
    """The releases on disk, the running one, the last attempts: what ``teleinfo update status`` shows."""
    current, previous = g.link_name(paths.current), g.link_name(paths.previous)
    releases = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(paths.releases.iterdir()):
            record = g.read_json(entry / "release.json")
            role = "current" if entry.name == current else "previous" if entry.name == previous else ""
            releases.append(
                {
                    "name": entry.name,
                    "version": (record or {}).get("version"),
                    "installed": (record or {}).get("installed"),
                    "complete": record is not None,
                    "role": role,
                }
            )
    history = []
    with contextlib.suppress(OSError):
        for line in paths.history.read_text().splitlines()[-10:]:
            with contextlib.suppress(ValueError):
                history.append(json.loads(line))
    return {
        "current": current,
        "previous": previous,
        "releases": releases,
        "transaction": g.read_json(paths.transaction),
        "history": history,
        "machine": platform.machine(),
    }
