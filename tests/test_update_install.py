"""Installing update bundles for real, in a temporary root: release virtualenvs built with pip --no-index from the
bundle's wheels, the real ``teleinfo run --simulate`` started from the installed release by the unit's own command
lines (tests/update_helpers.Supervisor, with a real $NOTIFY_SOCKET), the real health socket polled for ``up``.

* a healthy release is committed (health reports the new version; ``previous`` is the old one);
* a release that never sends READY, and one that crashes at every start, are rolled back by the installer;
* a bad signature, a tampered file, a configuration that cannot be migrated: refused, nothing changed;
* a configuration schema change is migrated (and backed up);
* an installer killed with SIGKILL while preparing, or while the new release is on trial, leaves the system so
  that the next start of the service (the guard) puts the previous release back by itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.commands.status import fetch
from appliance.config import load_config
from appliance.update.bundle import build_bundle, public_pem
from appliance.update.guard import Paths, link_name, read_json
from appliance.update.install import RolledBack, UpdateError, Updater
from tests.update_helpers import REPO, Supervisor, appliance_wheel, dependency_wheels, install_release, wheels_dir
from tests.util import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

V1, V2 = "0.9.0", "0.9.1"


class Kit:
    """Wheels, keys and bundles shared by the module's tests (building them is the slow part)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.deps = dependency_wheels(base / "deps")
        self.key = Ed25519PrivateKey.generate()
        self._bundles: dict[tuple[str, str | None], Path] = {}

    def bundle(self, version: str, broken: str | None = None) -> Path:
        if (version, broken) not in self._bundles:
            work = self.base / f"b-{version}-{broken}"
            wheel = appliance_wheel(work, version, broken)
            wheels = wheels_dir(work / "wheels", self.deps, wheel)
            import platform

            path, _ = build_bundle(
                work / "out", wheels=wheels, units=REPO / "systemd", firmware=REPO / "firmware", key=self.key,
                machine=platform.machine(), python=f"{sys.version_info[0]}.{sys.version_info[1]}",
            )  # fmt: skip
            self._bundles[version, broken] = path
        return self._bundles[version, broken]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return Kit(tmp_path_factory.mktemp("update-kit"))


