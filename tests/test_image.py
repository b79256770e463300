"""Smoke test of the SD-card image: build it with ``image/build``, boot it under QEMU, and see it publish.

For amd64 and arm64: the image boots with ``-accel tcg`` (KVM does not work on the CI machines) from a sparse copy
of the built disk (grown by 256 MiB, so first boot's growth has something to do), opened with ``snapshot=on``.
The test writes ``teleinfo.toml`` and ``custom.toml`` on the copy's FAT partition the way a user would, then:

* the meter simulator on the host writes TIC frames into a unix socket, a QEMU chardev behind the guest's second
  UART (amd64: ``/dev/ttyS1``; arm64: a PCI 16550, ``/dev/ttyS0``), which the guest's teleinfo.toml names;
* the guest's network is QEMU user networking with ``restrict=on``: it reaches nothing but what the test forwards,
  all on the host's 127.0.0.1 -- the health socket and SSH (hostfwd), and the mosquitto and victoria-metrics this
  test started (guestfwd from 10.0.2.100, each connection relayed by ``socat``);

and passes only when multi-user.target is reached, ``systemctl is-active teleinfo`` says active (over SSH, with the
key custom.toml authorized), the health socket answers ``up``, and frames reach both servers.  The invalid time
zone in custom.toml must be reported on the console while the device boots anyway.  Boot-to-first-published-frame
time and image sizes are printed (``pytest -s``) and kept as user properties.

``TELEINFO_IMAGE_DIR=<dir>`` reuses images built there by ``image/build --output <dir>`` instead of building.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from appliance.simulator import PARIS, MeterSimulator

from . import image_builds
from .mosquitto import Mosquitto, Subscriber
from .servers import VictoriaMetrics
from .util import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # systemd's colours on the console
GUEST_HOST = "10.0.2.100"  # the address the guest's outputs use; QEMU relays it to the host's loopback
BOOT_TIMEOUT = 400.0  # QEMU start to the first frame on MQTT, TCG on a loaded 2-core machine

# The build (arm64 through qemu-user) is most of it: a few minutes per architecture on 2 cores.
pytestmark = [pytest.mark.image, pytest.mark.integration, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1200)]

ARCHES = {
    "amd64": {
        "qemu": "qemu-system-x86_64",
        "machine": ["-M", "q35", "-cpu", "max"],
        "tic": lambda chardev: ["-serial", f"chardev:{chardev}"],
        "device": "/dev/ttyS1",
    },
    "arm64": {
        "qemu": "qemu-system-aarch64",
        "machine": ["-M", "virt", "-cpu", "cortex-a72"],
        # virt in QEMU 7.2 has one PL011 (the console): the TIC is a PCI 16550, ttyS0 in the guest
        "tic": lambda chardev: ["-device", f"pci-serial,chardev={chardev}"],
        "device": "/dev/ttyS0",
    },
}


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
    shutil.rmtree(built)  # about 2.5 GB per architecture


@pytest.fixture(params=sorted(ARCHES))
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def info(arch: str, image_dir: Path) -> dict[str, object]:
    """The image description image/build wrote (building the image first unless it is there already)."""
    return _built(image_dir, arch)


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
            [str(REPO / "image" / "build"), "--arch", arch, "--output", str(image_dir)],
            capture_output=True, text=True, timeout=1100, check=False,
        )  # fmt: skip
        if build.returncode != 0:
            pytest.fail(f"image/build --arch {arch} failed:\n{build.stderr[-6000:]}")
        print(f"\nimage/build --arch {arch}: {time.monotonic() - started:.0f} s")
        print("\n".join(line for line in build.stderr.splitlines() if "MiB" in line or "done in" in line))
    return json.loads(info_path.read_text())


class TicFeed:
    """The simulated meter on the host, writing historic-mode frames into the QEMU chardev's unix socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TicFeed:
        self._thread.start()
        return self

    def _run(self) -> None:
        frames = MeterSimulator(mode="historique", start=datetime.now(tz=PARIS)).frames()
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(self.path))
                    while not self._stop.wait(0.5):
                        sock.sendall(next(frames).data)
                        self.sent += 1
            except OSError:
                self._stop.wait(0.2)  # QEMU not listening yet, or gone

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _write_boot_file(disk: Path, offset: int, name: str, text: str) -> None:
    """Put a file on the FAT boot partition of ``disk``, as a user would before the first boot."""
    src = disk.parent / name
    src.write_text(text, encoding="utf-8")
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{offset}", str(src), f"::/{name}"], check=True, timeout=30)


