"""Booting the SD-card image under QEMU (``-accel tcg``) with a simulated meter and servers on the host's loopback:
what tests/test_image.py and bench/image.py share.

Network safety: the guest's network is QEMU user networking with ``restrict=on`` (:func:`netdev`): it reaches
only the ports forwarded to the host's 127.0.0.1.  The meter is a unix-socket chardev behind a guest UART.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from appliance.simulator import PARIS, MeterSimulator

from .meterframes import historique_frame
from .mosquitto import Mosquitto, Subscriber
from .util import wait_until

NUMBERED_BASE = 10_000_000  # TicFeed(numbered=True): frame n carries BASE = NUMBERED_BASE + n
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # systemd's colours on the console
GUEST_HOST = "10.0.2.100"  # the address the guest's outputs use; QEMU relays it to the host's loopback
GUEST_IP = "10.0.2.15"  # QEMU user networking's address for the guest
HEALTH_PORT = 9990  # the guest's health port in guest_config(): not the default, so what follows it is tested


class TicFeed:
    """The simulated meter on the host, writing historic-mode frames into the QEMU chardev's unix socket, one every
    0.5 s, across QEMU restarts (it connects again when the socket is back).

    ``numbered``: frame ``n`` (1, 2, ...) is the BASE contract meter :data:`tests.meterframes.METER` with the index
    ``BASE = NUMBERED_BASE + n`` Wh, so the frames that reached a server say which were lost; :attr:`sent` is the
    last ``n`` handed to the socket in full.  Otherwise, the simulator's realistic stream.

    QEMU's UARTs apply back-pressure: while no program in the guest has the port open (a service restart), QEMU
    stops reading the socket, and what the feed writes then waits in the socket instead of being lost, as it
    would be on a real line."""

    def __init__(self, path: Path, numbered: bool = False) -> None:
        self.path = path
        self.numbered = numbered
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TicFeed:
        self._thread.start()
        return self

    def _frames(self) -> Iterator[bytes]:
        if self.numbered:
            n = 0
            while True:
                n += 1
                yield historique_frame({"BASE": NUMBERED_BASE + n}, 500 + n % 1000)
        for frame in MeterSimulator(mode="historique", start=datetime.now(tz=PARIS)).frames():
            yield frame.data

    def _run(self) -> None:
        frames = self._frames()
        pending: bytes | None = None  # a frame the last connection did not take in full: sent again, whole
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(self.path))
                    while not self._stop.wait(0.5):
                        pending = pending or next(frames)
                        sock.sendall(pending)
                        pending = None
                        self.sent += 1
            except OSError:
                self._stop.wait(0.2)  # QEMU not listening yet, or gone

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def write_boot_file(disk: Path, offset: int, name: str, data: str | bytes) -> None:
    """Put a file on the FAT boot partition of ``disk``, as a user would before the first boot."""
    src = disk.parent / name
    src.write_bytes(data.encode() if isinstance(data, str) else data)
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{offset}", str(src), f"::/{name}"], check=True, timeout=30)


def read_boot_file(disk: Path, offset: int, name: str, dest: Path) -> Path:
    subprocess.run(["mcopy", "-n", "-i", f"{disk}@@{offset}", f"::/{name}", str(dest)], check=True, timeout=60)
    return dest


def guest_config(device: str | None) -> str:
    source = f'[source]\ndevice = "{device}"\nmode = "historique"\n' if device else ""
    return f"""{source}
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
port = {HEALTH_PORT}
"""


def health_line(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.settimeout(3)
            return s.recv(200).decode(errors="replace").strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s*{pid}$", text, re.M):
            found.append(int(status.parent.name))
    return found


@dataclass
class Guest:
    """One QEMU boot of a card: its process, console, meter feed, forwards; and a way in (SSH as root)."""

    tmp: Path
    argv: list[str]
    broker: Mosquitto
    key: Path
    ssh_port: int
    health_port: int
    console: Path
    tic_sock: Path
    qemu: subprocess.Popen[bytes] | None = None
    feed: TicFeed | None = None
    subscriber: Subscriber | None = None
    started: float = 0.0
    relays: list[int] = field(default_factory=list)
    numbered: bool = False  # the meter's frames numbered (TicFeed)
    topics: tuple[str, ...] = ("teleinfo/+/state",)  # what the test's MQTT subscriber records

    def start(self) -> Guest:
        self.subscriber = Subscriber(self.broker.port, list(self.topics))
        self._power_on()
        self.feed = TicFeed(self.tic_sock, self.numbered).start()
        return self

    def _power_on(self) -> None:
        self.started = time.monotonic()
        self.qemu = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def power_cut(self) -> None:
        """Kill QEMU at once (SIGKILL): what the guest had not written to its disk is lost, as in a power cut
        (what it had written is in the host's page cache: the disk file keeps it)."""
        assert self.qemu is not None
        self.qemu.kill()
        self.qemu.wait(30)
        if self.qemu.stderr is not None:
            self.qemu.stderr.close()
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in self.relays), 15)
        self.relays = []

    def power_on(self, argv: list[str]) -> None:
        """Boot the same disk again (``argv``: its console may be a new file); the meter and the subscriber go on."""
        self.argv = argv
        self._power_on()

    def states(self) -> list[tuple[str, bytes, bool, float]]:
        """The meter's state messages received so far (topic, payload, retained, arrival time)."""
        assert self.subscriber is not None
        with self.subscriber._lock:
            return [m for m in self.subscriber.messages if m[0].endswith("/state")]

    def log(self) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return ANSI.sub("", text)

    def first_frame(self, timeout: float = 600.0) -> float:
        """Seconds from QEMU's (last) start to the first frame on MQTT after it."""
        assert self.subscriber is not None and self.qemu is not None
        since = self.started

        def published() -> bool:
            assert self.qemu is not None
            if self.qemu.poll() is not None:
                raise AssertionError(f"QEMU exited: {self.qemu.stderr.read().decode() if self.qemu.stderr else ''}")
            return any(at > since for *_, at in self.states())

        wait_until(published, timeout, interval=0.2)
        return next(at for *_, at in self.states() if at > since) - since

    def ssh(self, command: str, user: str = "root", timeout: float = 120) -> str:
        """A command in the guest, with the key custom.toml authorized; its standard output."""
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             f"{user}@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        ).stdout.strip()  # fmt: skip

    def put(self, source: Path, target: str, timeout: float = 300) -> None:
        """Copy a host file into the guest (scp as root)."""
        subprocess.run(
            ["scp", "-q", "-i", str(self.key), "-P", str(self.ssh_port), "-o", "BatchMode=yes",
             "-o", "ConnectTimeout=30", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", str(source), f"root@127.0.0.1:{target}"],
            check=True, timeout=timeout,
        )  # fmt: skip

    def facts(self, script: str, timeout: float = 300) -> dict[str, str]:
        """Run a shell script in the guest that prints ``name=value`` lines (one SSH round trip for many
        checks: each costs seconds under TCG); its lines as a dict."""
        out = self.ssh(script, timeout=timeout)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        """Stop the meter, the subscriber and QEMU (idempotent)."""
        if self.feed is not None:
            self.feed.stop()
        if self.subscriber is not None:
            self.subscriber.close()
            self.subscriber = None
        if self.qemu is not None and self.qemu.returncode is None:
            self.qemu.terminate()
            try:
                self.qemu.wait(15)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
                self.qemu.wait(10)
            if self.qemu.stderr is not None:
                self.qemu.stderr.close()
        # QEMU's per-connection relays end with it: nothing of this test may keep running
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in self.relays), 15)


