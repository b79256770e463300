"""The header-UART resolver (appliance.sources.serial.uart) against device trees of every supported model.

The trees in tests/data/uart/ are what a running system shows in /proc/device-tree and /sys/class/tty: extracted
from the device-tree blobs of Debian's linux-image-arm64 for Debian's kernel, transcribed from Raspberry Pi's
sources for Raspberry Pi OS (tests/data/uart/make_fixtures.py says how).  The QEMU raspi3b boot
(tests/test_image.py) checks the same resolver on the running image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.sources.serial.uart import framing_for, resolve_header_uart

DATA = Path(__file__).resolve().parent / "data" / "uart"


@pytest.mark.parametrize(
    ("tree", "model"),
    [
        ("debian-pi3b", "Raspberry Pi 3 Model B"),
        ("debian-pi3bplus", "Raspberry Pi 3 Model B+"),
        ("debian-pi02w", "Raspberry Pi Zero 2 W"),
        ("debian-pi4b", "Raspberry Pi 4 Model B"),
    ],
)
def test_debian_kernel_reads_the_mini_uart_as_ttyS1_in_8n1(tree: str, model: str) -> None:
    """Upstream trees: serial0 is the PL011, Bluetooth's (no tty); the header's pins belong to the mini UART."""
    uart = resolve_header_uart(DATA / tree)
    assert uart.model == model
    assert uart.device == "/dev/ttyS1", uart.problem
    assert (uart.node, uart.kind, uart.framing) == ("/soc/serial@7e215040", "mini UART", "8N1")
    assert "uart1_gpio14" in uart.why and "GPIO14/15" in uart.why
    line = uart.describe()
    assert line.startswith("/dev/ttyS1: the mini UART /soc/serial@7e215040") and "bit 7 masked" in line


def test_raspios_without_overlay_reads_its_primary_mini_uart() -> None:
    uart = resolve_header_uart(DATA / "raspios-pi3b")
    assert (uart.device, uart.kind, uart.framing) == ("/dev/ttyS0", "mini UART", "8N1")
    assert "alias serial0" in uart.why


def test_raspios_with_disable_bt_reads_the_pl011_in_7e1() -> None:
    uart = resolve_header_uart(DATA / "raspios-pi3b-disable-bt")
    assert (uart.device, uart.node, uart.kind, uart.framing) == ("/dev/ttyAMA0", "/soc/serial@7e201000", "PL011", "7E1")


def test_raspios_pi5_reads_rp1_uart0_never_the_debug_uart() -> None:
    uart = resolve_header_uart(DATA / "raspios-pi5-uart0")
    assert (uart.device, uart.framing) == ("/dev/ttyAMA0", "7E1")
    assert "rp1_uart0_14_15" in uart.why


def test_pi5_with_the_header_uart_off_says_how_to_switch_it_on() -> None:
    uart = resolve_header_uart(DATA / "raspios-pi5")
    assert uart.device is None
    assert uart.problem is not None and "dtparam=uart0=on" in uart.problem


def test_a_uart_given_to_bluetooth_is_explained(tmp_path: Path) -> None:
    """Debian's Pi 3 tree where the PL011 would have the header's pins: no tty, because serdev has it."""
    import shutil

    tree = tmp_path / "t"
    shutil.copytree(DATA / "debian-pi3b", tree, symlinks=True)
    dt = tree / "proc" / "device-tree" / "soc"
    (dt / "serial@7e215040" / "status").write_bytes(b"disabled\0")
    (dt / "serial@7e201000" / "pinctrl-0").write_bytes((dt / "serial@7e215040" / "pinctrl-0").read_bytes())
    uart = resolve_header_uart(tree)
    assert uart.device is None and uart.node == "/soc/serial@7e201000"
    assert uart.problem is not None and "bluetooth child (serdev)" in uart.problem and "disable-bt" in uart.problem


@pytest.mark.parametrize(("tree", "words"), [("qemu-virt", "linux,dummy-virt"), ("absent", "no device tree")])
def test_no_raspberry_pi_means_no_guess(tree: str, words: str) -> None:
    uart = resolve_header_uart(DATA / tree)
    assert uart.device is None
    assert uart.problem is not None and words in uart.problem and "set source.device" in uart.problem


@pytest.mark.parametrize(
    ("tree", "device", "configured", "framing"),
    [
        ("debian-pi3b", "/dev/ttyS1", "auto", "8N1"),  # the mini UART, however it was named
        ("raspios-pi3b-disable-bt", "/dev/ttyAMA0", "auto", "7E1"),
        ("debian-pi3b", "/dev/ttyUSB0", "auto", "7E1"),  # a USB dongle: unchanged
        ("debian-pi3b", "/dev/ttyS1", "7E1", "7E1"),  # what the configuration says, when it says it
    ],
)
def test_framing_of_a_configured_device(tree: str, device: str, configured: str, framing: str) -> None:
    got, why = framing_for(device, configured, DATA / tree)
    assert got == framing and why
