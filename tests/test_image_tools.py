"""The image's own tools, without building an image: image/build's refusals, and the first-boot settings.

``image/rootfs/usr/lib/teleinfo-image/firstboot`` is loaded with its boot partition and /etc pointed at temporary
directories (it then acts on no running system); tests/test_image.py checks the same script in a booted image.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "image" / "build"
FIRSTBOOT = REPO / "image" / "rootfs" / "usr" / "lib" / "teleinfo-image" / "firstboot"


def _build(*args: str, user: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if user else []
    return subprocess.run([*prefix, str(BUILD), *args], capture_output=True, text=True, timeout=30, check=False)


def test_build_refuses_without_root_and_says_why() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to drop to an unprivileged user (setpriv)")
    result = _build("--arch", "amd64", user=True)
    assert result.returncode == 1
    assert "needs root" in result.stderr and "mmdebstrap --mode=root" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "riscv64"], "--arch must be arm64 or amd64"),
        (["--base", "ubuntu"], "--base must be debian or raspios"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
        (["--arch", "amd64", "--base", "raspios"], "--base raspios is arm64 only"),
        (["--arch", "arm64", "--base", "raspios"], "--base raspios needs RASPIOS_MIRROR"),
    ],
)
def test_build_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = _build(*args)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.fixture
def firstboot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The first-boot script as a module, its boot partition and /etc in tmp_path."""
    (tmp_path / "boot").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tteleinfo\n")
    monkeypatch.setenv("TELEINFO_BOOT", str(tmp_path / "boot"))
    monkeypatch.setenv("TELEINFO_ETC", str(tmp_path / "etc"))
    monkeypatch.setenv("TELEINFO_ROOT_SSH", str(tmp_path / "root-ssh"))
    loader = importlib.machinery.SourceFileLoader("teleinfo_firstboot", str(FIRSTBOOT))
    spec = importlib.util.spec_from_loader("teleinfo_firstboot", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_custom_toml_valid_settings_are_applied(firstboot: ModuleType, tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEnl5jWHhWwqAq5nX8Tz6H2m3ex2s3r9Cv7aG3hL0y1Q me@laptop"
    (tmp_path / "boot" / "custom.toml").write_text(
        "config_version = 1\n"
        '[system]\nhostname = "linky-cave"\n'
        f'[ssh]\nauthorized_keys = ["{key}"]\npassword_authentication = false\n'
        '[wlan]\nssid = "Maison"\npassword = "correct horse"\ncountry = "FR"\nhidden = true\n'
        '[locale]\ntimezone = "UTC"\n'
    )
    firstboot.custom_settings()
    etc = tmp_path / "etc"
    assert firstboot.problems == 0
    assert (etc / "hostname").read_text() == "linky-cave\n"
    assert "127.0.1.1\tlinky-cave" in (etc / "hosts").read_text()
    assert "127.0.1.1\tteleinfo" not in (etc / "hosts").read_text()
    assert (tmp_path / "root-ssh" / "authorized_keys").read_text() == key + "\n"
    assert (etc / "ssh/sshd_config.d/teleinfo.conf").read_text() == "PasswordAuthentication no\n"
    wpa = etc / "wpa_supplicant/wpa_supplicant-wlan0.conf"
    assert 'ssid="Maison"' in wpa.read_text() and 'psk="correct horse"' in wpa.read_text()
    assert "country=FR" in wpa.read_text() and "scan_ssid=1" in wpa.read_text()
    assert wpa.stat().st_mode & 0o777 == 0o600
    assert os.readlink(etc / "localtime") == "/usr/share/zoneinfo/UTC"


def test_custom_toml_invalid_values_are_reported_and_skipped(
    firstboot: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "boot" / "custom.toml").write_text(
        "config_version = 1\n"
        '[system]\nhostname = "-bad_name-"\n'
        '[ssh]\nauthorized_keys = ["not a key"]\n'
        '[wlan]\nssid = "Maison"\npassword = "short"\ncountry = "FR"\n'
        '[locale]\ntimezone = "../../etc/passwd"\n'
        "[user]\nname = 'pi'\n"
    )
    firstboot.custom_settings()
    out = capsys.readouterr().out
    assert firstboot.problems == 5
    for expected in ("system.hostname", "not an OpenSSH public key", "wlan.password", "locale.timezone", "[user]"):
        assert expected in out
    assert not (tmp_path / "etc" / "hostname").exists()
    assert not (tmp_path / "etc" / "wpa_supplicant").exists()
    assert not (tmp_path / "etc" / "localtime").exists()


def test_custom_toml_that_is_not_toml_is_one_reported_problem(
    firstboot: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "boot" / "custom.toml").write_text("[wlan\nssid = ")
    firstboot.custom_settings()
    assert firstboot.problems == 1
    assert "is not valid TOML" in capsys.readouterr().out


def test_invalid_teleinfo_toml_keeps_the_previous_configuration(
    firstboot: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    teleinfo = shutil.which("teleinfo") or str(REPO / ".venv" / "bin" / "teleinfo")
    if not Path(teleinfo).exists():
        pytest.skip("the teleinfo command is not installed")
    monkeypatch.setattr(firstboot, "TELEINFO", Path(teleinfo))
    target = tmp_path / "etc" / "teleinfo" / "teleinfo.toml"
    target.parent.mkdir()
    target.write_text("# previous\n")
    (tmp_path / "boot" / "teleinfo.toml").write_text('[source]\nkind = "carrier-pigeon"\n')
    firstboot.teleinfo_config()
    assert target.read_text() == "# previous\n"
    out = capsys.readouterr().out
    assert "is invalid, the previous configuration is kept" in out and "source.kind" in out
    (tmp_path / "boot" / "teleinfo.toml").write_text('[source]\nkind = "simulator"\n')
    firstboot.teleinfo_config()
    assert target.read_text() == '[source]\nkind = "simulator"\n'


def test_image_pins_satisfy_every_runtime_dependency() -> None:
    """The image installs offline from image/requirements.txt: a dependency added to setup.cfg without a pin
    there would only fail inside the image build, minutes in; this says so at once."""
    import configparser

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    wanted = [Requirement(r) for r in cfg["options"]["install_requires"].split("\n") if r.strip()]
    assert {"pyserial", "paho-mqtt", "influxdb-client", "paramiko"} <= {r.name for r in wanted}
    pins: dict[str, str] = {}
    for line in (REPO / "image" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pin = Requirement(line)
            (spec,) = pin.specifier
            pins[pin.name.lower().replace("_", "-")] = spec.version
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is in install_requires but not pinned in image/requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"