def netdev(mqtt_port: int, influx_port: int, ssh_port: int, health_port: int) -> str:
    """QEMU user networking that reaches nothing but the host's 127.0.0.1: the health and SSH ports forwarded in,
    MQTT and InfluxDB at GUEST_HOST forwarded out (one socat relay per connection)."""
    relay = "socat - TCP:127.0.0.1:{}"
    return ",".join(
        [
            "user,id=n0,restrict=on",
            f"hostfwd=tcp:127.0.0.1:{health_port}-:{HEALTH_PORT}",
            f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            f"guestfwd=tcp:{GUEST_HOST}:1883-cmd:{relay.format(mqtt_port)}",
            f"guestfwd=tcp:{GUEST_HOST}:8428-cmd:{relay.format(influx_port)}",
        ]
    )


def card_copy(image: Path, tmp: Path, extra_mib: int) -> Path:
    """The card as a user prepares it: a sparse copy of the image with room to grow (``extra_mib``, or up to the
    next power of two when negative, which QEMU's SD card model needs)."""
    disk = tmp / "sd.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True, timeout=120)
    size = disk.stat().st_size
    target = size + extra_mib * 2**20 if extra_mib >= 0 else 1 << (size - 1).bit_length()
    with disk.open("r+b") as f:
        f.truncate(target)
    return disk


