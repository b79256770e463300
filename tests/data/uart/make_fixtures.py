#!/usr/bin/env python3
"""Write the device-tree and sysfs trees that tests/test_uart.py gives the header-UART resolver.

Each fixture is the part of a live system the resolver reads: ``proc/device-tree`` (``model``, ``compatible``,
``aliases``, every node a ``serialN`` alias names with its children, and the pin groups their ``pinctrl-0``
points to, each property as the raw bytes the kernel shows) and ``sys/class/tty/<tty>/device/of_node`` (a symlink,
as in sysfs, naming the node the kernel made that tty from).

* ``debian-*``: extracted with ``fdtget`` from the device-tree blobs of Debian 12's ``linux-image-arm64``
  (``/usr/lib/linux-image-*/broadcom/``, also on the image's boot partition).  The ttys follow the Debian kernel's
  naming, which numbers ports by their ``serialN`` alias (8250: ``ttyS<N>``, PL011: ``ttyAMA<N>``) and gives a
  UART with an enabled child (Bluetooth) to serdev, without a tty; the QEMU raspi3b boot of the image shows exactly
  ``ttyS1 -> soc/serial@7e215040`` and no PL011 tty for the Pi 3 B.
* ``raspios-*``: Raspberry Pi OS's trees are not reachable from here (their archive is not), so these are
  transcribed from raspberrypi/linux's sources (``bcm2710-rpi-3-b.dts``, ``disable-bt-overlay.dts`` which empties
  ``uart0_pins`` and swaps the aliases, ``bcm2712-rpi-5-b.dts`` with ``rp1_uart0_14_15``) with the tty names
  Raspberry Pi documents (PL011 ``ttyAMA0``, mini UART ``ttyS0``, Pi 5 header UART ``ttyAMA0`` and debug UART
  ``ttyAMA10``).
* ``qemu-virt``: QEMU's arm64 ``virt`` machine, which is not a Raspberry Pi.

Usage: ``python3 tests/data/uart/make_fixtures.py DTB_DIR`` (needs ``fdtget`` from device-tree-compiler).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEBIAN = {
    "debian-pi3b": "bcm2837-rpi-3-b.dtb",
    "debian-pi3bplus": "bcm2837-rpi-3-b-plus.dtb",
    "debian-pi02w": "bcm2837-rpi-zero-2-w.dtb",
    "debian-pi4b": "bcm2711-rpi-4-b.dtb",
}
NODE_PROPS = ("compatible", "status", "pinctrl-0", "pinctrl-names", "phandle")
GROUP_PROPS = ("brcm,pins", "brcm,function", "pins", "function", "phandle")


def _fdtget(dtb: Path, *args: str) -> str | None:
    result = subprocess.run(["fdtget", str(dtb), *args], capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else None


def raw(dtb: Path, node: str, prop: str) -> bytes | None:
    out = _fdtget(dtb, "-t", "bx", node, prop)
    if out is None:
        return None
    return bytes(int(b, 16) for b in out.split())


def subnodes(dtb: Path, node: str) -> list[str]:
    out = _fdtget(dtb, "-l", node) or ""
    return [f"{node.rstrip('/')}/{name}" for name in out.split()]


def write(base: Path, node: str, props: dict[str, bytes]) -> None:
    directory = base / "proc" / "device-tree" / node.strip("/")
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in props.items():
        (directory / name).write_bytes(value)


def tty(base: Path, name: str, node: str) -> None:
    device = base / "sys" / "class" / "tty" / name / "device"
    device.mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../../../firmware/devicetree/base/{node.strip('/')}", device / "of_node")


def cstr(*values: str) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


def cells(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def from_dtb(name: str, dtb: Path) -> None:
    base = HERE / name
    shutil.rmtree(base, ignore_errors=True)
    props = {p: v for p in ("model", "compatible") if (v := raw(dtb, "/", p)) is not None}
    write(base, "/", props)
    aliases = {}
    for alias in (_fdtget(dtb, "-p", "/aliases") or "").split():
        aliases[alias] = raw(dtb, "/aliases", alias) or b""
    write(base, "/aliases", aliases)
    phandles: dict[int, str] = {}

    def walk(node: str) -> None:
        handle = raw(dtb, node, "phandle")
        if handle is not None:
            phandles[int.from_bytes(handle[:4], "big")] = node
        for child in subnodes(dtb, node):
            walk(child)

    walk("/")
    for alias, target in sorted(aliases.items()):
        if not (alias.startswith("serial") and alias[6:].isdigit()):
            continue
        node = target.rstrip(b"\0").decode()
        write(base, node, {p: v for p in NODE_PROPS if (v := raw(dtb, node, p)) is not None})
        enabled_child = False
        for child in subnodes(dtb, node):
            child_props = {p: v for p in ("compatible", "status") if (v := raw(dtb, child, p)) is not None}
            write(base, child, child_props)
            enabled_child |= child_props.get("status", b"okay\0") in (b"okay\0", b"ok\0")
        pinctrl = raw(dtb, node, "pinctrl-0") or b""
        for i in range(0, len(pinctrl), 4):
            group = phandles[int.from_bytes(pinctrl[i : i + 4], "big")]
            for g in (group, *subnodes(dtb, group)):
                write(base, g, {p: v for p in GROUP_PROPS if (v := raw(dtb, g, p)) is not None})
        status = raw(dtb, node, "status") or b"okay\0"
        if status in (b"okay\0", b"ok\0") and not enabled_child:  # serdev takes a UART with an enabled child
            compatible = raw(dtb, node, "compatible") or b""
            prefix = "ttyAMA" if b"arm,pl011" in compatible else "ttyS"
            tty(base, f"{prefix}{alias[6:]}", node)


def raspios() -> None:
    """Transcribed trees (see the module docstring): node -> properties, then ttys."""
    gpio = "/soc/gpio@7e200000"
    pl011, mini = "/soc/serial@7e201000", "/soc/serial@7e215040"
    pi3 = cstr("raspberrypi,3-model-b", "brcm,bcm2837")
    common = {
        f"{gpio}/uart0_pins": {"brcm,pins": cells(32, 33), "brcm,function": cells(7), "phandle": cells(0x10)},
        f"{gpio}/bt_pins": {"brcm,pins": cells(43), "brcm,function": cells(4), "phandle": cells(0x11)},
        f"{gpio}/uart1_pins": {"brcm,pins": b"", "brcm,function": b"", "phandle": cells(0x12)},
    }
    trees: dict[str, tuple[dict[str, dict[str, bytes]], dict[str, str]]] = {
        # Pi OS as installed: the mini UART is primary (serial0) on GPIO14/15, the PL011 serves Bluetooth.
        "raspios-pi3b": (
            {
                "/": {"model": cstr("Raspberry Pi 3 Model B Rev 1.2"), "compatible": pi3},
                "/aliases": {"serial0": cstr(mini), "serial1": cstr(pl011)},
                pl011: {"compatible": cstr("arm,pl011", "arm,primecell"), "status": cstr("okay"),
                        "pinctrl-0": cells(0x10, 0x11)},
                f"{pl011}/bluetooth": {"compatible": cstr("brcm,bcm43438-bt"), "status": cstr("okay")},
                mini: {"compatible": cstr("brcm,bcm2835-aux-uart"), "status": cstr("okay"), "pinctrl-0": cells(0x12)},
                **common,
            },
            {"ttyS0": mini},
        ),
        # dtoverlay=disable-bt: the PL011 on GPIO14/15 (uart0_pins emptied: the firmware sets the pins), the
        # mini UART and Bluetooth off, the aliases swapped.
        "raspios-pi3b-disable-bt": (
            {
                "/": {"model": cstr("Raspberry Pi 3 Model B Rev 1.2"), "compatible": pi3},
                "/aliases": {"serial0": cstr(pl011), "serial1": cstr(mini)},
                pl011: {"compatible": cstr("arm,pl011", "arm,primecell"), "status": cstr("okay"),
                        "pinctrl-0": cells(0x10)},
                f"{pl011}/bluetooth": {"compatible": cstr("brcm,bcm43438-bt"), "status": cstr("disabled")},
                mini: {"compatible": cstr("brcm,bcm2835-aux-uart"), "status": cstr("disabled"),
                       "pinctrl-0": cells(0x12)},
                **common,
                f"{gpio}/uart0_pins": {"brcm,pins": b"", "brcm,function": b"", "phandle": cells(0x10)},
            },
            {"ttyAMA0": pl011},
        ),
    }  # fmt: skip
    rp1 = "/axi/pcie@120000/rp1"
    uart0, debug = f"{rp1}/serial@30000", "/soc@107c000000/serial@7d001000"
    pins = f"{rp1}/gpio@d0000/rp1_uart0_14_15"
    for name, status, ttys in (
        ("raspios-pi5-uart0", "okay", {"ttyAMA0": uart0, "ttyAMA10": debug}),
        ("raspios-pi5", "disabled", {"ttyAMA10": debug}),
    ):
        trees[name] = (
            {
                "/": {"model": cstr("Raspberry Pi 5 Model B Rev 1.0"),
                      "compatible": cstr("raspberrypi,5-model-b", "brcm,bcm2712")},
                "/aliases": {"serial0": cstr(uart0), "serial10": cstr(debug)},
                uart0: {"compatible": cstr("arm,pl011-axi"), "status": cstr(status), "pinctrl-0": cells(0x40)},
                debug: {"compatible": cstr("arm,pl011", "arm,primecell"), "status": cstr("okay")},
                pins: {"phandle": cells(0x40)},
                f"{pins}/pin_txd": {"function": cstr("uart0"), "pins": cstr("gpio14")},
                f"{pins}/pin_rxd": {"function": cstr("uart0"), "pins": cstr("gpio15")},
            },
            ttys,
        )  # fmt: skip
    trees["qemu-virt"] = (
        {"/": {"model": cstr("linux,dummy-virt"), "compatible": cstr("linux,dummy-virt")},
         "/aliases": {}, "/pl011@9000000": {"compatible": cstr("arm,pl011", "arm,primecell")}},
        {"ttyAMA0": "/pl011@9000000"},
    )  # fmt: skip
    for name, (nodes, ttys) in trees.items():
        base = HERE / name
        shutil.rmtree(base, ignore_errors=True)
        for node, props in nodes.items():
            write(base, node, props)
        for tty_name, node in ttys.items():
            tty(base, tty_name, node)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    dtbs = Path(sys.argv[1])
    for name, file in DEBIAN.items():
        from_dtb(name, dtbs / file)
    raspios()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