@pytest.fixture(scope="module")
def pristine(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A system with release V1 installed as the image installs it, and a copy of it to start each test from
    (the same path: virtualenvs hold absolute paths)."""
    base = tmp_path_factory.mktemp("update-root")
    root = base / "root"
    wheel = appliance_wheel(kit.base / "v1", V1)
    install_release(root, wheels_dir(kit.base / "v1" / "wheels", kit.deps, wheel), f"{V1}-image")
    (root / "var" / "lib" / "teleinfo-update").mkdir(parents=True)  # as the image makes it
    keys = root / "etc" / "teleinfo" / "update-keys"
    keys.mkdir(parents=True)
    (keys / "release.pem").write_bytes(public_pem(kit.key))
    copy = base / "pristine"
    shutil.copytree(root, copy, symlinks=True)
    return root, copy


@pytest.fixture
def system(pristine: tuple[Path, Path]) -> Iterator[Path]:
    root, copy = pristine
    shutil.rmtree(root)
    shutil.copytree(copy, root, symlinks=True)
    port = free_port()
    (root / "etc" / "teleinfo" / "teleinfo.toml").write_text(
        f'[source]\nkind = "simulator"\n[source.simulator]\nmode = "standard"\n'
        f'[health]\nbind = "127.0.0.1"\nport = {port}\ndown_after = 30\n'
        f"[control]\nenabled = false\n[outputs.multicast]\nenabled = false\n[web]\nenabled = false\n"
        f'[state]\ndirectory = "{root}/var/lib/teleinfo"\n'
        f"[update]\ndeadline = 20\nquiet_timeout = 5\n"
    )
    yield root


@pytest.fixture
def service(system: Path) -> Iterator[Supervisor]:
    supervisor = Supervisor(system)
    supervisor.start()
    yield supervisor
    supervisor.stop()


def _health(root: Path) -> dict[str, object] | None:
    port = load_config(root / "etc" / "teleinfo" / "teleinfo.toml").health.port
    try:
        return fetch("127.0.0.1", port, 2.0)
    except (OSError, ValueError):
        return None


def _up_on(root: Path, version: str) -> bool:
    doc = _health(root)
    return bool(doc and doc.get("version") == version and doc["health"]["state"] == "up" and doc.get("frames"))  # type: ignore[index]


def _updater(root: Path, control: object, **update: float) -> Updater:
    cfg = load_config(root / "etc" / "teleinfo" / "teleinfo.toml")
    if update:
        cfg = dataclasses.replace(cfg, update=dataclasses.replace(cfg.update, **update))
    return Updater(Paths(root), cfg, control, python=sys.executable, say=print)  # type: ignore[arg-type]


def snapshot(root: Path) -> dict[str, str]:
    """Every path of the installed system with its content hash or link target (the service's own runtime files
    aside): equal snapshots mean nothing changed."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith(("var/lib/teleinfo/", "notify-")) or rel in ("service.log", "var/lib/teleinfo-update/lock"):
            continue
        if "__pycache__" in rel:
            continue
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def test_healthy_release_is_committed(kit: Kit, system: Path, service: Supervisor) -> None:
    wait_until(lambda: _up_on(system, V1), timeout=60)
    paths = Paths(system)
    files = [p for p in paths.release(f"{V1}-image").rglob("*") if p.is_file() and not p.is_symlink()]
    running = {p: p.stat().st_ino for p in files}
    updater = _updater(system, service)
    outcome = updater.install(kit.bundle(V2), source="test")
    assert _up_on(system, V2)
    # Only the appliance was new: the other packages were hard-linked from the running release, which pip never
    # wrote into (same files, same inodes), and the new release's scripts name the new release.
    assert any(f"unchanged packages reused from {V1}-image" in m for m in updater.messages), updater.messages
    assert {p: p.stat().st_ino for p in running if p.exists()} == running
    new = paths.release(outcome.release)
    assert (new / "bin" / "teleinfo").read_text().startswith(f"#!{new}/bin/python")
    assert link_name(paths.current) == outcome.release and outcome.release.startswith(f"{V2}-")
    assert link_name(paths.previous) == f"{V1}-image"
    assert (paths.bin / "teleinfo").resolve().is_relative_to(paths.release(outcome.release))
    tx = read_json(paths.transaction)
    assert tx is not None and tx["phase"] == "committed" and tx["from"] == f"{V1}-image"
    assert f"teleinfo_appliance-{V2}-py3" in (paths.release(outcome.release) / "installed.txt").read_text()
    status = subprocess.run(
        [str(paths.bin / "teleinfo"), "update", "--root", str(system), "status"], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert f"running release: {outcome.release}" in status.stdout
    assert "previous" in status.stdout and "committed" in status.stdout

    # /status carries the running version and release (read from current by the service's update reporter).
    def reported() -> bool:
        doc = _health(system)
        return bool(doc and doc["version"] == V2 and doc["update"] == {  # type: ignore[comparison-overlap]
            "release": outcome.release, "reboot_required": False, "reboot_reasons": [],
            "last_update": {"phase": "committed", "to": outcome.release, "reason": "READY and health up",
                            "ended": tx["ended"]},
        })  # fmt: skip

    wait_until(reported, timeout=10)


@pytest.mark.parametrize(
    ("broken", "why"),
    [("never-ready", "READY not received"), ("crash", "the service restarted during the trial")],
)
def test_unhealthy_release_is_rolled_back(kit: Kit, system: Path, service: Supervisor, broken: str, why: str) -> None:
    wait_until(lambda: _up_on(system, V1), timeout=60)
    updater = _updater(system, service, deadline=15.0)
    with pytest.raises(RolledBack, match=why) as e:
        updater.install(kit.bundle(V2, broken), source="test")
    assert "runs again" in str(e.value)
    wait_until(lambda: _up_on(system, V1), timeout=30)
    paths = Paths(system)
    assert link_name(paths.current) == f"{V1}-image"
    tx = read_json(paths.transaction)
    assert tx is not None and tx["phase"] == "rolled-back" and why in tx["reason"]
    assert not paths.release(tx["to"]).exists()  # the failed release is removed
    assert any(why in m for m in updater.messages)  # said on stderr, hence in the journal
    history = [json.loads(line) for line in paths.history.read_text().splitlines()]
    assert history[-1]["phase"] == "rolled-back"


def _tamper(bundle: Path, out: Path) -> Path:
    with tarfile.open(bundle) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "systemd/teleinfo.service":
                data = data.replace(b"NoNewPrivileges=yes", b"NoNewPrivileges=no ")
            dst.addfile(m, io.BytesIO(data))
    return out


def test_bad_signature_or_tampered_file_changes_nothing(kit: Kit, system: Path, tmp_path: Path) -> None:
    before = snapshot(system)
    other = Ed25519PrivateKey.generate()
    work = kit.base / "b-0.9.1-None"
    kit.bundle(V2)
    import platform

    unsigned, _ = build_bundle(
        tmp_path / "evil", wheels=work / "wheels", units=REPO / "systemd", firmware=REPO / "firmware", key=other,
        machine=platform.machine(), python=f"{sys.version_info[0]}.{sys.version_info[1]}",
    )  # fmt: skip
    tampered = _tamper(kit.bundle(V2), tmp_path / "tampered.tar")
    updater = _updater(system, None)
    with pytest.raises(UpdateError, match="bad signature"):
        updater.install(unsigned, source="test")
    with pytest.raises(UpdateError, match=r"teleinfo\.service: SHA-256 differs"):
        updater.install(tampered, source="test")
    assert snapshot(system) == before


def test_configuration_without_its_migration_is_refused(kit: Kit, system: Path) -> None:
    before = snapshot(system)
    with pytest.raises(UpdateError, match="no migration from configuration schema 1 to 2"):
        _updater(system, None).install(kit.bundle(V2, "schema-without-migration"), source="test")
    after = snapshot(system)
    tx = read_json(Paths(system).transaction)
    assert tx is not None and tx["phase"] == "aborted"
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"var/lib/teleinfo-update/transaction.json", "var/lib/teleinfo-update/history.jsonl"}


def test_configuration_schema_change_is_migrated(kit: Kit, system: Path, service: Supervisor) -> None:
    config = system / "etc" / "teleinfo" / "teleinfo.toml"
    original = config.read_text()
    wait_until(lambda: _up_on(system, V1), timeout=60)
    updater = _updater(system, service)
    updater.install(kit.bundle(V2, "schema-with-migration"), source="test")
    assert any("configuration migrated from schema 1: logging.level set to debug" in m for m in updater.messages)
    migrated = load_config(config)
    assert migrated.logging.level == "debug" and migrated.health == load_config(config).health
    assert (Paths(system).backup / "teleinfo.toml").read_text() == original
    assert _up_on(system, V2)


def _kill_when(root: Path, bundle: Path, ready: str) -> None:
    """Run the installer in its own process group; SIGKILL the group (the installer and the cp or pip it runs, as a
    power cut or systemd's stop of teleinfo-update.service does) once ``ready`` (a phase, or "building") is
    reached."""
    paths = Paths(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.update_driver", str(root), str(bundle)], cwd=REPO, start_new_session=True
    )
    try:

        def reached() -> bool:
            tx = read_json(paths.transaction)
            if ready == "building":  # pip is installing the new release's wheels
                return bool(tx and tx["phase"] == "preparing" and list(paths.releases.glob(f"{V2}-*/lib")))
            return bool(tx and tx["phase"] == ready)

        wait_until(reached, timeout=120, interval=0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_installer_killed_while_preparing_leaves_the_release_running(kit: Kit, system: Path) -> None:
    bundle = kit.bundle(V2)
    _kill_when(system, bundle, "building")
    paths = Paths(system)
    assert link_name(paths.current) == f"{V1}-image"
    supervisor = Supervisor(system)  # the next start of the service (or the next boot)
    supervisor.start()
    try:
        wait_until(lambda: _up_on(system, V1), timeout=60)
    finally:
        supervisor.stop()
    tx = read_json(paths.transaction)
    assert tx is not None and tx["phase"] == "aborted" and "interrupted before the switch" in tx["reason"]
    assert [p.name for p in paths.releases.iterdir()] == [f"{V1}-image"]
    assert "interrupted before the switch" in supervisor.service_log()  # the guard's words, in the journal


def test_installer_killed_during_the_trial_is_rolled_back_at_the_next_start(kit: Kit, system: Path) -> None:
    _kill_when(system, kit.bundle(V2), "trial")
    paths = Paths(system)
    assert link_name(paths.current).startswith(V2)  # type: ignore[union-attr]  # the power cut came after the switch
    supervisor = Supervisor(system)
    supervisor.start()
    try:
        wait_until(lambda: _up_on(system, V1), timeout=60)
    finally:
        supervisor.stop()
    assert link_name(paths.current) == f"{V1}-image"
    tx = read_json(paths.transaction)
    assert tx is not None and tx["phase"] == "rolled-back" and "interrupted during the trial" in tx["reason"]
    assert "put back" in supervisor.service_log()


def test_guard_never_stops_a_start(tmp_path: Path) -> None:
    """A damaged transaction file or root: the guard reports and exits 0 (the service starts anyway)."""
    guard = REPO / "appliance" / "update" / "guard.py"
    state = tmp_path / "var" / "lib" / "teleinfo-update"
    state.mkdir(parents=True)
    (state / "transaction.json").write_text('{"phase": "trial", "from": "nope", "to": "x"')  # torn
    run = subprocess.run(["/usr/bin/python3", str(guard), "--root", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (state / "transaction.json").write_text('{"phase": "trial", "from": "nope", "to": "x", "units": 5}')
    run = subprocess.run(["/usr/bin/python3", str(guard), "--root", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0 and "error" in run.stderr


def test_an_update_is_refused_while_another_runs(kit: Kit, system: Path) -> None:
    from appliance.update.guard import Lock, LockBusy

    with Lock(Paths(system)), pytest.raises(LockBusy, match="another update is running"):
        _updater(system, None).install(kit.bundle(V2), source="test")
    assert link_name(Paths(system).current) == f"{V1}-image"