def guest_journal(disk: Path, lines: int = 200) -> str:
    """The end of the journal on ``disk``'s root partition, read on the host once QEMU stopped (``debugfs`` and
    ``journalctl -D``): what a failed boot did, when neither SSH nor a console could say it."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True).stdout)
    root = table["partitiontable"]["partitions"][1]
    part, logs = disk.with_name("root-part.img"), disk.with_name("journal")
    with disk.open("rb") as src, part.open("wb") as dst:
        src.seek(root["start"] * 512)
        remaining = root["size"] * 512
        while remaining > 0:
            chunk = src.read(min(remaining, 2**24))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
    try:
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        subprocess.run(["debugfs", "-R", f"rdump /var/log/journal {logs}", str(part)], capture_output=True, timeout=120)
        out = subprocess.run(
            ["journalctl", "-D", str(logs / "journal"), "--no-pager", "-o", "short-monotonic", "-n", str(lines)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return out.stdout or out.stderr
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(logs, ignore_errors=True)


def pi3_boot(disk: Path, offset: int, dest: Path) -> tuple[Path, Path, Path, str]:
    """What a Raspberry Pi 3 B's firmware takes from the card: the kernel and initramfs ``config.txt`` names,
    the board's device tree, ``cmdline.txt``: (kernel, initrd, dtb, command line), copied into ``dest``."""
    config = read_boot_file(disk, offset, "config.txt", dest / "config.txt").read_text()
    kernel = re.search(r"^kernel=(\S+)$", config, re.M)
    initrd = re.search(r"^initramfs (\S+)", config, re.M)
    if kernel is None or initrd is None:
        raise AssertionError(f"config.txt names no kernel or initramfs:\n{config}")
    paths = [read_boot_file(disk, offset, name, dest / name) for name in (kernel[1], initrd[1], "bcm2837-rpi-3-b.dtb")]
    cmdline = read_boot_file(disk, offset, "cmdline.txt", dest / "cmdline.txt").read_text().strip()
    return paths[0], paths[1], paths[2], cmdline


def qemu_mini_uart_irq(dtb: Path) -> Path:
    """A copy of ``dtb`` for QEMU 7.2's raspi3b, whose mini UART has its interrupt-enable bits swapped against the
    hardware (``hw/char/bcm2835_aux.c``: bit 0 "transmit", bit 1 "receive"; the BCM2835 errata and Linux's 8250
    driver: bit 0 receive).  Once a program opens the port, Linux enables "receive", which QEMU takes for
    "transmit empty", always true: the interrupt never clears and CPU 0, which takes every peripheral interrupt,
    hangs in it (RCU stalls, SD card timeouts).  The copy gives the mini UART the USB controller's interrupt line
    instead (both drivers share theirs; the USB one fires many times a second while the emulated network is up),
    so the 8250 driver drains the receive FIFO on those, and the mini UART's own line is never enabled.  Nothing
    else changes: same node, compatible, pins, aliases, driver and tty."""
    patched = dtb.with_name(dtb.stem + "-qemu.dtb")
    patched.write_bytes(dtb.read_bytes())
    usb = subprocess.run(
        ["fdtget", str(patched), "/soc/usb@7e980000", "interrupts"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["fdtput", str(patched), "/soc/serial@7e215040", "interrupts", *usb], check=True)
    return patched


def raspi3b_argv(kernel: Path, initrd: Path, dtb: Path, cmdline: str, disk: Path, net: str, console: Path,
                 tic_sock: Path) -> list[str]:  # fmt: skip
    """An emulated Raspberry Pi 3 B: the card as its SD card, the network on its USB (usb-net, usb0 in the guest),
    the first UART (the PL011, Bluetooth's) to a file, the second (the mini UART, on GPIO14/15) from the meter."""
    return [
        "qemu-system-aarch64", "-M", "raspi3b", "-accel", "tcg", "-display", "none", "-no-reboot",
        "-monitor", "none", "-nodefaults",
        "-kernel", str(kernel), "-initrd", str(initrd), "-dtb", str(dtb), "-append", cmdline,
        "-drive", f"file={disk},format=raw,if=sd",
        "-netdev", net, "-device", "usb-net,netdev=n0",
        "-chardev", f"file,id=uart0,path={console}", "-serial", "chardev:uart0",
        "-chardev", f"socket,id=tic,path={tic_sock},server=on,wait=off", "-serial", "chardev:tic",
    ]  # fmt: skip


def direct_argv(arch: str, kernel: Path, initrd: Path, append: str, disk: Path, net: str, console: Path,
                tic_sock: Path) -> list[str]:  # fmt: skip
    """QEMU's generic machines with the kernel booted directly: q35 (amd64; the meter on the second 16550, ttyS1)
    or virt (arm64; QEMU 7.2's virt has one PL011, the console: the meter on a PCI 16550, ttyS0).  ``disk`` (a
    copy of the card, :func:`card_copy`) is written to, so it persists across a power cut and the next boot."""
    machine = ["qemu-system-x86_64", "-M", "q35", "-cpu", "max"]
    tic = ["-serial", "chardev:tic"]
    if arch == "arm64":
        machine = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"]
        tic = ["-device", "pci-serial,chardev=tic"]
    return [
        *machine, "-accel", "tcg", "-smp", "2", "-m", "1024", "-display", "none", "-no-reboot",
        "-monitor", "none", "-nodefaults",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-drive", f"file={disk},format=raw,if=none,id=hd", "-device", "virtio-blk-pci,drive=hd",
        "-netdev", net, "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
        "-chardev", f"socket,id=tic,path={tic_sock},server=on,wait=off", *tic,
    ]  # fmt: skip
