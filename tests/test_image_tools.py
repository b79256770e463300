"""The image's own tools, without building an image: image/build's refusals, and the first-boot settings.

``image/rootfs/usr/lib/teleinfo-image/firstboot`` is loaded with its boot partition and /etc pointed at temporary
directories (it then acts on no running system); tests/test_image.py checks the same script in a booted image.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import re
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
    monkeypatch.setenv("TELEINFO_STATE", str(tmp_path / "state"))
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
        "[user]\nname = 'root'\n"
    )
    firstboot.custom_settings()
    out = capsys.readouterr().out
    assert firstboot.problems == 5
    for expected in ("system.hostname", "not an OpenSSH public key", "wlan.password", "locale.timezone", "user.name"):
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
    firstboot.teleinfo_config()  # still invalid at the next boot: said again, still not applied
    assert "is invalid" in capsys.readouterr().out and target.read_text() == "# previous\n"
    (tmp_path / "boot" / "teleinfo.toml").write_text('[source]\nkind = "simulator"\n')
    firstboot.teleinfo_config()
    assert target.read_text() == '[source]\nkind = "simulator"\n'


def test_device_edits_win_over_an_untouched_card(
    firstboot: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card's teleinfo.toml is applied only when it changed since it was last applied (what the image ships
    counts as applied): a setting changed on the device survives reboots; a later edit on the card still wins."""
    teleinfo = shutil.which("teleinfo") or str(REPO / ".venv" / "bin" / "teleinfo")
    if not Path(teleinfo).exists():
        pytest.skip("the teleinfo command is not installed")
    monkeypatch.setattr(firstboot, "TELEINFO", Path(teleinfo))
    card, device = tmp_path / "boot" / "teleinfo.toml", tmp_path / "etc" / "teleinfo" / "teleinfo.toml"
    device.parent.mkdir()
    shipped = "[health]\nport = 9999\n"
    card.write_text(shipped)
    device.write_text(shipped)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "card-teleinfo.toml.sha256").write_text(hashlib.sha256(shipped.encode()).hexdigest())
    device.write_text("[health]\nport = 9000\n")  # changed on the device (ssh, an editor)
    firstboot.teleinfo_config()
    firstboot.teleinfo_config()  # a second boot
    assert device.read_text() == "[health]\nport = 9000\n"
    card.write_bytes(b"\xef\xbb\xbf[health]\r\nport = 9100\r\n")  # then on the card, by a Windows editor
    firstboot.teleinfo_config()
    assert device.read_bytes() == b"[health]\r\nport = 9100\r\n" and "changed on the card" in capsys.readouterr().out
    device.write_text("[health]\nport = 9200\n")
    firstboot.teleinfo_config()
    assert device.read_text() == "[health]\nport = 9200\n"  # applied once, not at every boot
    assert firstboot.problems == 0


def test_health_port_is_announced_by_mdns(firstboot: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "etc" / "teleinfo").mkdir()
    config = tmp_path / "etc" / "teleinfo" / "teleinfo.toml"
    service = tmp_path / "etc" / "avahi" / "services" / "teleinfo.service"
    config.write_text("[health]\nport = 9123\n")
    firstboot.announce()
    text = service.read_text()
    assert "<type>_teleinfo._tcp</type>" in text and "<port>9123</port>" in text and "%h" in text
    # The live page too, for a phone's or a browser's list of services on the LAN, at its configured port.
    assert "<type>_http._tcp</type>" in text and "<port>8080</port>" in text
    config.write_text("[health]\nport = 9123\n[web]\nport = 8000\n")
    firstboot.announce()
    assert "<port>8000</port>" in service.read_text() and "<port>9123</port>" in service.read_text()
    config.write_text("[health]\nport = 9123\n[web]\nenabled = false\n")
    firstboot.announce()
    assert "_http._tcp" not in service.read_text() and "_teleinfo._tcp" in service.read_text()
    config.write_text('[health]\nbind = "127.0.0.1"\n')  # not on the network (the page bound like it): not announced
    firstboot.announce()
    assert not service.exists()


