"""The SD-card image as built, booted under QEMU (``-accel tcg``), publishing what a simulated meter sends.

Two boots, each asserting everything it can (a TCG boot costs minutes on the 2-core CI machine):

* **arm64 on an emulated Raspberry Pi 3 B** (``qemu-system-aarch64 -M raspi3b``): the image a household flashes,
  as the card (``-drive if=sd``, a sparse copy grown to the power of two QEMU's SD card wants), started the way
  the Pi's firmware starts it (the kernel, initrd and command line that the card's ``config.txt`` and
  ``cmdline.txt`` name, with the Pi 3 B's device tree from its boot partition).  The meter is fed into the second
  UART, QEMU's mini UART, the one on GPIO14/15 under that device tree; nothing in the test says which device to
  read: the card's ``teleinfo.toml`` has no ``[source]``.  The network is QEMU user networking on the emulated
  USB (``usb-net``, ``usb0`` in the guest).  Proves: the header UART found by itself (``ttyS1``, 8N1), no
  console nor getty on it, the UART settings in Debian's ``/etc/default`` surviving the regeneration of
  ``config.txt``/``cmdline.txt`` by ``raspi-firmware``'s hook, frames on MQTT and in victoria-metrics, health
  ``up``, the card's ``teleinfo.toml`` applied and a device-side edit kept, ``custom.toml`` as Raspberry Pi Imager
  writes it (BOM, CRLF, upper-case host name, ``country = "fr"``, ``[user]`` with a password hash and keys), the
  health port announced by mDNS (``_teleinfo._tcp`` and ``<hostname>.local``, asked inside the guest), GPIO
  lines usable by the ``teleinfo`` user, ``teleinfo`` on an administrator's PATH, security-only unattended
  upgrades, ``teleinfo doctor`` clean.
* **amd64 on q35** (direct kernel boot, virtio disk and network, the meter on the second 16550 UART, named in the
  card's ``teleinfo.toml`` as a USB dongle would be): the configured-device path ("USB dongles unchanged"), the
  root file system growing on first boot, SSH host keys, the invalid setting reported while the boot goes on;
  then issue 18's updates in that boot and one reboot (:func:`_updates`): a newer signed bundle from the card
  while victoria-metrics is down (the install waits for the spool), a bundle that never gets READY (rolled back
  by itself), a bundle with a bad signature and one with a tampered file (refused, nothing changed), a power cut
  (QEMU killed; the card file keeps what was written) during an install; the meter's frames are numbered and
  every one sent during each step is looked for in victoria-metrics and on MQTT.  Updates are not Pi-specific:
  the cheapest machine proves them.
  QEMU's arm64 ``virt`` machine is no longer booted here: everything it showed, the raspi3b boot shows on the real
  board model; ``bench/image.py`` still times it.

The guests reach nothing but the host's 127.0.0.1 forwards (``restrict=on``): the health and SSH ports
(hostfwd), and the mosquitto and victoria-metrics this test starts (guestfwd from 10.0.2.100, each connection
relayed by ``socat``).  QEMU's UARTs ignore the baud rate and parity: the test proves the plumbing, not the line
settings, which unit tests and a real Pi check.  ``TELEINFO_IMAGE_DIR=<dir>`` reuses images built there by
``image/build --output <dir>``; ``pytest -m image -s`` prints the boot times and sizes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import __version__

from . import image_builds, qemu_updates
from .mosquitto import Mosquitto
from .qemu_image import (
    GUEST_IP,
    HEALTH_PORT,
    Guest,
    card_copy,
    children_of,
    direct_argv,
    guest_config,
    guest_journal,
    health_line,
    netdev,
    pi3_boot,
    qemu_mini_uart_irq,
    raspi3b_argv,
    write_boot_file,
)
from .servers import VictoriaMetrics
from .util import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent

# The build (arm64 through qemu-user) is most of it: a few minutes per architecture on 2 cores.
pytestmark = [pytest.mark.image, pytest.mark.integration, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1500)]


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {' '.join(missing)} (scripts/test installs them)")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the images are: TELEINFO_IMAGE_DIR, or a fresh directory image/build fills (removed afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("image/build needs root (mmdebstrap --mode=root)")
    given = os.environ.get("TELEINFO_IMAGE_DIR")
    if given:
        yield Path(given)
        return
    background = image_builds.started()
    if background is not None:  # built while the rest of the suite ran (tests/image_builds.py); removed at the end
        yield background
        return
    built = tmp_path_factory.mktemp("images")
    yield built
    shutil.rmtree(built)  # about 2 GB per architecture


def _built(image_dir: Path, arch: str) -> dict[str, object]:
    """The image description image/build wrote, building the image first unless it is there already."""
    info_path = image_dir / f"teleinfo-debian-{arch}.json"
    if image_dir == image_builds.started():
        status, seconds, log = image_builds.wait(arch)
        if status != 0:
            pytest.fail(f"image/build --arch {arch} failed (status {status}):\n{log}")
        print(f"\nimage/build --arch {arch} (in the background): {seconds:.0f} s")
        print("\n".join(line for line in log.splitlines() if "MiB" in line or "done in" in line))
    if not info_path.exists():
        _require("mmdebstrap", "mkfs.vfat", "mcopy", "mke2fs", "sfdisk", "zstd")
        if arch != "amd64":
            _require("arch-test", "qemu-aarch64-static")
        started = time.monotonic()
        build = subprocess.run(
            image_builds.build_argv(arch, image_dir), capture_output=True, text=True, timeout=1100, check=False
        )
        if build.returncode != 0:
            pytest.fail(f"image/build --arch {arch} failed:\n{build.stderr[-6000:]}")
        print(f"\nimage/build --arch {arch}: {time.monotonic() - started:.0f} s")
        print("\n".join(line for line in build.stderr.splitlines() if "MiB" in line or "done in" in line))
    return json.loads(info_path.read_text())


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[], tuple[Mosquitto, VictoriaMetrics]]]:
    """Starts mosquitto and victoria-metrics on 127.0.0.1 when called: once the image is built, not idle meanwhile."""
    _require("mosquitto", "victoria-metrics", "socat", "ssh", "mcopy", "openssl")
    started: list[Mosquitto | VictoriaMetrics] = []

    def start() -> tuple[Mosquitto, VictoriaMetrics]:
        broker = Mosquitto(tmp_path / "mosquitto").start()
        started.append(broker)
        vm = VictoriaMetrics()
        started.append(vm)
        vm.start(tmp_path)
        return broker, vm

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


def _sizes(image_dir: Path, image: Path) -> dict[str, int]:
    return {
        "image_mib": image.stat().st_size // 2**20,
        "image_allocated_mib": image.stat().st_blocks * 512 // 2**20,
        "image_zst_mib": (image_dir / f"{image.name}.zst").stat().st_size // 2**20,
    }


def _keypair(tmp: Path) -> tuple[Path, str]:
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key, (tmp / "id_ed25519.pub").read_text().strip()


def _booted(guest: Guest, record_property: Callable[[str, object], None], arch: str, sizes: dict[str, int]) -> str:
    """Wait for the boot to finish (systemd's own verdict); record and print the figures."""
    first_frame = guest.first_frame()
    wait_until(lambda: guest.ssh("systemctl is-system-running --wait") in ("running", "degraded"), 300, interval=2)
    boot_time = guest.ssh("systemd-analyze time").splitlines()[0]
    assert guest.qemu is not None
    guest.relays = children_of(guest.qemu.pid)
    record_property("first_frame_s", round(first_frame, 1))
    record_property("startup", boot_time)
    for name, value in sizes.items():
        record_property(name, value)
    assert guest.feed is not None
    print(
        f"\n{arch}: first frame on MQTT {first_frame:.1f} s after QEMU started; guest: {boot_time}; "
        f"{guest.feed.sent} frames sent; image {sizes}"
    )
    return boot_time


# --- arm64: the card in an emulated Raspberry Pi 3 B -------------------------------------------------------------
MDNS_QUERY = r"""
import socket, struct, sys, time
def labels(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
def query(name, qtype):
    return struct.pack(">6H", 0x7e1e, 0, 1, 0, 0, 0) + labels(name) + struct.pack(">HH", qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a one-shot (legacy unicast) querier, RFC 6762 5.1
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))  # out of usb0, looped back
s.settimeout(2)
deadline = time.monotonic() + float(sys.argv[2])
out = []
for arg in sys.argv[3:]:  # ptr:NAME or a:NAME; avahi answers only for names it holds: asked again until then
    kind, name = arg.split(":", 1)
    answer = "timeout"
    while answer == "timeout" and time.monotonic() < deadline:
        s.sendto(query(name, {"ptr": 12, "a": 1}[kind]), ("224.0.0.251", 5353))
        try:
            data = s.recv(9000)
        except TimeoutError:
            continue
        if data[12:].startswith(labels(name)):  # the answer to this question, not a late one to an earlier
            answer = data.hex()
    out.append(kind + "=" + answer)
print("|".join(out))
"""
AVAHI = "busctl call org.freedesktop.Avahi / org.freedesktop.Avahi.Server"


# Checks run in the booted Pi 3, in this order, in one SSH session: (name, command) prints "name=<its output>",
# (None, command) only acts.
PI3_FACTS: list[tuple[str | None, str]] = [
    ("service", "systemctl is-active teleinfo.service; systemctl show -P NRestarts teleinfo"),
    ("opened", "journalctl -b -u teleinfo -o cat | grep -m1 'source.device auto'"),
    ("serial", "journalctl -b -u teleinfo -o cat | grep -m1 'opened at'"),
    ("getty", "systemctl is-enabled serial-getty@ttyS1.service; systemctl is-active serial-getty@ttyS1.service"),
    ("cmdline", "cat /proc/cmdline"),
    ("config", "sha256sum < /etc/teleinfo/teleinfo.toml | cut -d' ' -f1"),
    ("applied", "cat /var/lib/teleinfo-image/card-teleinfo.toml.sha256"),
    ("hostname", "hostname"),
    ("ifaces", "ls /sys/class/net"),
    ("gpiochip", "stat -c '%G %a' /dev/gpiochip0"),
    (
        "gpio",  # the service's user drives a line through the gpiochip device, as gpiozero's lgpio factory does
        "runuser -u teleinfo -- env LG_WD=/tmp /opt/teleinfo/current/bin/python -c 'import lgpio; "
        "h = lgpio.gpiochip_open(0); lgpio.gpio_claim_output(h, 17, 1); print(lgpio.gpio_read(h, 17))' 2>&1",
    ),
    ("path", "bash -lc 'command -v teleinfo'"),
    ("marie", "id -nG marie"),
    ("sudoers", "cat /etc/sudoers.d/010_teleinfo-marie"),
    ("wlan", "grep country= /etc/wpa_supplicant/wpa_supplicant-wlan0.conf"),
    ("origins", "apt-config dump Unattended-Upgrade::Origins-Pattern | grep '::'"),
    ("periodic", "apt-config dump APT::Periodic::Unattended-Upgrade"),
    ("timer", "systemctl is-enabled apt-daily-upgrade.timer"),
    ("avahi", "systemctl is-active avahi-daemon; grep -o '<port>[0-9]*</port>' /etc/avahi/services/teleinfo.service"),
    # Found by mDNS; if avahi took a suffixed name (a spurious conflict at link-up), the guard's timer gives it back.
    ("mdns", f'python3 -c "$MDNS" {GUEST_IP} 180 a:linky-pi3.local ptr:_teleinfo._tcp.local'),
    ("mdns_timer", "systemctl is-enabled teleinfo-mdns-name.timer; systemctl is-active teleinfo-mdns-name.timer"),
    # avahi's rename after a name conflict, forced (the timer held back meanwhile); then the guard's run.
    (None, f"systemctl stop teleinfo-mdns-name.timer; {AVAHI} SetHostName s linky-pi3-2"),
    ("renamed", f'python3 -c "$MDNS" {GUEST_IP} 30 a:linky-pi3-2.local; {AVAHI} GetHostName'),
    (None, "systemctl start teleinfo-mdns-name.service"),
    ("restored", f'{AVAHI} GetHostName; python3 -c "$MDNS" {GUEST_IP} 30 a:linky-pi3.local'),
    (None, "systemctl start teleinfo-mdns-name.timer"),
    ("guard", "journalctl -b -u teleinfo-mdns-name -o cat | grep mDNS: | tail -n1"),
    # What every kernel or initramfs update does: raspi-firmware's hook regenerates config.txt and cmdline.txt.
    (None, "DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware 2>/dev/null"),
    ("regenerated_cmdline", "cat /boot/firmware/cmdline.txt"),
    (
        "regenerated_config",
        "grep -e '^# --- teleinfo' -e '^core_freq' -e '^enable_uart' /boot/firmware/config.txt",
    ),
    ("apply", "python3 /usr/share/teleinfo-image/firmware/apply.py --check; echo status $?"),
    # A setting changed on the device, then what the next boot does with the untouched card.
    (
        None,
        "echo '# edited on the device' >> /etc/teleinfo/teleinfo.toml; /usr/lib/teleinfo-image/firstboot >/dev/null",
    ),
    ("kept", "tail -n1 /etc/teleinfo/teleinfo.toml"),
    ("doctor", "teleinfo doctor --skip meter --skip clock --skip holders; echo status $?"),
]


def _mdns_answer(fact: str) -> bytes:
    """The reply of one query printed by :data:`MDNS_QUERY` (``kind=hex``); ``kind=timeout`` fails here."""
    kind, answer = fact.split("=", 1)
    assert answer != "timeout", f"no mDNS answer to the {kind} query"
    return bytes.fromhex(answer)


def _script(facts: list[tuple[str | None, str]]) -> str:
    """One shell script printing each fact on one line (newlines of an output become '|')."""
    lines = [f"MDNS={shlex.quote(MDNS_QUERY)}"]
    for name, command in facts:
        if name is None:
            lines.append(command)
        else:
            lines.append(f"printf '%s=%s\\n' {name} \"$( ({command}) 2>&1 | tr '\\n' '|' | sed 's/|$//')\"")
    return "\n".join(lines)


def test_arm64_card_on_an_emulated_raspberry_pi_3(
    image_dir: Path,
    servers: Callable[[], tuple[Mosquitto, VictoriaMetrics]],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    info = _built(image_dir, "arm64")
    _require("qemu-system-aarch64")
    image = image_dir / str(info["image"])
    sizes = _sizes(image_dir, image)
    offset = int(info["boot_partition_offset"])  # type: ignore[call-overload]
    disk = card_copy(image, tmp_path, -1)

    # What the Pi's firmware reads on the card: config.txt's kernel and initramfs, cmdline.txt, the board's DTB.
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel, initrd, dtb, cmdline = pi3_boot(disk, offset, boot)
    assert "console=ttyS1" not in cmdline and "cma=" not in cmdline, cmdline  # nothing on the header UART
    dtb = qemu_mini_uart_irq(dtb)  # QEMU 7.2's mini UART interrupt bug (see there); the tree is otherwise the card's

    # The user's settings, on the card, as Raspberry Pi Imager and a Windows editor write them.
    card_config = guest_config(None)  # no [source]: the image finds the header UART by itself
    key, pub = _keypair(tmp_path)
    digest = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input="correct horse battery", capture_output=True, text=True
    ).stdout.strip()
    custom = (
        "# Raspberry Pi First Boot Setup\n"
        '[system]\nhostname = "Linky-Pi3"\n'
        f'[user]\nname = "marie"\npassword = "{digest}"\npassword_encrypted = true\n'
        f'[ssh]\nenabled = true\npassword_authentication = false\nauthorized_keys = [ "{pub}" ]\n'
        '[wlan]\nssid = "Maison"\npassword = "correct horse"\npassword_encrypted = false\ncountry = "fr"\n'
        '[locale]\nkeymap = "fr"\ntimezone = "Europe/Paris"\n'
    )
    write_boot_file(disk, offset, "teleinfo.toml", card_config)
    write_boot_file(disk, offset, "custom.toml", b"\xef\xbb\xbf" + custom.replace("\n", "\r\n").encode())

    broker, vm = servers()
    ssh_port, health_port = free_port(), free_port()
    console, tic_sock = tmp_path / "uart0.log", tmp_path / "tic.sock"
    net = netdev(broker.port, vm.port, ssh_port, health_port)
    argv = raspi3b_argv(kernel, initrd, dtb, cmdline, disk, net, console, tic_sock)
    guest = Guest(tmp_path, argv, broker, key, ssh_port, health_port, console, tic_sock).start()
    try:
        _booted(guest, record_property, "arm64 raspi3b", sizes)
        wait_until(lambda: health_line(health_port).startswith("up ready"), 60)
        wait_until(lambda: bool(vm.export()), 60)
        state = json.loads(guest.subscriber.messages[0][1])  # type: ignore[union-attr]
        assert state, "an empty MQTT state"

        card_sha = hashlib.sha256(card_config.encode()).hexdigest()
        facts = guest.facts(_script(PI3_FACTS), timeout=540)  # up to 4 min waiting on mDNS
        for name, value in sorted(facts.items()):
            print(f"  {name}: {value[:300]}")

        # The header UART, found by the image itself, read in 8N1; no console nor login prompt on it.
        assert facts["service"] == "active|0"
        assert "/dev/ttyS1: the mini UART /soc/serial@7e215040" in facts["opened"], facts["opened"]
        assert "uart1_gpio14" in facts["opened"] and "8N1" in facts["opened"]
        assert "serial /dev/ttyS1 opened at" in facts["serial"] and "8N1" in facts["serial"]
        assert facts["getty"] == "masked|inactive"
        assert "console=ttyS" not in facts["cmdline"] and "cma=" not in facts["cmdline"]
        # The settings survive raspi-firmware's hook (what every kernel or initramfs update runs).
        assert "console=ttyS" not in facts["regenerated_cmdline"] and "cma=" not in facts["regenerated_cmdline"]
        regenerated = facts["regenerated_config"].split("|")
        assert regenerated[0] == "enable_uart=1" and regenerated[1].startswith("# --- teleinfo begin"), regenerated
        assert {"core_freq=360", "core_freq_min=360", "# --- teleinfo end ---"} <= set(regenerated), regenerated
        assert "already applied (debian layout)" in facts["apply"] and facts["apply"].endswith("|status 0")
        # The card's teleinfo.toml applied, and a device-side edit not reverted by the untouched card.
        assert facts["config"] == facts["applied"] == card_sha
        assert facts["kept"] == "# edited on the device"
        # custom.toml as Imager writes it.
        assert facts["hostname"] == "linky-pi3" and facts["wlan"] == "country=FR"
        assert {"marie", "sudo", "dialout", "gpio", "teleinfo"} <= set(facts["marie"].split())
        assert facts["sudoers"] == "marie ALL=(ALL:ALL) ALL"
        as_marie = guest.ssh("command -v teleinfo && teleinfo --version", user="marie")
        assert as_marie.startswith("/usr/local/bin/teleinfo"), as_marie
        assert facts["path"] == "/usr/local/bin/teleinfo"
        # The network is usb0 (QEMU's usb-net on the emulated USB), announced by mDNS with the health port.
        assert "usb0" in facts["ifaces"].split("|")
        a, ptr = (_mdns_answer(part) for part in facts["mdns"].split("|"))
        assert b"\x15teleinfo on linky-pi3" in ptr and b"_teleinfo" in ptr  # the name's length: no suffix
        assert socket.inet_aton(GUEST_IP) in a
        assert facts["mdns_timer"] == "enabled|active"
        # A rename (what avahi does after a conflict, spurious or not) undone by the guard.
        renamed, renamed_name = facts["renamed"].split("|")
        assert socket.inet_aton(GUEST_IP) in _mdns_answer(renamed) and renamed_name == 's "linky-pi3-2"', renamed
        restored_name, restored = facts["restored"].split("|")
        assert restored_name == 's "linky-pi3"' and socket.inet_aton(GUEST_IP) in _mdns_answer(restored)
        # (2/3 when the guard's last run had given the name back after a spurious rename at boot)
        assert re.fullmatch(
            r"mDNS: avahi had renamed this host linky-pi3-2\.local after a name conflict; "
            r"asked for linky-pi3\.local again \([12]/3\)",
            facts["guard"],
        ), facts["guard"]
        assert facts["avahi"] == f"active|<port>{HEALTH_PORT}</port>|<port>8080</port>"  # health, the live page
        # GPIO for the service user, security updates by themselves.
        assert facts["gpiochip"] == "gpio 660" and facts["gpio"] == "1", facts["gpio"]
        origins = re.findall(r'Origins-Pattern:: "([^"]*)";', facts["origins"])
        assert origins == ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security"], origins
        assert facts["periodic"] == 'APT::Periodic::Unattended-Upgrade "1";' and facts["timer"] == "enabled"
        doctor = facts["doctor"]
        assert doctor.endswith("|status 0"), doctor.replace("|", "\n")
        assert "ok    uart           header UART /dev/ttyS1: the mini UART" in doctor and "8N1" in doctor
        assert "ok    boot config" in doctor and "survives updates" in doctor and "ok    uart clock" in doctor
    except BaseException:
        guest.stop()
        print(f"--- the guest's journal (read from the card) ---\n{guest_journal(disk)}")
        raise
    finally:
        guest.stop()
        disk.unlink(missing_ok=True)


# --- amd64: q35, the meter on a configured device, then updates -------------------------------------------------
UPDATE_TOPICS = ("teleinfo/+/state", "teleinfo/bridge/+/update", "homeassistant/device/+/config")
JOURNAL = "journalctl -o cat --no-pager"
# The health /status document on one line (a fact's lines are joined with '|').
ONE_LINE = "python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'"
STATUS = f"teleinfo status --port {HEALTH_PORT} --json | {ONE_LINE}"
PHASE = 'python3 -c \'import json; print(json.load(open("/var/lib/teleinfo-update/transaction.json"))["phase"])\''
FAILED = "systemctl --failed; journalctl -b -u teleinfo -u teleinfo-update --no-pager | tail -80"
# What unattended-upgrades leaves after a kernel update (its postinst hook's files).
REBOOT_REQUIRED = (
    "echo '*** System restart required ***' > /run/reboot-required; echo linux-image-amd64 > /run/reboot-required.pkgs"
)
# The update machinery's state, compared before and after a refused bundle (the service's process included).
STATE = (
    "readlink /opt/teleinfo/current /opt/teleinfo/previous; ls /opt/teleinfo/releases; "
    "sha256sum /var/lib/teleinfo-update/transaction.json /etc/teleinfo/teleinfo.toml /etc/systemd/system/teleinfo*; "
    "systemctl show -P InvocationID teleinfo; systemctl show -P MainPID teleinfo"
)


def _status(guest: Guest) -> dict[str, Any]:
    """The guest's health ``/status``, read in the guest (the loopback peer gets the whole document)."""
    out = guest.ssh(STATUS)
    try:
        return dict(json.loads(out))
    except ValueError:
        return {}


def _update_state(guest: Guest) -> dict[str, Any]:
    """The last retained update state the appliance published on MQTT."""
    assert guest.subscriber is not None
    found = [p for t, p, *_ in guest.subscriber.messages if t.endswith("/update")]
    return dict(json.loads(found[-1])) if found else {}


def _discovered_sw(guest: Guest) -> str:
    assert guest.subscriber is not None
    found = [p for t, p, *_ in guest.subscriber.messages if t.startswith("homeassistant/device/")]
    return str(json.loads(found[-1])["dev"].get("sw")) if found else ""


def _delivered_after(guest: Guest, ledger: qemu_updates.Ledger, n: int, timeout: float = 120) -> None:
    """Frames sent after frame ``n`` reach victoria-metrics and MQTT: the appliance keeps delivering."""
    wait_until(lambda: max(ledger.vm_numbers(), default=0) > n, timeout, interval=2)
    wait_until(lambda: max(ledger.mqtt_numbers(guest.states()), default=0) > n, timeout, interval=1)


PORT_EVENT = re.compile(r"\[\s*([0-9.]+)\] .*serial /dev/ttyS1 (closed|opened at)")


def _port_closed(guest: Guest) -> list[float]:
    """Seconds the meter's port stayed closed at each restart of the service in this boot (from "closed" to the
    next "opened at" in the journal): what the meter sends then is not read, as on a real line, where nothing
    holds it back.  QEMU's UART often holds it back (it stops reading its socket), so fewer frames are lost."""
    out = guest.ssh(f"{JOURNAL} -b -u teleinfo -o short-monotonic | grep -E 'serial /dev/ttyS1 (closed|opened at)'")
    windows, closed = [], None
    for line in out.splitlines():
        m = PORT_EVENT.search(line)
        if m and m[2] == "closed":
            closed = float(m[1])
        elif m and closed is not None:
            windows.append(round(float(m[1]) - closed, 1))
            closed = None
    return windows


def _sent_while_closed(windows: list[float]) -> int:
    """Frames the meter (one every 0.5 s) sends during those windows, plus the frame being read when the port
    closed and the one cut when it opened again, per window."""
    return sum(math.ceil(w / 0.5) + 2 for w in windows)


def _install(guest: Guest, bundle: str, timeout: float = 900) -> tuple[int, str, float]:
    """``teleinfo update install`` by hand in the guest: (exit status, what it said, seconds)."""
    t0 = time.monotonic()
    out = guest.ssh(f"teleinfo update install /var/tmp/{bundle} 2>&1; echo status=$?", timeout=timeout)
    status = int(out.rsplit("status=", 1)[1]) if "status=" in out else -1
    return status, out, time.monotonic() - t0


def test_amd64_q35_boots_reads_a_configured_device_and_updates_itself(
    image_dir: Path,
    servers: Callable[[], tuple[Mosquitto, VictoriaMetrics]],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    info = _built(image_dir, "amd64")
    _require("qemu-system-x86_64", "scp")
    image = image_dir / str(info["image"])
    sizes = _sizes(image_dir, image)
    offset = int(info["boot_partition_offset"])  # type: ignore[call-overload]
    update_key = image_builds.update_key(image_dir, create=False)
    wheels = image_dir / f"{info['name']}.wheels"
    if not update_key.exists() or not wheels.is_dir():
        pytest.fail(
            f"{image_dir} has no {update_key.name} or {wheels.name}/: build the images with tests/image_builds "
            "(the test session does), or image/build --update-key DIR/update-test.pem after "
            "python -m appliance.update.bundle keygen DIR/update-test.key DIR/update-test.pem"
        )
    # The update bundles are made on the host while the guest boots (the image's own wheels, a newer appliance).
    versions = {qemu_updates.newer(k): broken for k, broken in ((1, None), (2, "never-ready"), (3, None), (9, None))}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        made = pool.submit(qemu_updates.bundles, wheels, update_key, "x86_64", tmp_path / "bundles", versions)
        disk = card_copy(image, tmp_path, 256)  # first boot grows the root file system by that much
        write_boot_file(disk, offset, "teleinfo.toml", guest_config("/dev/ttyS1"))  # as a USB dongle is named
        key, pub = _keypair(tmp_path)
        custom = 'config_version = 1\n[system]\nhostname = "linky-amd64"\n'
        custom += f'[ssh]\nenabled = true\nauthorized_keys = ["{pub}"]\n'
        custom += '[wlan]\nssid = "Maison"\npassword = "correct horse"\ncountry = "FR"\n'  # no wlan0 here: written only
        custom += '[locale]\ntimezone = "Mars/Olympus_Mons"\n'  # invalid on purpose: reported, the boot goes on
        write_boot_file(disk, offset, "custom.toml", custom)

        broker, vm = servers()
        ssh_port, health_port = free_port(), free_port()
        console, tic_sock = tmp_path / "console.log", tmp_path / "tic.sock"
        net = netdev(broker.port, vm.port, ssh_port, health_port)
        kernel, initrd = image_dir / str(info["kernel"]), image_dir / str(info["initrd"])
        append = str(info["qemu_append"])
        argv = direct_argv("amd64", kernel, initrd, append, disk, net, console, tic_sock)
        guest = Guest(tmp_path, argv, broker, key, ssh_port, health_port, console, tic_sock, numbered=True,
                      topics=UPDATE_TOPICS)  # fmt: skip
        guest.start()
        try:
            _booted(guest, record_property, "amd64 q35", sizes)
            wait_until(lambda: health_line(health_port).startswith("up"), 60)
            facts = guest.facts(
                _script(
                    [
                        ("service", "systemctl is-active teleinfo.service"),
                        ("opened", "journalctl -b -u teleinfo -o cat | grep -m1 'opened at'"),
                        ("hostname", "hostname"),
                        ("groups", "id -nG teleinfo"),
                        ("tools", "command -v nmap ssh"),
                        ("wlan", "grep -c 'ssid=\"Maison\"' /etc/wpa_supplicant/wpa_supplicant-wlan0.conf"),
                        (
                            "tz",
                            "journalctl -b -u teleinfo-firstboot -o cat | grep -c 'locale.timezone .Mars/Olympus_Mons'",
                        ),
                        ("keys", "ls /etc/teleinfo/update-keys"),
                    ]
                )
            )
            assert facts["service"] == "active"
            assert "serial /dev/ttyS1 opened at" in facts["opened"] and "7E1" in facts["opened"]  # configured: as is
            assert facts["hostname"] == "linky-amd64"
            assert {"teleinfo", "dialout", "gpio"} <= set(facts["groups"].split())
            assert facts["tools"] == "/usr/bin/nmap|/usr/bin/ssh"
            assert facts["wlan"] == "1" and facts["tz"] == "1"
            assert facts["keys"] == "update-test.pem"  # image/build --update-key
            log = guest.log()
            assert "root file system grown by 256 MiB" in log and "SSH host keys generated" in log
            assert "ERROR: locale.timezone 'Mars/Olympus_Mons' is not a time zone" in log
            wait_until(lambda: bool(vm.export()), 60)
            assert json.loads(guest.states()[0][1])

            t0 = time.monotonic()
            bundles = made.result(timeout=600)
            print(f"  bundles ready {time.monotonic() - t0:.0f} s after the boot: {[b.name for b in bundles.values()]}")
            _updates(guest, vm, bundles, tmp_path, (kernel, initrd, append, disk, net, tic_sock), record_property)
        except BaseException:
            print(f"--- console ---\n{guest.log()[-6000:]}")
            print(f"--- guest ---\n{guest.ssh(FAILED, timeout=60)}")
            raise
        finally:
            guest.stop()
            disk.unlink(missing_ok=True)


def _updates(
    guest: Guest,
    vm: VictoriaMetrics,
    bundles: dict[str, Path],
    tmp_path: Path,
    machine: tuple[Path, Path, str, Path, str, Path],
    record_property: Callable[[str, object], None],
) -> None:
    """Issue 18's point 5 on the booted q35 guest, in one boot and one reboot: a newer bundle from the card (the
    spool held during the install), a bundle that never gets READY (rolled back by itself), two refused bundles,
    and a power cut during an install; every frame the meter sends is numbered and counted on the host."""
    assert guest.feed is not None
    feed = guest.feed
    ledger = qemu_updates.Ledger(vm)
    v1, v2, v3, v9 = (qemu_updates.newer(k) for k in (1, 2, 3, 9))
    figures: dict[str, float] = {}

    # --- A: a newer bundle dropped on the card, installed by teleinfo-update.service (the timer's unit), while
    # victoria-metrics is down: the install waits for the spool to drain before restarting the service. A kernel
    # update's /run/reboot-required (what unattended-upgrades leaves) is reported after it.
    guest.put(bundles[v1], f"/boot/firmware/{bundles[v1].name}")
    guest.ssh(REBOOT_REQUIRED)
    step = ledger.begin("A newer bundle (card)", feed.sent)
    closed_before = len(_port_closed(guest))
    vm.stop()
    t0 = time.monotonic()
    guest.ssh("systemctl start --no-block teleinfo-update.service")
    journal = f"{JOURNAL} -u teleinfo-update"

    def waiting() -> bool:
        said = guest.ssh(journal)
        assert "refused" not in said and "ROLLED BACK" not in said, said
        return "waiting for the spools to drain" in said

    wait_until(waiting, 900, interval=3)
    step.notes["spooled while waiting"] = int(_status(guest).get("outputs", {}).get("influxdb", {}).get("spooled", 0))
    vm.start()
    wait_until(lambda: guest.ssh("systemctl show -P ActiveState teleinfo-update") in ("inactive", "failed"), 900, 3)
    figures["install_s"] = time.monotonic() - t0
    step.last, step.restarts = feed.sent, 1
    step.notes["port closed s"] = _port_closed(guest)[closed_before:]
    a = guest.facts(
        _script(
            [
                ("result", "systemctl show -P Result teleinfo-update"),
                ("journal", journal),
                ("card", "ls /boot/firmware | grep teleinfo-update"),
                ("card_log", "cat /boot/firmware/teleinfo-update.log"),
                ("current", "readlink /opt/teleinfo/current; readlink /opt/teleinfo/previous"),
                ("status", STATUS),
                ("doctor", "teleinfo doctor --skip meter --skip clock --skip holders; echo status $?"),
            ]
        )
    )
    print(f"  A: {a['journal'].replace('|', chr(10) + '    ')}")
    assert a["result"] == "success", a
    assert f"release {v1}-" in a["journal"] and "committed" in a["journal"], a["journal"]
    assert "spools drained" in a["journal"]
    assert a["card"] == f"{bundles[v1].name}.installed|teleinfo-update.log", a["card"]
    assert f"{bundles[v1].name}: installed:" in a["card_log"]
    current, previous = a["current"].split("|")
    assert current.startswith(f"releases/{v1}-") and previous == f"releases/{__version__}-image"
    status = json.loads(a["status"])
    assert status["version"] == v1 and status["health"]["state"] == "up"
    assert status["update"]["reboot_required"] is True  # point 4: a real /run/reboot-required
    assert status["update"]["reboot_reasons"] == ["updates need a reboot (linux-image-amd64)"]
    assert "warn  reboot         pending: updates need a reboot (linux-image-amd64)" in a["doctor"], a["doctor"]
    _delivered_after(guest, ledger, step.last)
    wait_until(lambda: _update_state(guest).get("version") == v1 and _discovered_sw(guest) == v1, 60)
    mqtt_state = _update_state(guest)
    assert mqtt_state["release"] == current.removeprefix("releases/") and mqtt_state["reboot_required"] is True
    assert mqtt_state["last_update"]["phase"] == "committed"
    m = re.search(r"installed in ([0-9.]+) s", a["journal"])
    figures["pip_s"] = float(m[1]) if m else -1.0
    m = re.search(r"committed \(([0-9.]+) s to health up\)", a["journal"])
    figures["restart_to_up_s"] = float(m[1]) if m else -1.0

    # --- B: a release whose service never sends READY. The real systemd enforces the unit's start timeout (kills
    # it, restarts it); the guard counts the second start, the installer puts the previous release back.
    guest.put(bundles[v2], f"/var/tmp/{bundles[v2].name}")
    step = ledger.begin("B never READY (rolled back)", feed.sent)
    closed_before = len(_port_closed(guest))
    status_b, out, figures["rollback_s"] = _install(guest, bundles[v2].name)
    step.last, step.restarts = feed.sent, 3
    step.notes["port closed s"] = _port_closed(guest)[closed_before:]
    print(f"  B: {out}")
    assert status_b == 1 and "ROLLED BACK" in out, out
    assert (
        "the service restarted during the trial" in out
        and f"Release {current.removeprefix('releases/')} runs again" in out
    )
    b = guest.facts(
        _script(
            [
                ("timeout", f"{JOURNAL} -u teleinfo | grep -c 'start operation timed out'"),
                ("counted", f"{JOURNAL} -u teleinfo | grep -c 'on trial: start counted'"),
                ("current", "readlink /opt/teleinfo/current"),
                ("releases", "ls /opt/teleinfo/releases"),
                ("phase", PHASE),
                ("status", STATUS),
            ]
        )
    )
    assert b["timeout"] == "1" and int(b["counted"]) >= 2, b  # systemd's TimeoutStartSec, then its restart
    assert b["current"] == current and b["phase"] == "rolled-back"
    assert not any(r.startswith(v2) for r in b["releases"].split("|")), b["releases"]
    status = json.loads(b["status"])
    assert status["version"] == v1 and status["health"]["state"] == "up"
    _delivered_after(guest, ledger, step.last)
    wait_until(lambda: _update_state(guest).get("last_update", {}).get("phase") == "rolled-back", 60)
    assert _update_state(guest)["version"] == v1

    # --- C: refused before anything changes: a bundle signed by a key the image does not trust, and a bundle with
    # one byte of the appliance's wheel changed after signing.
    refused = {
        "untrusted": qemu_updates.untrusted(bundles[v9], tmp_path / f"untrusted-{bundles[v9].name}"),
        "tampered": qemu_updates.tampered(
            bundles[v9], tmp_path / f"tampered-{bundles[v9].name}", f"wheels/teleinfo_appliance-{v9}-py3-none-any.whl"
        ),
    }
    for path in refused.values():
        guest.put(path, f"/var/tmp/{path.name}")
    step = ledger.begin("C refused (signature, hash)", feed.sent)
    before = guest.ssh(STATE)
    outs = {name: _install(guest, path.name) for name, path in refused.items()}
    assert guest.ssh(STATE) == before  # same releases, links, configuration, units, transaction, service process
    step.last = feed.sent
    for name, (code, out, _s) in outs.items():
        print(f"  C {name}: {out}")
        assert code == 1 and "refused, nothing changed: bundle refused" in out, out
    assert "bad signature" in outs["untrusted"][1] and "SHA-256 differs" in outs["tampered"][1], outs

    # --- D: a power cut (QEMU killed) during an install, once the new release is on trial; the next boot runs a
    # working release (the guard puts the previous one back before the service starts).
    guest.put(bundles[v3], f"/var/tmp/{bundles[v3].name}")
    step = ledger.begin("D power cut in the trial", feed.sent)
    guest.ssh(
        f"systemd-run --unit=teleinfo-install-test /usr/local/bin/teleinfo update install /var/tmp/{bundles[v3].name}"
    )
    tx = "/var/lib/teleinfo-update/transaction.json"
    waited = guest.ssh(
        f'for i in $(seq 3000); do grep -q \'"phase": "trial"\' {tx} && break; sleep 0.2; done; grep phase {tx}',
        timeout=900,
    )
    assert '"trial"' in waited, waited
    guest.power_cut()
    step.notes["cut at frame"] = feed.sent
    kernel, initrd, append, disk, net, tic_sock = machine
    guest.console = tmp_path / "console-after-cut.log"
    guest.power_on(direct_argv("amd64", kernel, initrd, append, disk, net, guest.console, tic_sock))
    sent_while_off = feed.sent - step.notes["cut at frame"]  # the feed cannot connect while QEMU is gone
    figures["cut_to_first_frame_s"] = guest.first_frame()
    wait_until(lambda: guest.ssh("systemctl is-system-running --wait") in ("running", "degraded"), 300, interval=2)
    assert guest.qemu is not None
    guest.relays = children_of(guest.qemu.pid)
    d = guest.facts(
        _script(
            [
                ("guard", f"{JOURNAL} -b -u teleinfo | grep teleinfo-update-guard"),
                ("current", "readlink /opt/teleinfo/current"),
                ("releases", "ls /opt/teleinfo/releases"),
                ("phase", PHASE),
                ("service", "systemctl is-active teleinfo; systemctl show -P NRestarts teleinfo"),
                ("status", STATUS),
            ]
        )
    )
    print(f"  D: {d}")
    # What the meter sent from the cut until the service opened the port in the new boot is lost, as on a real line
    # (the guest's monotonic clock starts with QEMU, within a second of power_on).
    opened = guest.ssh(f"{JOURNAL} -b -u teleinfo -o short-monotonic | grep -m1 'serial /dev/ttyS1 opened at'")
    m = PORT_EVENT.search(opened)
    assert m is not None, opened
    step.notes["lost bound"] = sent_while_off + _sent_while_closed([float(m[1]) + 1.0])
    assert f"interrupted during the trial of {v3}-" in d["guard"] and "put back" in d["guard"], d["guard"]
    assert d["current"] == current and d["phase"] == "rolled-back" and d["service"] == "active|0"
    assert not any(r.startswith(v3) for r in d["releases"].split("|")), d["releases"]
    status = json.loads(d["status"])
    assert status["version"] == v1 and status["health"]["state"] == "up"
    # The guard's rollback is the last update, for /status and MQTT (its files readable under the unit's umask).
    assert status["update"]["last_update"]["phase"] == "rolled-back", status["update"]
    assert status["update"]["last_update"]["to"].startswith(f"{v3}-"), status["update"]
    wait_until(lambda: _update_state(guest).get("last_update", {}).get("to", "").startswith(f"{v3}-"), 60)
    step.last = feed.sent
    _delivered_after(guest, ledger, step.last)

    # --- the frames: every one the meter sent during each step, counted where they arrived.
    vm_numbers, mqtt_numbers = ledger.vm_numbers(), ledger.mqtt_numbers(guest.states())
    rows = ledger.report(vm_numbers, mqtt_numbers)
    for row in rows:
        print(f"  frames {row}")
    for name, value in figures.items():
        record_property(name, round(value, 1))
    record_property("frames", rows)
    print(f"  figures: {', '.join(f'{k} {v:.1f}' for k, v in figures.items())}")
    by_step = {row["step"][0]: row for row in rows}
    cut = by_step["D"]["cut at frame"]
    for missing in ("missing", "missing on mqtt"):
        assert not by_step["C"][missing]  # no restart: not one frame lost
        for s in "AB":  # a restart loses at most what the meter sent while no process had the port open
            assert len(by_step[s][missing]) <= _sent_while_closed(by_step[s]["port closed s"]), by_step[s]
        # The power cut: every frame sent before it was delivered but the last one (maybe still in the UART when the
        # power went); the meter's frames while the guest was off or booting, until the service opened the port
        # again, are lost, as on a real line.
        assert all(n >= cut for n in by_step["D"][missing]), by_step["D"]
        assert len(by_step["D"][missing]) <= by_step["D"]["lost bound"], by_step["D"]