def _guest_config(device: str) -> str:
    return f"""
[source]
kind = "serial"
device = "{device}"
mode = "historique"

[outputs.multicast]
enabled = false

[outputs.mqtt]
enabled = true
host = "{GUEST_HOST}"
port = 1883

[outputs.influxdb]
enabled = true
url = "http://{GUEST_HOST}:8428"
bucket = "teleinfo"

[health]
bind = "0.0.0.0"
port = 9999
"""


def _health(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.settimeout(3)
            return s.recv(200).decode(errors="replace").strip()
    except OSError:
        return ""


def _children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s*{pid}$", text, re.M):
            found.append(int(status.parent.name))
    return found


@pytest.fixture
def servers(info: dict[str, object], tmp_path: Path) -> Iterator[tuple[Mosquitto, VictoriaMetrics]]:
    """mosquitto and victoria-metrics on 127.0.0.1, started once the image is built (not idle during the build)."""
    _require("mosquitto", "victoria-metrics", "socat", "ssh", "mcopy")
    broker = Mosquitto(tmp_path / "mosquitto").start()
    vm = VictoriaMetrics()
    try:
        vm.start(tmp_path)
        yield broker, vm
    finally:
        vm.stop()
        broker.stop()


def test_image_boots_and_publishes(
    arch: str,
    image_dir: Path,
    info: dict[str, object],
    servers: tuple[Mosquitto, VictoriaMetrics],
    tmp_path: Path,
    record_property: object,
) -> None:
    spec = ARCHES[arch]
    _require(str(spec["qemu"]))
    broker, vm = servers
    image = image_dir / str(info["image"])
    sizes = {
        "image_mib": image.stat().st_size // 2**20,
        "image_allocated_mib": image.stat().st_blocks * 512 // 2**20,
        "image_zst_mib": (image_dir / f"{image.name}.zst").stat().st_size // 2**20,
    }

    # The card as a user prepares it: a copy (sparse), 256 MiB larger than the image, with their settings.
    disk = tmp_path / "sd.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True, timeout=120)
    with disk.open("r+b") as f:
        f.truncate(disk.stat().st_size + 256 * 2**20)
    offset = int(info["boot_partition_offset"])  # type: ignore[call-overload]
    _write_boot_file(disk, offset, "teleinfo.toml", _guest_config(str(spec["device"])))
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    pub = (tmp_path / "id_ed25519.pub").read_text().strip()
    custom = f'config_version = 1\n[system]\nhostname = "linky-{arch}"\n'
    custom += f'[ssh]\nenabled = true\nauthorized_keys = ["{pub}"]\n'
    custom += '[wlan]\nssid = "Maison"\npassword = "correct horse"\ncountry = "FR"\n'  # no wlan0 here: written only
    custom += '[locale]\ntimezone = "Mars/Olympus_Mons"\n'  # invalid on purpose: reported, the boot goes on
    _write_boot_file(disk, offset, "custom.toml", custom)

    health_port, ssh_port = free_port(), free_port()
    relay = "socat - TCP:127.0.0.1:{}"
    netdev = ",".join(
        [
            "user,id=n0,restrict=on",
            f"hostfwd=tcp:127.0.0.1:{health_port}-:9999",
            f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            f"guestfwd=tcp:{GUEST_HOST}:1883-cmd:{relay.format(broker.port)}",
            f"guestfwd=tcp:{GUEST_HOST}:8428-cmd:{relay.format(vm.port)}",
        ]
    )
    console = tmp_path / "console.log"
    tic_sock = tmp_path / "tic.sock"
    argv = [
        str(spec["qemu"]), *spec["machine"], "-accel", "tcg", "-smp", "2", "-m", "1024",
        "-display", "none", "-no-reboot", "-monitor", "none", "-nodefaults",
        "-kernel", str(image_dir / str(info["kernel"])), "-initrd", str(image_dir / str(info["initrd"])),
        "-append", str(info["qemu_append"]),
        "-drive", f"file={disk},format=raw,if=none,id=hd,snapshot=on", "-device", "virtio-blk-pci,drive=hd",
        "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
        "-chardev", f"socket,id=tic,path={tic_sock},server=on,wait=off", *spec["tic"]("tic"),
    ]  # fmt: skip
    subscriber = Subscriber(broker.port, ["teleinfo/+/state"])
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    feed = TicFeed(tic_sock).start()
    relays: list[int] = []

    def ssh(command: str) -> str:
        """A command in the guest, as root with the key custom.toml authorized; its standard output."""
        return subprocess.run(
            ["ssh", "-i", str(key), "-p", str(ssh_port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout.strip()  # fmt: skip

    try:

        def log() -> str:
            text = console.read_text(errors="replace") if console.exists() else ""
            return ANSI.sub("", text)

        def running() -> bool:
            assert qemu.poll() is None, f"QEMU exited: {qemu.stderr.read().decode() if qemu.stderr else ''}"
            return bool(subscriber.messages)

        wait_until(running, BOOT_TIMEOUT, interval=0.2)
        first_frame = subscriber.messages[0][3] - started
        # The console stops showing systemd's status once a getty takes it (amd64): ask systemd itself.
        wait_until(lambda: ssh("systemctl is-active multi-user.target") == "active", 120, interval=1)
        boot_time = ssh("systemd-analyze time").splitlines()[0]
        relays = _children_of(qemu.pid)
        wait_until(lambda: _health(health_port).startswith("up"), 60)

        assert ssh("systemctl is-active teleinfo.service") == "active"
        assert ssh("hostname") == f"linky-{arch}"
        assert ssh("systemctl is-enabled serial-getty@ttyAMA0.service") == "masked"
        assert {"teleinfo", "dialout"} <= set(ssh("id -nG teleinfo").split())
        assert ssh("command -v nmap ssh") == "/usr/bin/nmap\n/usr/bin/ssh"
        assert ssh("grep -c 'ssid=\"Maison\"' /etc/wpa_supplicant/wpa_supplicant-wlan0.conf") == "1"
        assert "root file system grown by 256 MiB" in log()
        assert "SSH host keys generated" in log()
        assert "ERROR: locale.timezone 'Mars/Olympus_Mons' is not a time zone" in log()
        assert "ERROR: locale.timezone 'Mars/Olympus_Mons'" in ssh("journalctl -b -u teleinfo-firstboot --no-pager")
        wait_until(lambda: bool(vm.export()), 60)

        state = json.loads(subscriber.messages[0][1])
        assert state, "an empty MQTT state"
        record_property("startup", boot_time)
        record_property("first_frame_s", round(first_frame, 1))
        for name, value in sizes.items():
            record_property(name, value)
        print(
            f"\n{arch}: first frame on MQTT {first_frame:.1f} s after QEMU started; guest: {boot_time}; "
            f"{feed.sent} frames sent; image {sizes}"
        )
    except BaseException:
        print(f"--- {arch} console ---\n{console.read_text(errors='replace')[-6000:] if console.exists() else ''}")
        print(f"--- {arch} guest ---\n{ssh('systemctl --failed; journalctl -b -u teleinfo --no-pager | tail -60')}")
        raise
    finally:
        feed.stop()
        subscriber.close()
        qemu.terminate()
        try:
            qemu.wait(15)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait(10)
        if qemu.stderr is not None:
            qemu.stderr.close()
        (tmp_path / "sd.img").unlink(missing_ok=True)
        # QEMU's per-connection relays end with it: nothing of this test may keep running
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in relays), 15)