@pytest.fixture
def etc_accounts(tmp_path: Path) -> Path:
    """A passwd/group/shadow of its own in tmp_path/etc, for shadow's --prefix (real useradd and usermod)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("useradd --prefix needs root")
    etc = tmp_path / "etc"
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nteleinfo:x:999:999::/var/lib/teleinfo:/usr/sbin/nologin\n"
    )
    groups = ["root:x:0:", "adm:x:4:", "dialout:x:20:teleinfo", "sudo:x:27:", "gpio:x:997:teleinfo", "teleinfo:x:999:"]
    (etc / "group").write_text("\n".join(groups) + "\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\nteleinfo:!:19000::::::\n")
    (etc / "gshadow").write_text("".join(f"{g.split(':')[0]}:!::\n" for g in groups))
    return etc


def test_custom_toml_as_raspberry_pi_imager_writes_it(
    firstboot: ModuleType, tmp_path: Path, etc_accounts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte-order mark, Windows line ends, "fr", an upper-case host name, [user] with a crypt hash."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEnl5jWHhWwqAq5nX8Tz6H2m3ex2s3r9Cv7aG3hL0y1Q me@laptop"
    sha256crypt = "$5$Ao7N4cFq$T0xkN6ZxGq2Jtq1y3X.5dvrJ9Jq8kzvE2o7Xq1uPq1A"
    text = (
        '# Raspberry Pi First Boot Setup\n[system]\nhostname = "Linky-Cave"\n'
        f'[user]\nname = "pi"\npassword = "{sha256crypt}"\npassword_encrypted = true\n'
        f'[ssh]\nenabled = true\npassword_authentication = false\nauthorized_keys = [ "{key}" ]\n'
        '[wlan]\nssid = "Maison"\npassword = "correct horse"\npassword_encrypted = false\nhidden = false\n'
        'country = "fr"\n[locale]\nkeymap = "fr"\ntimezone = "Europe/Paris"\n'
    )
    (tmp_path / "boot" / "custom.toml").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    firstboot.custom_settings()
    out = capsys.readouterr().out
    assert firstboot.problems == 1, out  # only: no config_version (Imager's file has none)
    assert (etc_accounts / "hostname").read_text() == "linky-cave\n" and "taken as 'linky-cave'" in out
    assert "country=FR" in (etc_accounts / "wpa_supplicant/wpa_supplicant-wlan0.conf").read_text()
    passwd = (etc_accounts / "passwd").read_text()
    assert re.search(r"^pi:x:\d+:\d+::/home/pi:/bin/bash$", passwd, re.M), passwd
    member_of = {
        line.split(":")[0]
        for line in (etc_accounts / "group").read_text().splitlines()
        if "pi" in line.split(":")[3].split(",")
    }
    assert {"sudo", "adm", "dialout", "gpio", "teleinfo"} <= member_of
    assert f"pi:{sha256crypt}:" in (etc_accounts / "shadow").read_text()
    assert (tmp_path / "home/pi/.ssh/authorized_keys").read_text() == key + "\n"
    assert (tmp_path / "root-ssh/authorized_keys").read_text() == key + "\n"
    assert (etc_accounts / "sudoers.d/010_teleinfo-pi").read_text() == "pi ALL=(ALL:ALL) ALL\n"


def test_user_with_a_clear_password_or_only_keys(
    firstboot: ModuleType, tmp_path: Path, etc_accounts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "boot" / "custom.toml").write_text(
        'config_version = 1\n[user]\nname = "marie"\npassword = "s3cret-linky"\n'
    )
    firstboot.custom_settings()
    shadow = (etc_accounts / "shadow").read_text()
    assert re.search(r"^marie:\$6\$[^:]+:", shadow, re.M) and "s3cret-linky" not in shadow + capsys.readouterr().out
    (tmp_path / "boot" / "custom.toml").write_text('config_version = 1\n[user]\nname = "paul"\n')
    firstboot.custom_settings()
    assert (etc_accounts / "sudoers.d/010_teleinfo-paul").read_text() == "paul ALL=(ALL:ALL) NOPASSWD: ALL\n"
    (tmp_path / "boot" / "custom.toml").write_text(
        '[user]\nname = "x"\npassword = "$6$nothash"\npassword_encrypted = 1\n'
    )
    firstboot.custom_settings()
    assert "user.password_encrypted must be true or false" in capsys.readouterr().out


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


def test_unattended_upgrades_take_debian_security_updates_only(tmp_path: Path) -> None:
    """The image's apt settings, read by apt itself after Debian's 50unattended-upgrades (whose list also takes
    stable point releases): security only, daily, never a reboot."""
    if shutil.which("apt-config") is None:
        pytest.skip("apt-config not installed")
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    (parts / "50unattended-upgrades").write_text(  # the origins of Debian 12's stock file
        "Unattended-Upgrade::Origins-Pattern {\n"
        '        "origin=Debian,codename=${distro_codename},label=Debian";\n'
        '        "origin=Debian,codename=${distro_codename},label=Debian-Security";\n'
        '        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";\n};\n'
    )
    for conf in (REPO / "image/rootfs/etc/apt/apt.conf.d").iterdir():
        shutil.copy(conf, parts / conf.name)
    main = tmp_path / "apt.conf"
    main.write_text(f'Dir::Etc::parts "{parts}";\nDir::Etc::main "/dev/null";\n')
    dump = subprocess.run(
        ["apt-config", "dump", "Unattended-Upgrade", "APT::Periodic"],
        env={**os.environ, "APT_CONFIG": str(main)}, capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    origins = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump, re.M)
    assert origins == ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security"]
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump and 'APT::Periodic::Update-Package-Lists "1";' in dump
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in dump


def test_needrestart_if_installed_leaves_the_service_alone() -> None:
    if shutil.which("perl") is None:
        pytest.skip("perl not installed")
    conf = REPO / "image/rootfs/etc/needrestart/conf.d/teleinfo.conf"
    script = (
        'our %nrconf; do $ARGV[0]; die "cannot read: $@" if $@; '
        'for my $re (keys %{$nrconf{override_rc}}) { for my $unit ("teleinfo.service", "ssh.service") '
        '{ print "$unit=$nrconf{override_rc}{$re}\\n" if $unit =~ /$re/ } }'
    )
    out = subprocess.run(["perl", "-e", script, str(conf)], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == "teleinfo.service=0\n"  # needrestart's "do not restart", for the service only


# --- the mDNS host name guard -------------------------------------------------------------------------------------
MDNS_NAME = REPO / "image" / "rootfs" / "usr" / "lib" / "teleinfo-image" / "mdns-name"
# avahi's D-Bus answers, for the one case no test machine can stage: a second host that really holds the name.
# The guard's path with the real avahi (a rename it undoes) is proven in the booted Pi 3 (tests/test_image.py).
FAKE_BUSCTL = """#!/bin/sh
case "$*" in
*GetHostName) cat "$AVAHI_NAME" ;;
*"SetHostName s "*) echo "$8" >> "$AVAHI_CALLS" ;;
*) exit 9 ;;
esac
"""


def _guard(tmp_path: Path, avahi_reply: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """One run of the guard on a host named ``teleinfo``, avahi answering ``avahi_reply``; its SetHostName calls."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "busctl").write_text(FAKE_BUSCTL)
        (bin_dir / "uname").write_text("#!/bin/sh\necho teleinfo\n")
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        (tmp_path / "run").mkdir()
    (tmp_path / "name").write_text(avahi_reply)
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RUNTIME_DIRECTORY": str(tmp_path / "run"),
        "AVAHI_NAME": str(tmp_path / "name"),
        "AVAHI_CALLS": str(calls),
    }
    result = subprocess.run([str(MDNS_NAME)], capture_output=True, text=True, env=env, timeout=30, check=False)
    return result, calls.read_text().split() if calls.exists() else []


