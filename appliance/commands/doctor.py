"""``teleinfo doctor``: check everything the appliance needs on this machine, and say how to fix what is wrong.

Each check prints one line (``ok``, ``warn``, ``FAIL`` or ``skip``) and, for a problem, the fix.  The exit status
is 0 when nothing failed (warnings included), 1 otherwise, 2 for a usage error.

=================  ===========================================================================================
check              what it looks at
=================  ===========================================================================================
configuration      the file loads (same validation as ``teleinfo run``)
uart               which UART the meter is read on, in which framing, and why: ``source.device = "auto"`` is the
                   UART on GPIO14/15, found from the device tree (:mod:`appliance.sources.serial.uart`)
serial device      the configured device exists and is a character device
device access      the service user (``teleinfo`` by default) may open it: owner, group and mode bits
port users         other processes holding the port open: a getty (serial console) answers the meter, a
                   running ``teleinfo run`` competes with the sampling
console            ``/proc/cmdline`` has no ``console=`` on the TIC's UART
boot config        on a Pi, the boot configuration gives GPIO14/15 its UART where it survives updates
                   (``firmware/apply.py`` applied): ``config.txt`` on Raspberry Pi OS; on Debian, whose
                   ``raspi-firmware`` regenerates ``config.txt`` and ``cmdline.txt``, the files in
                   ``/etc/default``; the mini UART's clock fixed; no serial console coming back
meter              samples the port for a few seconds at 9600 Bd (standard) then 1200 Bd (historique) and
                   reports which verifies, against ``source.mode``
outputs            each *enabled* output only: a route to the multicast group (a connect(), no packet sent),
                   a TCP connection to the MQTT broker, an HTTP answer from InfluxDB's ``/ping``
clock              the kernel says the clock is synchronised (adjtimex, as timedatectl does): frames are stamped
                   with it, energy costs wait for it (appliance.clock)
spool disk         free space for the spools of the durable outputs under ``state.directory``
reboot             a reboot is pending (a kernel or firmware update installed, ``/run/reboot-required``), and
                   an update left unfinished (``appliance.update.reboot``)
=================  ===========================================================================================

Nothing here sends a packet anywhere but to the servers the configuration names; the multicast check only asks
the kernel for a route.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from appliance.commands import config_parent
from appliance.sources.serial.uart import AUTO, HeaderUart, framing_for, framing_reason, resolve_header_uart

CHECKS = (
    "config",
    "uart",
    "device",
    "access",
    "holders",
    "console",
    "boot",
    "meter",
    "outputs",
    "clock",
    "disk",
    "reboot",
)
PROBE_BYTES = 4096  # of an HTTP probe's body: only its status matters


@dataclass
class Result:
    """One diagnostic: what was checked, how it went, and how to fix it."""

    check: str
    status: str  # ok | warn | FAIL | skip
    detail: str
    fix: str = ""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        parents=[config_parent()],
        help="check the serial port, UART, meter, outputs, clock, disk and pending reboots, with the fix for each",
        description="Check everything the appliance needs on this machine and explain how to fix each problem: "
        "the serial device and its permissions, the UART and console configuration, which mode and baud rate "
        "the meter answers on (by sampling the port for a few seconds), the configured outputs' servers, the "
        "clock and the disk space for the spool. Exit status 0 when nothing failed.",
    )
    p.add_argument(
        "--user", default="teleinfo", help="the service's user, whose access is checked (default: %(default)s)"
    )
    p.add_argument("--boot", metavar="DIR", default="/boot/firmware", help="boot partition (default: %(default)s)")
    p.add_argument(
        "--sample",
        type=float,
        metavar="SECONDS",
        help="seconds to listen at each baud rate (default: 3 at 9600, 6 at 1200)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=CHECKS,
        metavar="CHECK",
        help=f"skip a check: {', '.join(CHECKS)}",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, config_path, load_config
    from appliance.schema import Config

    if args.sample is not None and not 0.2 <= args.sample <= 60:
        print("teleinfo doctor: --sample must be between 0.2 and 60 seconds", file=sys.stderr)
        return 2
    path, required = config_path(args.config)
    results: list[Result] = []
    try:
        cfg = load_config(path, required=required)
        results.append(Result("configuration", "ok", f"{path} valid" if path.exists() else f"{path} absent: defaults"))
    except ConfigError as e:
        cfg = Config()
        results.append(
            Result(
                "configuration",
                "FAIL",
                "; ".join(e.errors),
                f"teleinfo check-config --config {path}; the checks below use the defaults",
            )
        )
    print(f"teleinfo doctor: {path}")
    _print(results[0])
    for result in _checks(cfg, args):  # printed as they come: the meter sampling takes seconds
        _print(result)
        results.append(result)
    failed = sum(r.status == "FAIL" for r in results)
    warned = sum(r.status == "warn" for r in results)
    print(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "all well")
    return 1 if failed else 0


def _print(r: Result) -> None:
    print(f"  {r.status:<5} {r.check:<14} {r.detail}")
    if r.fix and r.status in ("FAIL", "warn"):
        print(f"        fix: {r.fix}")
    sys.stdout.flush()


def _checks(cfg: Any, args: argparse.Namespace) -> Iterator[Result]:
    skip = set(args.skip)
    serial = cfg.source.kind == "serial"
    uart = resolve_header_uart() if serial and cfg.source.device == AUTO else None
    if uart is not None:
        device = Path(uart.device or AUTO)
        framing = uart.framing if cfg.source.framing == "auto" else cfg.source.framing
    else:
        device = Path(cfg.source.device)
        framing = framing_for(cfg.source.device, cfg.source.framing)[0]
    source = replace(cfg.source, device=str(device), framing=framing)  # what the service opens, resolved
    found = uart is None or uart.device is not None
    present = serial and found and device.exists()
    no_uart = "no header UART (see uart above)"
    steps: list[tuple[str, Callable[[], Iterator[Result]]]] = [
        ("uart", lambda: check_uart(cfg.source, uart) if serial else _skipped("uart", "source.kind = simulator")),
        (
            "device",
            lambda: (
                (check_device(device) if found else _skipped("serial device", no_uart))
                if serial
                else _skipped("serial device", "source.kind = simulator")
            ),
        ),
        ("access", lambda: check_access(device, args.user) if present else _skipped("device access", "no device")),
        ("holders", lambda: check_holders(device) if present else _skipped("port users", "no device")),
        ("console", lambda: check_console(device, Path("/proc/cmdline")) if serial and found else iter(())),
        ("boot", lambda: check_boot(device, Path(args.boot), uart=uart) if serial and found else iter(())),
        ("meter", lambda: check_meter(source, args.sample) if present else _skipped("meter", "no device")),
        ("outputs", lambda: check_outputs(cfg)),
        ("clock", lambda: check_clock()),
        ("disk", lambda: check_disk(cfg)),
        ("reboot", lambda: check_reboot()),
    ]
    for name, step in steps:
        if name in skip:
            yield Result(name, "skip", "--skip")
            continue
        yield from step()


def check_uart(source: Any, uart: HeaderUart | None) -> Iterator[Result]:
    """Which UART, which framing, and why (``teleinfo doctor``'s answer to "where is my meter read?")."""
    if uart is None:
        framing, why = framing_for(source.device, source.framing)
        yield Result("uart", "ok", f"{source.device} as configured (source.device); {framing}: {why}")
        if framing == "7E1" and source.framing == "7E1" and framing_for(source.device, "auto")[0] == "8N1":
            yield Result(
                "uart",
                "warn",
                f"{source.device} has no parity: 7E1 cannot be set on it",
                'source.framing = "auto" (8N1 with bit 7 masked)',
            )
        return
    if uart.device is None:
        yield Result("uart", "FAIL", str(uart.problem), "firmware/apply.py, or a USB adapter and source.device")
        return
    detail = f"header UART {uart.device}: the {uart.kind} {uart.node} of the {uart.model}, because {uart.why}"
    framing = uart.framing if source.framing == "auto" else source.framing
    yield Result("uart", "ok", f"{detail}; {framing_reason(uart.kind, framing)}")


def _skipped(check: str, why: str) -> Iterator[Result]:
    yield Result(check, "skip", why)


# --- serial port -------------------------------------------------------------------------------------------
def check_device(device: Path) -> Iterator[Result]:
    if not device.exists():
        gpio_uart = device.name.startswith(("ttyAMA", "serial"))
        yield Result(
            "serial device",
            "FAIL",
            f"{device} does not exist",
            "apply firmware/ to the boot partition (python3 firmware/apply.py --boot /boot/firmware) and reboot"
            if gpio_uart
            else "plug the USB TIC adapter in, and set source.device (ls -l /dev/serial/by-id/ lists adapters)",
        )
        return
    mode = device.stat().st_mode
    if not stat.S_ISCHR(mode):
        yield Result("serial device", "FAIL", f"{device} is not a character device", "set source.device to a tty")
        return
    yield Result("serial device", "ok", f"{device}" + (f" -> {device.resolve()}" if device.is_symlink() else ""))


def may_open(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    """Whether a process of ``uid`` with groups ``gids`` may open a file of ``st`` for reading and writing."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return st.st_mode & 0o600 == 0o600
    if st.st_gid in gids:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


def check_access(device: Path, user: str) -> Iterator[Result]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        yield Result(
            "device access",
            "warn",
            f"user {user!r} does not exist, so it cannot be checked",
            "install -m 644 systemd/teleinfo.sysusers /usr/lib/sysusers.d/teleinfo.conf && systemd-sysusers "
            "(or --user NAME for another service user)",
        )
        return
    st = device.stat()
    gids = set(os.getgrouplist(user, pw.pw_gid))
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    if may_open(st, pw.pw_uid, gids):
        yield Result(
            "device access", "ok", f"{user} may open {device} (mode {stat.filemode(st.st_mode)}, group {group})"
        )
    else:
        yield Result(
            "device access",
            "FAIL",
            f"{user} may not open {device} (mode {stat.filemode(st.st_mode)}, group {group})",
            f"usermod -aG {group} {user}, then restart the service"
            if st.st_mode & 0o060 == 0o060
            else f"a udev rule giving {device.name} to group dialout with mode 0660",
        )


def port_holders(device: Path, proc: Path = Path("/proc")) -> list[tuple[int, str, str]]:
    """(pid, comm, command line) of every other process with ``device`` open (what we are allowed to see)."""
    target = os.path.realpath(device)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    comm = (entry / "comm").read_text().strip()
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    found.append((int(entry.name), comm, cmdline))
                    break
            except OSError:
                continue
    return found


def check_holders(device: Path) -> Iterator[Result]:
    holders = port_holders(device)
    if not holders:
        yield Result("port users", "ok", f"no other process has {device} open")
        return
    for pid, comm, cmdline in holders:
        if "getty" in comm:
            yield Result(
                "port users",
                "FAIL",
                f"a login prompt ({comm}, pid {pid}) runs on {device}: it answers the meter and eats its bytes",
                f"systemctl mask --now serial-getty@{Path(os.path.realpath(device)).name}.service; remove the "
                "console= argument of cmdline.txt (firmware/apply.py)",
            )
        elif "teleinfo" in cmdline and " run" in cmdline:
            yield Result(
                "port users",
                "warn",
                f"the service (pid {pid}) is reading {device}: the meter sampling below competes with it",
                "systemctl stop teleinfo for an exact sampling, or --skip meter",
            )
        else:
            yield Result(
                "port users",
                "warn",
                f"{comm} (pid {pid}) has {device} open: {cmdline[:80]}",
                "stop it if it reads the port (ModemManager and gpsd grab USB serial adapters)",
            )


def _is_gpio_uart(device: Path) -> bool:
    name = Path(os.path.realpath(device)).name
    return name.startswith(("ttyAMA", "ttyS")) or device.name.startswith("serial")


def check_console(device: Path, cmdline_path: Path) -> Iterator[Result]:
    if not _is_gpio_uart(device):
        yield Result("console", "skip", f"{device} is not a built-in UART")
        return
    try:
        args = cmdline_path.read_text().split()
    except OSError as e:
        yield Result("console", "skip", f"cannot read {cmdline_path}: {e.strerror}")
        return
    real = Path(os.path.realpath(device)).name
    on_uart = [a for a in args if a.startswith("console=") and a[8:].split(",")[0] in ("serial0", real, device.name)]
    if on_uart:
        yield Result(
            "console",
            "FAIL",
            f"the kernel console is on the TIC's UART ({' '.join(on_uart)})",
            "python3 firmware/apply.py --boot /boot/firmware (or raspi-config nonint do_serial_cons 1), then reboot",
        )
    else:
        yield Result("console", "ok", f"no kernel console on {real}")


DEBIAN_MARK = "It is automatically generated upon install or update"  # Debian raspi-firmware's config.txt
BLOCK = "# --- teleinfo begin"  # firmware/apply.py's block


def _active(text: str, model: str | None) -> set[str]:
    """The config.txt settings that apply to ``model`` ([all] and its own [piN] sections; others unknown: all)."""
    filters = {"all"}
    if model:
        for prefix, names in (
            ("Raspberry Pi 3", {"pi3"}),
            ("Raspberry Pi Zero 2", {"pi0", "pi02"}),
            ("Raspberry Pi 4", {"pi4"}),
            ("Raspberry Pi 400", {"pi4", "pi400"}),
            ("Raspberry Pi Compute Module 4", {"pi4", "cm4"}),
            ("Raspberry Pi 5", {"pi5"}),
        ):
            if model.startswith(prefix):
                filters |= names
    section, found = "all", set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif line and (section in filters or model is None):
            found.add(line)
    return found


def _sh_value(text: str, name: str) -> str | None:
    value = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith(f"{name}="):
            value = line[len(name) + 1 :].strip("\"'")
    return value


def check_boot(device: Path, boot: Path, etc: Path = Path("/etc"), uart: HeaderUart | None = None) -> Iterator[Result]:
    """The UART settings, where this system's layout keeps them (see firmware/apply.py), and the mini UART's clock."""
    if not _is_gpio_uart(device):
        yield Result("boot config", "skip", f"{device} is not the GPIO header's UART")
        return
    config = boot / "config.txt"
    if not config.is_file():
        yield Result("boot config", "skip", f"no {config}: not a Raspberry Pi boot partition")
        return
    text = config.read_text(errors="replace")
    fix = f"python3 firmware/apply.py --boot {boot}, then reboot"
    model = uart.model if uart is not None else None
    if DEBIAN_MARK in text:
        yield from _check_debian_boot(text, config, etc, model)
    else:
        active = _active(text, None)
        if BLOCK in text or ({"dtoverlay=disable-bt", "dtparam=uart0=on"} & active):
            yield Result("boot config", "ok", f"{config} (Raspberry Pi OS layout) gives GPIO14/15 the PL011")
        elif uart is not None and uart.kind == "mini UART" and "enable_uart=1" in _active(text, model):
            yield Result("boot config", "ok", f"{config}: the mini UART on GPIO14/15, enable_uart=1")
        else:
            yield Result("boot config", "FAIL", f"{config} leaves GPIO14/15 on the mini UART (no parity) or off", fix)
    if uart is not None and uart.kind == "mini UART":
        yield from _check_core_clock(text, config, model)


def _check_debian_boot(text: str, config: Path, etc: Path, model: str | None) -> Iterator[Result]:
    custom = etc / "default" / "raspi-firmware-custom"
    default = etc / "default" / "raspi-firmware"
    fix = "python3 firmware/apply.py (writes /etc/default/raspi-firmware*, runs raspi-firmware's hook)"
    kept = custom.is_file() and BLOCK in custom.read_text(errors="replace")
    layout = f"{config} is regenerated by Debian's raspi-firmware at every kernel update"
    if not kept:
        where = "it has the teleinfo block now, but it will vanish" if BLOCK in text else "no teleinfo block"
        yield Result("boot config", "FAIL", f"{layout}; {custom} has no teleinfo block ({where})", fix)
    elif BLOCK not in text:
        yield Result(
            "boot config", "warn", f"{layout}; {custom} has the UART block, not yet applied", "update-initramfs -u"
        )
    else:
        yield Result("boot config", "ok", f"{layout} from {custom}, which has the UART block: it survives updates")
    settings = default.read_text(errors="replace") if default.is_file() else ""
    consoles = _sh_value(settings, "CONSOLES") or "auto"
    serial = [c for c in consoles.split() if c == "auto" or c.startswith(("ttyS", "ttyAMA", "serial"))]
    if serial:
        yield Result(
            "boot console",
            "FAIL",
            f"{default}: CONSOLES={consoles!r}: the next kernel update puts a serial console on the header UART",
            fix,
        )
    else:
        yield Result("boot console", "ok", f"{default}: CONSOLES={consoles!r}, no serial console")
    cmdline = config.with_name("cmdline.txt")
    args = cmdline.read_text(errors="replace").split() if cmdline.is_file() else []
    if model and model.startswith("Raspberry Pi 4") and any(a.startswith("cma=") for a in args):
        yield Result(
            "boot cma", "FAIL", f"{cmdline} has a cma= that Debian says may leave a Pi 4 unbootable", "CMA=0: " + fix
        )


def _check_core_clock(text: str, config: Path, model: str | None) -> Iterator[Result]:
    """The mini UART's baud clock is the VPU core clock: it must be fixed."""
    active = _active(text, model)
    if model and model.startswith(("Raspberry Pi 4", "Raspberry Pi 400", "Raspberry Pi Compute Module 4")):
        freqs = {line.split("=", 1)[1] for line in active if line.startswith(("core_freq=", "core_freq_min="))}
        if len(freqs) == 1 and any(line.startswith("core_freq_min=") for line in active):
            yield Result("uart clock", "ok", f"core clock fixed at {freqs.pop()} MHz ({config})")
        else:
            yield Result(
                "uart clock",
                "FAIL",
                "Pi 4: the core clock (the mini UART's) follows the load: the baud rate drifts",
                "core_freq=360 and core_freq_min=360 under [pi4] (firmware/apply.py)",
            )
    elif "enable_uart=1" in active:
        yield Result("uart clock", "ok", f"enable_uart=1 fixes the core clock (the mini UART's) ({config})")
    else:
        yield Result(
            "uart clock",
            "FAIL",
            "without enable_uart=1 the mini UART is off or its clock follows the core clock",
            "enable_uart=1 (firmware/apply.py)",
        )


# --- the meter ---------------------------------------------------------------------------------------------
def sample(device: str, baud: int, framing: str, mode: str, seconds: float) -> tuple[int, int, str | None]:
    """Listen ``seconds`` at ``baud`` (at most until two frames verify): (bytes read, frames verified, meter)."""
    import serial  # type: ignore[import-untyped, unused-ignore]

    from appliance.tic import Decoder

    seven = framing == "7E1"
    port = serial.Serial(
        device,
        baud,
        bytesize=serial.SEVENBITS if seven else serial.EIGHTBITS,
        parity=serial.PARITY_EVEN if seven else serial.PARITY_NONE,
        stopbits=serial.STOPBITS_ONE,
        timeout=0.2,
    )
    decoder = Decoder(mode)
    nbytes = verified = 0
    meter = None
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            data = port.read(4096)
            nbytes += len(data)
            for frame in decoder.feed(data):
                if frame.verified:
                    verified += 1
                    meter = frame.meter or meter
            if verified >= 2:
                break
    finally:
        port.close()
    return nbytes, verified, meter


def check_meter(source: Any, seconds: float | None) -> Iterator[Result]:
    import serial

    from appliance.sources.serial.source import DETECT_WINDOW
    from appliance.tic import BAUDRATES

    modes = ["standard", "historique"]
    if source.mode in modes:  # the configured mode first: usually it is right and the check is shorter
        modes.remove(source.mode)
        modes.insert(0, source.mode)
    total = 0
    for mode in modes:
        baud = BAUDRATES[mode]
        try:
            nbytes, verified, meter = sample(source.device, baud, source.framing, mode, seconds or DETECT_WINDOW[baud])
        except (serial.SerialException, OSError) as e:
            yield Result("meter", "FAIL", f"cannot open {source.device}: {e}", "see the device checks above")
            return
        total += nbytes
        if verified:
            detail = f"{mode} at {baud} Bd: {verified} frame(s) verified" + (f", meter {meter}" if meter else "")
            if source.mode not in ("auto", mode):
                yield Result(
                    "meter",
                    "FAIL",
                    f"{detail}, but source.mode is {source.mode}",
                    f'source.mode = "{mode}" (or "auto")',
                )
            else:
                yield Result("meter", "ok", detail)
            return
    if total == 0:
        yield Result(
            "meter",
            "FAIL",
            f"no byte at all from {source.device} at 9600 or 1200 Bd",
            "check the wiring to the meter's I1/I2 terminals and the adapter's power/LED; on the GPIO UART, the "
            "boot config and console checks above",
        )
    else:
        yield Result(
            "meter",
            "FAIL",
            f"{total} bytes but no frame verified at 9600 or 1200 Bd",
            'an adapter without parity needs source.framing = "8N1"; otherwise noise on the line (cable length, '
            "demodulator): teleinfo decode --format table on a capture shows the rejects",
        )


# --- outputs -----------------------------------------------------------------------------------------------
def check_outputs(cfg: Any) -> Iterator[Result]:
    """Each enabled output's own check (:data:`appliance.outputs.OUTPUTS`)."""
    from appliance.outputs import enabled_outputs

    enabled = enabled_outputs(cfg)
    for plugin, settings in enabled:
        yield from plugin.diagnose(settings)
    if not enabled:
        yield Result("outputs", "warn", "no output is enabled: frames go nowhere", "enable one in [outputs.*]")


def check_multicast(m: Any) -> Result:
    """Ask the kernel for a route to the group (connect() on UDP sends nothing)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if m.interface:
            try:
                addr = socket.inet_aton(m.interface)
            except OSError:
                addr = _interface_address(s, m.interface)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, addr)
        s.connect((m.group, m.port))
        local = s.getsockname()[0]
    except OSError as e:
        return Result(
            "multicast",
            "FAIL",
            f"no way to {m.group}:{m.port}"
            + (f" through {m.interface}" if m.interface else "")
            + f": {e.strerror or e}",
            "set outputs.multicast.interface to the LAN interface (name or address), or give the host a default route",
        )
    finally:
        s.close()
    return Result("multicast", "ok", f"{m.group}:{m.port} routed from {local}")


def _interface_address(s: socket.socket, name: str) -> bytes:
    import fcntl
    import struct

    siocgifaddr = 0x8915
    packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
    return packed[20:24]


def check_tcp(name: str, host: str, port: int, fix: str, timeout: float = 3.0) -> Result:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        return Result(name, "FAIL", f"cannot connect to {host}:{port}: {e.strerror or e}", fix)
    return Result(name, "ok", f"{host}:{port} accepts connections")


def check_http(name: str, url: str, timeout: float) -> Result:
    """Any HTTP answer means the server is reachable (authentication is checked by the output itself)."""
    from appliance import httpclient
    from appliance.redaction import redact

    try:
        answer = httpclient.get(url, timeout=timeout, max_bytes=PROBE_BYTES)
    except httpclient.HttpError as e:
        why = e.reason[:1].upper() + e.reason[1:]  # as the TCP checks word it (strerror): "Connection refused"
        return Result(name, "FAIL", f"{redact(url)}: {why}", "outputs.influxdb.url; is the server running?")
    return Result(name, "ok", f"{redact(url)} answered HTTP {answer.status}")


# --- clock and disk ----------------------------------------------------------------------------------------
def check_clock(state: int | None = None, now: float | None = None) -> Iterator[Result]:
    from appliance.clock import FLOOR, TIME_ERROR, kernel_clock_state

    state = kernel_clock_state() if state is None else state
    now = time.time() if now is None else now
    if now < FLOOR:  # a Pi without RTC that never reached a time server
        yield Result(
            "clock",
            "FAIL",
            f"the clock says {time.strftime('%Y-%m-%d', time.gmtime(now))}",
            "timedatectl set-ntp true, and let the Pi reach a time server",
        )
    elif state is None:
        yield Result("clock", "skip", "the kernel's clock state cannot be read here")
    elif state == TIME_ERROR:
        yield Result(
            "clock",
            "FAIL",
            "not synchronised: frame timestamps may drift, and energy costs wait for it (tariff.wait_for_clock_sync)",
            "timedatectl set-ntp true (systemd-timesyncd), and check that the time server is reachable",
        )
    else:
        yield Result("clock", "ok", "synchronised")


def check_reboot(root: Path = Path("/")) -> Iterator[Result]:
    """Security updates install themselves; a new kernel or firmware waits for a reboot nobody does by itself."""
    from appliance.update.reboot import pending_reboot, release_info

    reasons = pending_reboot(root)
    if reasons:
        yield Result("reboot", "warn", "pending: " + "; ".join(reasons), "reboot when convenient (systemctl reboot)")
    else:
        yield Result("reboot", "ok", "no reboot pending")
    last = release_info(root).get("last_update", {})
    if last.get("phase") not in (None, "committed", "rolled-back", "aborted"):
        yield Result(
            "update",
            "warn",
            f"an update to {last.get('to')} is unfinished ({last.get('phase')})",
            "teleinfo update status; the next start of the service finishes or rolls it back",
        )
    elif last.get("phase") == "rolled-back":
        yield Result("update", "warn", f"the last update was rolled back: {last.get('reason', '')}"[:300],
                     "teleinfo update status; journalctl -u teleinfo-update -u teleinfo")  # fmt: skip


def check_disk(cfg: Any) -> Iterator[Result]:
    from appliance.outputs import enabled_outputs

    spools = (p.options(s).spool_max_bytes for p, s in enabled_outputs(cfg))
    need_mb = sum(b for b in spools if b is not None) / 1e6
    if not need_mb:
        yield Result("spool disk", "skip", "no durable output enabled (only they spool)")
        return
    directory = Path(cfg.state.directory)
    existing = directory
    while not existing.exists():
        existing = existing.parent
    free_mb = shutil.disk_usage(existing).free / 1e6
    where = (
        str(directory) if existing == directory else f"{directory} (not created yet; systemd's StateDirectory= does)"
    )
    if free_mb < need_mb:
        yield Result(
            "spool disk",
            "FAIL",
            f"{free_mb:.0f} MB free for {where}, the spools may take {need_mb:.0f} MB",
            "free space, or lower outputs.*.spool_max_mb",
        )
    else:
        yield Result("spool disk", "ok", f"{free_mb:.0f} MB free for {where} (spools up to {need_mb:.0f} MB)")
