"""Which tty is "the UART on GPIO14/15" of this Raspberry Pi, and how to read the TIC on it.

The adapter is wired to the header's pin 10 (GPIO15, RXD); which of the SoC's UARTs drives that pin, and which tty
the kernel made of it, depends on the model, the device tree and the kernel, so nothing here is hard-coded: it is
read from the running system, the way the kernel itself knows it.

* **The UART on GPIO14/15.**  A UART whose ``pinctrl-0`` groups claim pins 14 and 15 is on the header; that is how
  upstream device trees (Debian's ``linux-image-arm64``) say it: on the Pi 3 B, 3 B+, Zero 2 W and 4 B the mini UART
  (``serial@7e215040``) has ``uart1_gpio14`` while the PL011 talks to Bluetooth on GPIO32/33, and Pi OS's Pi 5
  tree gives RP1's UART0 ``rp1_uart0_14_15`` (pins ``gpio14``/``gpio15``).  Raspberry Pi OS's trees for the older
  models leave those pin groups empty (the firmware sets the pins), and instead keep the ``serial0`` alias on the
  primary UART, which its firmware puts on GPIO14/15 (``dtoverlay=disable-bt`` moves the alias with the pins):
  without pin evidence, ``serial0`` is taken, on models whose primary UART is the header's (not the Pi 5).
* **Its tty.**  The kernel's own name, from ``/sys/class/tty/*/device/of_node``: Debian's kernel calls the mini
  UART ``ttyS1`` (it numbers ports by the ``serialN`` alias), Pi OS's ``ttyS0``; never guessed.  A UART with no tty
  is explained: switched off (``status = "disabled"``), or bound to the Bluetooth chip through serdev (a
  ``bluetooth`` child node).
* **Its framing.**  The TIC is 7E1.  The PL011 does parity; the mini UART (``brcm,bcm2835-aux-uart``) has none, so
  it reads 8N1 and the decoder masks bit 7 (the character is ten bits either way).  The mini UART's baud clock is
  the VPU core clock, which must not change under it: ``enable_uart=1`` fixes it on the Pi 3 and Zero 2 W, and
  ``core_freq`` on the Pi 4 (``firmware/``, checked by ``teleinfo doctor``).

Pure: every function reads only below ``root`` (the running system is ``/``), so the tests feed it trees copied
from real device-tree blobs (``tests/data/uart/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = ["AUTO", "HeaderUart", "framing_for", "resolve_header_uart"]

AUTO: Final = "auto"
"""``source.device`` value meaning "the UART on GPIO14/15 of this Raspberry Pi"."""

HEADER_PINS: Final = (14, 15)
MINI_UART: Final = "brcm,bcm2835-aux-uart"
# Models whose primary UART (the serial0 alias of Raspberry Pi's own device trees) is the one on GPIO14/15.
_PI5_PREFIXES: Final = ("Raspberry Pi 5", "Raspberry Pi Compute Module 5", "Raspberry Pi 500")

Framing = Literal["7E1", "8N1"]


@dataclass(frozen=True)
class HeaderUart:
    """What :func:`resolve_header_uart` found: a device to open, or the reason there is none."""

    device: str | None  # "/dev/ttyS1"; None when there is nothing to open (see problem)
    framing: Framing
    model: str | None  # the device tree's model, None off a device-tree machine
    node: str | None = None  # "/soc/serial@7e215040"
    kind: str = ""  # "mini UART", "PL011"...
    why: str = ""  # how the UART was recognised as the header's
    problem: str | None = None  # set when device is None: what is wrong and what to do

    def describe(self) -> str:
        """One line for the log and ``teleinfo doctor``."""
        if self.device is None:
            return str(self.problem)
        return f"{self.device}: the {self.kind} {self.node} ({self.why}); {framing_reason(self.kind, self.framing)}"


def framing_reason(kind: str, framing: str) -> str:
    if kind == "mini UART":
        return "8N1 with bit 7 masked: the mini UART has no parity (its clock must be fixed: enable_uart=1/core_freq)"
    return f"{framing}, the TIC's own format" if framing == "7E1" else f"{framing} with bit 7 masked"


# --- reading the device tree -----------------------------------------------------------------------------
class _Tree:
    """The live device tree under ``root`` (``/proc/device-tree``, else ``/sys/firmware/devicetree/base``)."""

    def __init__(self, root: Path) -> None:
        base = root / "proc" / "device-tree"
        if not base.is_dir():
            base = root / "sys" / "firmware" / "devicetree" / "base"
        self.base = base
        self._phandles: dict[int, str] | None = None

    @property
    def exists(self) -> bool:
        return self.base.is_dir()

    def _path(self, node: str) -> Path:
        return self.base / node.strip("/")

    def prop(self, node: str, name: str) -> bytes | None:
        try:
            return (self._path(node) / name).read_bytes()
        except OSError:
            return None

    def string(self, node: str, name: str) -> str | None:
        raw = self.prop(node, name)
        return None if raw is None else raw.split(b"\0", 1)[0].decode("ascii", "replace")

    def strings(self, node: str, name: str) -> list[str]:
        raw = self.prop(node, name)
        return [] if raw is None else [s.decode("ascii", "replace") for s in raw.split(b"\0") if s]

    def cells(self, node: str, name: str) -> list[int]:
        raw = self.prop(node, name) or b""
        return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw) - len(raw) % 4, 4)]

    def children(self, node: str) -> list[str]:
        try:
            entries = sorted(os.scandir(self._path(node)), key=lambda e: e.name)
        except OSError:
            return []
        return [f"{node.rstrip('/')}/{e.name}" for e in entries if e.is_dir(follow_symlinks=False)]

    def enabled(self, node: str) -> bool:
        return self.string(node, "status") in (None, "okay", "ok")

    def by_phandle(self, phandle: int) -> str | None:
        if self._phandles is None:
            found: dict[int, str] = {}
            for directory, _dirs, files in os.walk(self.base):
                if "phandle" in files:
                    raw = (Path(directory) / "phandle").read_bytes()
                    node = "/" + os.path.relpath(directory, self.base).replace(os.sep, "/").lstrip(".")
                    found[int.from_bytes(raw[:4], "big")] = node.rstrip("/") or "/"
            self._phandles = found
        return self._phandles.get(phandle)


def _pins(tree: _Tree, group: str) -> set[int]:
    """GPIO numbers a pin group claims: ``brcm,pins`` cells (BCM283x) or ``pins = "gpio14"`` (RP1), in the group
    node itself or in its sub-nodes (``pin_txd``, ``pin_rxd``)."""
    found: set[int] = set()
    for node in (group, *tree.children(group)):
        found.update(tree.cells(node, "brcm,pins"))
        for name in tree.strings(node, "pins"):
            if name.startswith("gpio") and name[4:].isdigit():
                found.add(int(name[4:]))
    return found


def _claims_header(tree: _Tree, node: str) -> str | None:
    """The pin group through which ``node`` claims GPIO14/15, or None."""
    for phandle in tree.cells(node, "pinctrl-0"):
        group = tree.by_phandle(phandle)
        if group is not None and set(HEADER_PINS) <= _pins(tree, group):
            return group.rsplit("/", 1)[-1]
    return None


def _serial_aliases(tree: _Tree) -> dict[str, str]:
    """``serialN`` alias -> node path, in alias order."""
    aliases: dict[str, str] = {}
    for entry in _alias_names(tree):
        target = tree.string("/aliases", entry)
        if entry.startswith("serial") and entry[6:].isdigit() and target and target.startswith("/"):
            aliases[entry] = target
    return dict(sorted(aliases.items(), key=lambda kv: int(kv[0][6:])))


def _alias_names(tree: _Tree) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(tree.base / "aliases") if e.is_file())
    except OSError:
        return []


def _ttys(root: Path) -> dict[str, str]:
    """Device-tree node path -> tty name, for every tty the kernel made from a device-tree node."""
    found: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(root / "sys" / "class" / "tty"), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        try:
            target = os.readlink(Path(entry.path) / "device" / "of_node")
        except OSError:
            continue
        marker = "devicetree/base"
        if marker in target:
            found["/" + target.split(marker, 1)[1].strip("/")] = entry.name
    return found


def _kind(compatible: list[str]) -> str:
    if MINI_UART in compatible:
        return "mini UART"
    if any(c.startswith("arm,pl011") for c in compatible):
        return "PL011"
    return compatible[0] if compatible else "UART"


def _framing(kind: str) -> Framing:
    return "8N1" if kind == "mini UART" else "7E1"


# --- the resolver ----------------------------------------------------------------------------------------
def resolve_header_uart(root: Path = Path("/")) -> HeaderUart:
    """The tty of the UART on GPIO14/15 of the Raspberry Pi whose live system is ``root``, or why there is none."""
    tree = _Tree(root)
    if not tree.exists:
        return HeaderUart(
            None, "7E1", None, problem="no device tree here: not a Raspberry Pi; set source.device (e.g. /dev/ttyUSB0)"
        )
    model = tree.string("/", "model")
    if not model or not model.startswith("Raspberry Pi"):
        return HeaderUart(
            None,
            "7E1",
            model,
            problem=f"not a Raspberry Pi ({model or 'no model in the device tree'}): no GPIO14/15 header to "
            "read; set source.device (e.g. /dev/ttyUSB0)",
        )
    aliases = _serial_aliases(tree)
    chosen: tuple[str, str] | None = None
    for node in dict.fromkeys(aliases.values()):
        group = _claims_header(tree, node)
        if group is not None and tree.enabled(node):
            chosen = (node, f"its pinctrl-0 group {group} claims GPIO14/15")
            break
        if group is not None and chosen is None:
            chosen = (node, f"its pinctrl-0 group {group} claims GPIO14/15")
    if chosen is None and "serial0" in aliases and not model.startswith(_PI5_PREFIXES):
        chosen = (aliases["serial0"], "alias serial0: Raspberry Pi's firmware keeps it on the UART of GPIO14/15")
    if chosen is None:
        return HeaderUart(
            None,
            "7E1",
            model,
            problem="no UART of this device tree is on GPIO14/15"
            + (" (Pi 5: dtparam=uart0=on in config.txt, firmware/apply.py)" if model.startswith(_PI5_PREFIXES) else "")
            + "; set source.device",
        )
    node, why = chosen
    kind = _kind(tree.strings(node, "compatible"))
    framing = _framing(kind)
    base = HeaderUart(None, framing, model, node, kind, why)
    if not tree.enabled(node):
        fix = "dtparam=uart0=on" if model.startswith(_PI5_PREFIXES) else "enable_uart=1"
        return _with_problem(
            base,
            f"the {kind} {node} on GPIO14/15 is off ({fix} in config.txt: firmware/apply.py, then reboot)",
        )
    tty = _ttys(root).get(node)
    if tty is None:
        bound = [c for c in tree.children(node) if tree.enabled(c)]
        if bound:
            what = bound[0].rsplit("/", 1)[-1]
            return _with_problem(
                base,
                f"the {kind} {node} on GPIO14/15 has no tty: the kernel gave it to its {what} child (serdev); "
                "a device tree without it is needed (Raspberry Pi OS: dtoverlay=disable-bt)",
            )
        return _with_problem(base, f"the {kind} {node} on GPIO14/15 has no tty yet (its driver is not loaded?)")
    return HeaderUart(f"/dev/{tty}", framing, model, node, kind, why)


def _with_problem(base: HeaderUart, problem: str) -> HeaderUart:
    return HeaderUart(None, base.framing, base.model, base.node, base.kind, base.why, problem)


def framing_for(device: str, configured: str, root: Path = Path("/")) -> tuple[Framing, str]:
    """The framing to open ``device`` with, and why: ``configured`` unless it is ``auto``, where a UART without
    parity (the Pi's mini UART, recognised by its device-tree node) reads 8N1 and everything else 7E1."""
    if configured in ("7E1", "8N1"):
        return configured, "source.framing"  # type: ignore[return-value]
    name = Path(os.path.realpath(device) if root == Path("/") else device).name
    node = {tty: n for n, tty in _ttys(root).items()}.get(name)
    if node is not None:
        kind = _kind(_Tree(root).strings(node, "compatible"))
        return _framing(kind), f"{name} is the {kind} {node}"
    return "7E1", f"{name} is not a UART without parity"