def test_mdns_guard_leaves_a_held_name_alone_and_forgets_past_restores(tmp_path: Path) -> None:
    result, calls = _guard(tmp_path, 's "teleinfo-2"\n')
    assert calls == ["teleinfo"] and result.stdout.endswith("asked for teleinfo.local again (1/3)\n")
    result, calls = _guard(tmp_path, 's "teleinfo"\n')
    assert (result.returncode, result.stdout, result.stderr, calls) == (0, "", "", [])
    assert not (tmp_path / "run" / "restores").exists()  # the restore held: the count starts again


def test_mdns_guard_gives_way_to_a_real_second_host_then_tries_hourly(tmp_path: Path) -> None:
    for attempt in (1, 2, 3):  # the other host answers each probe: avahi takes teleinfo-2 again each time
        result, calls = _guard(tmp_path, 's "teleinfo-2"\n')
        assert result.returncode == 0 and calls == ["teleinfo"]
        assert result.stdout == (
            "mDNS: avahi had renamed this host teleinfo-2.local after a name conflict; "
            f"asked for teleinfo.local again ({attempt}/3)\n"
        )
    result, calls = _guard(tmp_path, 's "teleinfo-2"\n')
    assert result.returncode == 0 and calls == []
    assert "3 restores of teleinfo.local did not hold: another host on this network answers for it" in result.stdout
    assert "Keeping teleinfo-2.local" in result.stdout
    result, calls = _guard(tmp_path, 's "teleinfo-2"\n')
    assert (result.stdout, calls) == ("", [])  # said once
    state = tmp_path / "run" / "restores"
    an_hour_ago = state.stat().st_mtime - 3601
    os.utime(state, (an_hour_ago, an_hour_ago))
    result, calls = _guard(tmp_path, 's "teleinfo-2"\n')
    assert calls == ["teleinfo"] and result.stdout.endswith("again (3/3)\n")


def test_mdns_guard_follows_a_host_renamed_on_the_device(tmp_path: Path) -> None:
    result, calls = _guard(tmp_path, 's "linky"\n')  # the host renamed while avahi ran
    assert calls == ["teleinfo"]
    assert result.stdout == (
        "mDNS: avahi announced linky.local, not the host's name; asked for teleinfo.local again (1/3)\n"
    )


@pytest.mark.parametrize("reply", ['s "tele info"\n', 's ""\n', 's "$(reboot)"\n'])
def test_mdns_guard_refuses_a_reply_that_is_no_plain_name(tmp_path: Path, reply: str) -> None:
    result, calls = _guard(tmp_path, reply)
    assert result.returncode == 1 and calls == []
    assert "avahi-daemon's host name is not a plain name, left alone" in result.stderr
