"""systemd/: every unit verifies cleanly, the service's exposure stays at or under 2.5, the sysusers file makes the
user the unit runs as, and the unit's settings agree with the configuration's defaults.  The image's own timers
(image/rootfs) verify cleanly too, within the same exposure.

``systemd-analyze verify`` checks that executables exist, so the unit is verified with its install prefix
(``/opt/teleinfo/bin/teleinfo``) pointed at this checkout's ``teleinfo``; nothing else is changed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.schema import Config

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
INSTALLED = "/opt/teleinfo/bin/teleinfo"
EXPOSURE_TARGET = 2.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def staged(tmp_path: Path, name: str, dropins: tuple[str, ...] = ()) -> Path:
    beside = Path(sys.executable).parent / "teleinfo"  # the console script of the interpreter running the tests
    teleinfo = str(beside) if beside.exists() else shutil.which("teleinfo") or str(ROOT / ".venv" / "bin" / "teleinfo")
    unit = tmp_path / name
    unit.write_text((UNITS / name).read_text().replace(INSTALLED, teleinfo))
    if dropins:
        d = tmp_path / f"{name}.d"
        d.mkdir()
        for dropin in dropins:
            shutil.copy(UNITS / dropin, d / dropin)
    return unit


def exposure_of(unit: Path) -> float:
    """The overall exposure ``systemd-analyze security --offline=yes`` gives the unit file."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_verifies_without_a_warning(tmp_path: Path, name: str) -> None:
    unit = staged(tmp_path, name)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys are only warnings: none allowed


@pytest.mark.integration
def test_update_timer_verifies_without_a_warning(tmp_path: Path) -> None:
    staged(tmp_path, "teleinfo-update.service")
    shutil.copy(UNITS / "teleinfo-update.timer", tmp_path)
    timer = tmp_path / "teleinfo-update.timer"
    result = subprocess.run(["systemd-analyze", "verify", str(timer)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.integration
def test_credentials_dropin_verifies_without_a_warning(tmp_path: Path) -> None:
    unit = staged(tmp_path, "teleinfo.service", dropins=("credentials.conf",))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "LoadCredential" in (UNITS / "credentials.conf").read_text()


@pytest.mark.integration
def test_service_exposure_is_at_most_the_target(tmp_path: Path) -> None:
    exposure = exposure_of(staged(tmp_path, "teleinfo.service"))
    print(f"systemd-analyze security --offline=yes teleinfo.service: exposure {exposure}")
    assert exposure <= EXPOSURE_TARGET
    assert f"**{exposure}**" in (UNITS / "README.md").read_text(), "update the figure in systemd/README.md"


def test_service_settings_the_appliance_relies_on() -> None:
    s = settings("teleinfo.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) >= 10  # the service pings at half this; a read returns in ~0.25 s
    assert s["Restart"] == ["on-failure"] and int(s["StartLimitBurst"][0]) > 0
    assert s["User"] == ["teleinfo"] and set(s["SupplementaryGroups"][0].split()) == {"dialout", "gpio"}
    # The spool lives where the configuration's default says, and that is the unit's state directory.
    assert Path(Config().state.directory) == Path("/var/lib") / s["StateDirectory"][0]
    assert s["Environment"][0] == "TELEINFO_CONFIG=/etc/teleinfo/teleinfo.toml"
    assert s["EnvironmentFile"][0].startswith("-/etc/teleinfo/")  # optional: no secrets file, still starts
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    families = set(s["RestrictAddressFamilies"][0].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families and "AF_PACKET" not in families
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    assert s["DevicePolicy"] == ["closed"]
    assert {"char-ttyAMA", "char-ttyUSB", "char-gpiochip", "/dev/gpiomem"} <= allowed
    assert "PrivateDevices" not in s  # would hide the serial port and GPIO


@pytest.mark.integration
def test_sysusers_creates_the_service_user_in_its_groups(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers not installed")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")  # Debian has dialout; gpio only on Raspberry Pi OS
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "teleinfo.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    users = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    assert users["teleinfo"][6] == "/usr/sbin/nologin" and int(users["teleinfo"][2]) < 1000
    assert groups["dialout"][3] == "teleinfo" and groups["gpio"][3] == "teleinfo"


IMAGE_UNITS = ROOT / "image" / "rootfs" / "etc" / "systemd" / "system"


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(p.name for p in IMAGE_UNITS.glob("*.timer")))
def test_image_timer_and_its_service_verify_without_a_warning(tmp_path: Path, name: str) -> None:
    """The image's own timers (the mDNS name guard) and their services; the executables are the image's, so they
    are checked to be in image/rootfs, and the units are verified with ExecStart= pointed at them there."""
    service = name.replace(".timer", ".service")
    text = (IMAGE_UNITS / service).read_text()
    executables = re.findall(r"^ExecStart=(\S+)", text, flags=re.M)
    assert executables, service
    for executable in executables:
        in_tree = ROOT / "image" / "rootfs" / executable.lstrip("/")
        assert in_tree.is_file() and in_tree.stat().st_mode & 0o111, executable
        text = text.replace(executable, str(in_tree))
    (tmp_path / service).write_text(text)
    shutil.copy(IMAGE_UNITS / name, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert exposure_of(tmp_path / service) <= EXPOSURE_TARGET
