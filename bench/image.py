"""The SD-card image's figures: its download size, and power-on to the first frame published under emulation.

Run from the repository root, as root (image/build and QEMU's user networking; needs the packages scripts/test
installs)::

    python bench/image.py                       # reuse build/image/teleinfo-debian-arm64.* or build it there
    python bench/image.py --image-dir DIR       # images built by image/build --output DIR
    python bench/image.py --machine raspi3b     # one machine only (default: raspi3b and virt)
    python bench/image.py --runs 3              # boots per machine (each is a first boot of a fresh card copy)

Prints, for the arm64 image: the ``.img.zst`` size against the 150 MB target; then for each boot, from QEMU's
start ("power on") to the first frame a local mosquitto receives (target 60 s), ``systemd-analyze time`` and the
head of ``systemd-analyze blame`` and the service's ``critical-chain`` (where the rest of the time goes), read
over SSH at the end of the boot.

* ``raspi3b``: QEMU's Raspberry Pi 3 B (4 Cortex-A53, TCG), booted as its firmware would boot the card (kernel,
  initrd, ``cmdline.txt`` and the Pi 3 B device tree from the boot partition), the meter on the mini UART.
* ``virt``: QEMU's generic arm64 machine (Cortex-A72, 2 vCPUs, TCG), the kernel booted directly, virtio disk.

Each boot is a first boot (the card's settings applied, SSH host keys made, the root file system grown), as a
household's is.  Emulated times are far slower than a real Pi's and depend on the host's load: compare runs of
one machine, and read them with the load average printed beside them.

Network safety: QEMU user networking with ``restrict=on``; the guest reaches only forwards to this host's
127.0.0.1 (SSH and health in, MQTT and InfluxDB out), mosquitto and victoria-metrics listen there only.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.mosquitto import Mosquitto  # noqa: E402
from tests.qemu_image import (  # noqa: E402
    Guest,
    card_copy,
    direct_argv,
    guest_config,
    netdev,
    pi3_boot,
    qemu_mini_uart_irq,
    raspi3b_argv,
    write_boot_file,
)
from tests.servers import VictoriaMetrics  # noqa: E402
from tests.util import free_port  # noqa: E402

print = functools.partial(print, flush=True)  # progress shows as it comes, even through a pipe
TARGET_ZST_MB = 150.0
TARGET_FIRST_FRAME_S = 60.0
NAME = "teleinfo-debian-arm64"


def ensure_image(directory: Path) -> dict[str, object]:
    import json

    info = directory / f"{NAME}.json"
    if not info.exists():
        print(f"no {info}: building it (image/build --arch arm64 --output {directory}), several minutes")
        subprocess.run([str(_REPO / "image" / "build"), "--arch", "arm64", "--output", str(directory)], check=True)
    return dict(json.loads(info.read_text()))


def boot(machine: str, directory: Path, info: dict[str, object], work: Path, blame_lines: int) -> float:
    """One first boot on ``machine``; returns the seconds from QEMU's start to the first frame on MQTT."""
    image = directory / str(info["image"])
    offset = int(str(info["boot_partition_offset"]))
    disk = card_copy(image, work, -1 if machine == "raspi3b" else 256)
    key = work / "id_ed25519"
    key.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (work / "id_ed25519.pub").read_text().strip()
    device = None if machine == "raspi3b" else "/dev/ttyS0"  # virt: the PCI 16550; raspi3b: found by the image
    write_boot_file(disk, offset, "teleinfo.toml", guest_config(device))
    write_boot_file(disk, offset, "custom.toml", f'config_version = 1\n[ssh]\nauthorized_keys = ["{pub}"]\n')
    broker = Mosquitto(work / "mosquitto").start()
    vm = VictoriaMetrics()
    vm.start(work)
    ssh_port, health_port = free_port(), free_port()
    console, tic = work / "console.log", work / "tic.sock"
    net = netdev(broker.port, vm.port, ssh_port, health_port)
    if machine == "raspi3b":
        files = work / "boot"
        files.mkdir(exist_ok=True)
        kernel, initrd, dtb, cmdline = pi3_boot(disk, offset, files)
        dtb = qemu_mini_uart_irq(dtb)  # QEMU 7.2's mini UART interrupt bug, as in tests/test_image.py
        argv = raspi3b_argv(kernel, initrd, dtb, cmdline, disk, net, console, tic)
    else:
        kernel, initrd = directory / str(info["kernel"]), directory / str(info["initrd"])
        argv = direct_argv("arm64", kernel, initrd, str(info["qemu_append"]), disk, net, console, tic)
    guest = Guest(work, argv, broker, key, ssh_port, health_port, console, tic)
    load = os.getloadavg()[0]
    try:
        guest.start()
        first = guest.first_frame(900)
        deadline = time.monotonic() + 300
        while guest.ssh("systemctl is-system-running --wait") not in ("running", "degraded"):
            if time.monotonic() > deadline:
                break
        analyze = guest.ssh("systemd-analyze time; systemd-analyze blame")
        chain = guest.ssh("systemd-analyze critical-chain --no-pager teleinfo.service")
    finally:
        guest.stop()
        vm.stop()
        broker.stop()
        disk.unlink(missing_ok=True)
    lines = analyze.splitlines()
    verdict = "met" if first <= TARGET_FIRST_FRAME_S else "MISSED"
    print(f"\n{machine}: power-on to first frame on MQTT {first:.1f} s "
          f"(target {TARGET_FIRST_FRAME_S:.0f} s, {verdict}); "
          f"host load average at start {load:.2f}")  # fmt: skip
    for line in lines[:1]:
        print(f"  {line}")
    print(f"  systemd-analyze blame (top {blame_lines}):")
    for line in lines[1 : 1 + blame_lines]:
        print(f"    {line.strip()}")
    print("  systemd-analyze critical-chain teleinfo.service:")
    for line in chain.splitlines()[2:]:
        print(f"    {line.rstrip()}")
    return first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-dir", type=Path, default=_REPO / "build" / "image")
    parser.add_argument("--machine", choices=("raspi3b", "virt"), action="append")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--blame", type=int, default=15, help="lines of systemd-analyze blame to print")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/image.py: needs root (image/build; QEMU itself does not)", file=sys.stderr)
        return 2
    missing = [t for t in ("qemu-system-aarch64", "mosquitto", "victoria-metrics", "socat", "mcopy", "ssh")
               if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]  # fmt: skip
    if missing:
        print(f"bench/image.py: not installed: {' '.join(missing)} (scripts/test installs them)", file=sys.stderr)
        return 2
    info = ensure_image(args.image_dir)
    zst = args.image_dir / f"{NAME}.img.zst"
    size = zst.stat().st_size
    print(f"{zst.name}: {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB), target {TARGET_ZST_MB:.0f} MB: "
          f"{'met' if size / 1e6 <= TARGET_ZST_MB else 'MISSED'}")  # fmt: skip
    img = args.image_dir / str(info["image"])
    print(f"{img.name}: {img.stat().st_size / 2**20:.0f} MiB apparent, {img.stat().st_blocks * 512 / 2**20:.0f} MiB "
          f"allocated; root file system {info.get('rootfs_mib')} MiB")  # fmt: skip
    results: dict[str, list[float]] = {}
    for machine in args.machine or ["raspi3b", "virt"]:
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="teleinfo-bench-") as work:
                results.setdefault(machine, []).append(boot(machine, args.image_dir, info, Path(work), args.blame))
    print("\nsummary (power-on to first frame on MQTT, s):")
    for machine, times in results.items():
        print(f"  {machine}: " + ", ".join(f"{t:.1f}" for t in times) + f" (median {statistics.median(times):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
