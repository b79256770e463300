"""The update machinery's small parts, without building releases: pending reboots (for /status and doctor),
version order, the install window, configuration migrations and their TOML writer, the boot partition's bundles,
and the status reporter."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.commands.doctor import check_reboot
from appliance.commands.update import in_window
from appliance.stats import Stats
from appliance.update.bundle import build_bundle, public_pem
from appliance.update.guard import Paths, append_history, write_json
from appliance.update.install import compare_versions
from appliance.update.migrate import MIGRATIONS, MigrationError, dump_toml, migrate
from appliance.update.reboot import UpdateReporter, pending_reboot

REPO = Path(__file__).resolve().parent.parent


def _kernel_root(tmp_path: Path, *kernels: str, running: str = "6.1.0-28-arm64") -> Path:
    boot = tmp_path / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    for k in kernels:
        (boot / f"vmlinuz-{k}").write_bytes(b"kernel")
        (tmp_path / "lib" / "modules" / k).mkdir(parents=True, exist_ok=True)
    return tmp_path


def _proc(tmp_path: Path, btime: float) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "stat").write_text(f"cpu  1 2 3\nbtime {int(btime)}\nprocesses 5\n")
    return proc


def test_no_reboot_pending(tmp_path: Path) -> None:
    root = _kernel_root(tmp_path, "6.1.0-28-arm64")
    proc = _proc(tmp_path, time.time())  # booted after the kernel file was written
    assert pending_reboot(root, kernel="6.1.0-28-arm64", proc=proc) == []


def test_reboot_pending_reasons(tmp_path: Path) -> None:
    root = _kernel_root(tmp_path, "6.1.0-28-arm64", "6.1.0-31-arm64")
    proc = _proc(tmp_path, time.time() - 86400)
    (root / "run").mkdir()
    (root / "run" / "reboot-required").write_text("*** System restart required ***\n")
    (root / "run" / "reboot-required.pkgs").write_text("linux-image-6.1.0-31-arm64\nlibc6\nlibc6\n")
    reasons = pending_reboot(root, kernel="6.1.0-28-arm64", proc=proc)
    assert reasons[0] == "updates need a reboot (libc6, linux-image-6.1.0-31-arm64)"
    assert "kernel 6.1.0-31-arm64 installed, 6.1.0-28-arm64 running" in reasons
    assert "kernel 6.1.0-28-arm64 updated since the boot" in reasons  # its file is newer than the boot


def test_running_kernel_removed(tmp_path: Path) -> None:
    root = _kernel_root(tmp_path, "6.1.0-31-arm64")
    (root / "boot" / "vmlinuz-6.1.0-31-arm64").touch()
    reasons = pending_reboot(root, kernel="6.1.0-28-arm64", proc=_proc(tmp_path, time.time()))
    assert "the running kernel 6.1.0-28-arm64 was removed (modules gone)" in reasons


def test_doctor_reports_pending_reboots_and_unfinished_updates(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert [r.status for r in check_reboot(tmp_path)] == ["ok"]
    (tmp_path / "run" / "reboot-required").touch()
    write_json(Paths(tmp_path).transaction, {"phase": "rolled-back", "to": "0.2.0-x", "reason": "READY not received"})
    results = list(check_reboot(tmp_path))
    assert [(r.check, r.status) for r in results] == [("reboot", "warn"), ("update", "warn")]
    assert "updates need a reboot" in results[0].detail and "systemctl reboot" in results[0].fix
    assert "rolled back: READY not received" in results[1].detail


def test_update_section_of_status_follows_the_files(tmp_path: Path) -> None:
    stats = Stats()
    paths = Paths(tmp_path)
    paths.releases.mkdir(parents=True)
    (paths.releases / "0.1.0-image").mkdir()
    os.symlink("releases/0.1.0-image", paths.current)
    reporter = UpdateReporter(stats, tmp_path, poll=0.05).start()
    try:
        expected = {"release": "0.1.0-image", "reboot_required": False, "reboot_reasons": []}
        assert stats.snapshot().sections["update"] == expected
        write_json(paths.transaction, {"phase": "trial", "to": "0.2.0-abc"})
        deadline = time.monotonic() + 5
        while stats.snapshot().sections["update"].get("last_update") != {"phase": "trial", "to": "0.2.0-abc"}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        reporter.stop()


def test_reporter_publishes_the_update_state_when_it_changes(tmp_path: Path) -> None:
    """The update section also travels the fan-out (MQTT retains it): at start, on a change, and again on demand
    (outputs rebuilt by a reload); never for a look that found nothing new."""
    from appliance import __version__
    from appliance.records import UpdateState

    published: list[UpdateState] = []
    paths = Paths(tmp_path)
    paths.releases.mkdir(parents=True)
    os.symlink("releases/0.1.0-image", paths.current)
    reporter = UpdateReporter(Stats(), tmp_path, poll=0.05, publish=published.append).start()  # type: ignore[arg-type]
    try:
        assert [(r.version, dict(r.section)) for r in published] == [
            (__version__, {"release": "0.1.0-image", "reboot_required": False, "reboot_reasons": []})
        ]
        time.sleep(0.3)  # several looks, nothing changed
        assert len(published) == 1
        write_json(paths.transaction, {"phase": "committed", "to": "0.1.0-image"})
        deadline = time.monotonic() + 5
        while len(published) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert published[1].section["last_update"] == {"phase": "committed", "to": "0.1.0-image"}
        assert published[1].to_json()["version"] == __version__
        reporter.publish_again()
        assert published[2].section == published[1].section
    finally:
        reporter.stop()


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [("0.2.0", "0.1.9", 1), ("0.10.0", "0.9.0", 1), ("1.0", "1.0.0", 0), ("0.2.0rc1", "0.2.0", -1),
     ("0.2.0.post1", "0.2.0", 1), ("0.1.0", "0.1.0", 0)],
)  # fmt: skip
def test_version_order(a: str, b: str, order: int) -> None:
    assert compare_versions(a, b) == order and compare_versions(b, a) == -order


def test_install_window() -> None:
    def at(h: int, m: int) -> time.struct_time:
        return time.struct_time((2026, 1, 1, h, m, 0, 3, 1, -1))

    assert in_window("03:00-05:00", at(3, 0)) and not in_window("03:00-05:00", at(5, 0))
    assert in_window("23:00-02:00", at(1, 30)) and in_window("23:00-02:00", at(23, 5))
    assert not in_window("23:00-02:00", at(12, 0)) and in_window("", at(12, 0))


def test_toml_writer_round_trips_a_configuration() -> None:
    doc: dict[str, Any] = {
        "source": {"kind": "serial", "device": '/dev/tty"AMA0', "simulator": {"errors": 0.25, "phases": 3}},
        "outputs": {"mqtt": {"enabled": True, "password": {"env": "MQTT_PW"}, "port": 1883}},
        "gpio": {"outputs": [{"name": "relay 1", "pin": 17}, {"name": "r2", "pin": 27}]},
        "checks": {"ports": {"expected": [22, 80], "targets": [{"host": "1.2.3.4"}]}},
        "x": {"weird key": "line\nbreak\ttab\x01"},
    }
    assert tomllib.loads(dump_toml(doc)) == doc


def test_migrations_step_by_step_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.update.migrate as m

    def one(doc: dict[str, Any]) -> list[str]:
        doc["health"]["port"] = doc["health"].pop("tcp_port")
        return ["health.tcp_port renamed health.port"]

    monkeypatch.setattr(m, "CONFIG_SCHEMA", 2)
    monkeypatch.setitem(MIGRATIONS, 1, one)
    doc = {"health": {"tcp_port": 9000}}
    assert migrate(doc, 1) == ["health.tcp_port renamed health.port"] and doc == {"health": {"port": 9000}}
    assert migrate(doc, 2) == []
    with pytest.raises(MigrationError, match="newer than this release's 2"):
        migrate(doc, 3)
    with pytest.raises(MigrationError, match="from schema 1 to 2 failed: KeyError"):
        migrate({"health": {}}, 1)  # a document the step did not expect: a refusal, not a traceback
    monkeypatch.setattr(m, "CONFIG_SCHEMA", 3)
    with pytest.raises(MigrationError, match="no migration from configuration schema 2 to 3"):
        migrate({"health": {"tcp_port": 1}}, 1)


def test_migrate_config_command_refuses_an_invalid_result(tmp_path: Path) -> None:
    config = tmp_path / "teleinfo.toml"
    config.write_text("[health]\nport = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "update", "--config", str(config), "migrate-config",
         "--from-schema", "1", "--output", str(tmp_path / "out.toml")],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "health.port: must be at least 1" in result.stderr
    assert not (tmp_path / "out.toml").exists()


def test_boot_partition_bundle_is_tried_once_and_its_outcome_written_beside_it(tmp_path: Path) -> None:
    """update auto: a bundle signed by an unknown key on the boot partition is refused, renamed, and the reason is
    written on the partition for whoever reads the card; nothing else changed."""
    root = tmp_path / "root"
    release = root / "opt" / "teleinfo" / "releases" / "0.1.0-image"
    release.mkdir(parents=True)
    (release / "release.json").write_text('{"version": "0.1.0"}')
    (root / "opt" / "teleinfo" / "current").symlink_to("releases/0.1.0-image")
    (root / "etc" / "teleinfo" / "update-keys").mkdir(parents=True)
    (root / "etc" / "teleinfo" / "update-keys" / "r.pem").write_bytes(public_pem(Ed25519PrivateKey.generate()))
    (root / "etc" / "teleinfo" / "teleinfo.toml").write_text("[health]\nenabled = false\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "teleinfo_appliance-0.2.0-py3-none-any.whl").write_bytes(b"PK")
    (wheels / "requirements.txt").write_text("")
    boot = root / "boot" / "firmware"
    build_bundle(boot, wheels=wheels, units=REPO / "systemd", firmware=REPO / "firmware",
                 key=Ed25519PrivateKey.generate(), machine=platform.machine())  # fmt: skip
    command = [sys.executable, "-m", "appliance.cli", "update", "--root", str(root), "auto"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 1, result.stderr
    name = f"teleinfo-update-0.2.0-{platform.machine()}.tar"
    assert sorted(p.name for p in boot.iterdir()) == [f"{name}.refused", "teleinfo-update.log"]
    assert "bad signature" in (boot / "teleinfo-update.log").read_text()
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert again.returncode == 0 and again.stderr == ""  # nothing left to try, [update] off: nothing to do


def test_wait_quiet_waits_for_spools_and_never_for_a_silent_service(tmp_path: Path) -> None:
    """apt's hook: exit 0 at once without a service, 1 after the timeout while an output still holds frames."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Status(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"health": {"state": "up"}, "outputs": {"mqtt": {"spooled": 3}}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    from tests.util import free_port

    config = tmp_path / "teleinfo.toml"
    command = [sys.executable, "-m", "appliance.cli", "update", "--config", str(config), "wait-quiet", "--timeout", "1"]
    config.write_text(f'[health]\nbind = "127.0.0.1"\nport = {free_port()}\n')
    assert subprocess.run(command, cwd=REPO, capture_output=True, check=False).returncode == 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        config.write_text(f'[health]\nbind = "127.0.0.1"\nport = {httpd.server_address[1]}\n')
        t0 = time.monotonic()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        assert result.returncode == 1 and "3 frames still spooled" in result.stderr
        assert 1 <= time.monotonic() - t0 < 10
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_install_as_another_user_is_refused_clearly() -> None:
    import shutil
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to drop to an unprivileged user (setpriv)")
    tmp_path = Path(tempfile.mkdtemp(prefix="teleinfo-update-user-"))  # pytest's own tmp is root-only
    root = tmp_path / "root"
    (root / "etc" / "teleinfo").mkdir(parents=True)
    (root / "etc" / "teleinfo" / "teleinfo.toml").write_text("[health]\nenabled = false\n")
    for d in (tmp_path, root, root / "etc", root / "etc" / "teleinfo"):
        d.chmod(0o755)
    (root / "etc" / "teleinfo" / "teleinfo.toml").chmod(0o644)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "appliance.cli",
         "update", "--root", str(root), "install", str(tmp_path / "b.tar")],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    shutil.rmtree(tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Permission denied" in result.stderr and "run it as root" in result.stderr
    assert "Traceback" not in result.stderr


def test_state_files_stay_readable_under_the_units_umask(tmp_path: Path) -> None:
    """The guard runs under teleinfo.service's UMask=0077 as root; the service (user teleinfo) must still read the
    transaction, or /status and MQTT lose the last update after a rollback done at a boot (seen under QEMU)."""
    paths = Paths(tmp_path)
    old = os.umask(0o077)
    try:
        write_json(paths.transaction, {"phase": "rolled-back", "to": "0.2.0-abc"})
        append_history(paths, {"phase": "rolled-back"})
    finally:
        os.umask(old)
    assert paths.transaction.stat().st_mode & 0o777 == 0o644
    assert paths.history.stat().st_mode & 0o777 == 0o644
