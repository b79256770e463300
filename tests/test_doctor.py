"""``teleinfo doctor`` against a meter on a pty (tests/ptyutil.PtyMeter), real servers on 127.0.0.1 (mosquitto,
influxd), stock Pi boot files and real processes holding the port; each problem must come with its fix.

The doctor runs as a user runs it (a subprocess) where the whole report matters, and check by check elsewhere.
This host's clock state is whatever it is, so the whole-report tests skip the clock check and the clock check is
tested with the kernel's answers given.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from appliance.commands.doctor import (
    check_access,
    check_boot,
    check_clock,
    check_console,
    check_holders,
    check_uart,
    may_open,
)
from appliance.simulator import PARIS, MeterSimulator

from .ptyutil import PtyMeter
from .servers import InfluxD
from .util import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DATA = Path(__file__).resolve().parent / "data" / "firmware"


class Feeder:
    """Writes the simulator's frames (or garbage) into the pty, ~10 chunks a second, until stopped.

    Continuously, as a meter does: opening a port discards what was queued before (pyserial flushes on open)."""

    def __init__(self, meter: PtyMeter, mode: str) -> None:
        self.meter = meter
        if mode == "garbage":
            self.chunks: Iterator[bytes] = iter(lambda: bytes(range(256)), b"")
        else:
            sim = MeterSimulator(start=datetime(2024, 3, 1, 12, 0, tzinfo=PARIS), mode=mode)  # type: ignore[arg-type]
            self.chunks = (frame.data for frame in sim.frames())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for chunk in self.chunks:
            if self.stop.wait(0.1):
                return
            try:
                self.meter.write(chunk, timeout=0.5)
            except TimeoutError:  # nobody reads between two sampling windows: the pty is full, drop the frame
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[PtyMeter]:
    with PtyMeter(tmp_path) as m:
        yield m


def doctor(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "doctor", "--config", str(config), "--user", "root", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def lines(out: str, check: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().split(None, 1)[-1].startswith(check)]


def fix_of(out: str, check: str) -> str:
    rows = out.splitlines()
    for i, line in enumerate(rows):
        if line.split(None, 1)[-1].startswith(check) and i + 1 < len(rows) and "fix:" in rows[i + 1]:
            return rows[i + 1].strip()
    raise AssertionError(f"no fix after {check!r} in:\n{out}")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(port), timeout=10)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[int]:
    if InfluxD.binary() is None:
        pytest.skip("influxd not installed (apt-get install influxdb)")
    server = InfluxD()
    http_port, _ = server.start(tmp_path / "influxd")
    try:
        yield http_port
    finally:
        server.stop()


def write_config(tmp_path: Path, device: Path, extra: str = "") -> Path:
    config = tmp_path / "teleinfo.toml"
    config.write_text(
        f'[source]\ndevice = "{device}"\n[outputs.multicast]\ninterface = "127.0.0.1"\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\n' + extra
    )
    return config


# --- whole reports -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_all_well_with_a_historique_meter_and_reachable_servers(
    tmp_path: Path, meter: PtyMeter, mosquitto: int, influxd: int
) -> None:
    config = write_config(
        tmp_path,
        meter.path,
        f'[outputs.mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {mosquitto}\n'
        f'[outputs.influxdb]\nenabled = true\nurl = "http://127.0.0.1:{influxd}"\nspool_max_mb = 1.0\n',
    )
    feeder = Feeder(meter, "historique")
    try:
        result = doctor(config, "--sample", "2", "--skip", "clock", "--boot", str(tmp_path / "no-boot"))
    finally:
        feeder.close()
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert lines(out, "meter")[0].startswith("ok    meter          historique at 1200 Bd: ")
    assert "meter 0" in lines(out, "meter")[0]  # the meter's address was read
    assert lines(out, "serial device")[0].startswith("ok") and lines(out, "device access")[0].startswith("ok")
    assert lines(out, "multicast")[0] == "ok    multicast      239.255.42.1:4242 routed from 127.0.0.1"
    assert lines(out, "mqtt")[0] == f"ok    mqtt           127.0.0.1:{mosquitto} accepts connections"
    assert lines(out, "influxdb")[0] == f"ok    influxdb       http://127.0.0.1:{influxd}/ping answered HTTP 204"
    assert lines(out, "spool disk")[0].startswith("ok") and "StateDirectory" in lines(out, "spool disk")[0]
    # This test process holds the pty's slave open: reported, not a failure.
    assert f"(pid {os.getpid()}) has {meter.path} open" in lines(out, "port users")[0]
    assert out.rstrip().endswith("0 problem(s), 1 warning(s)")


@pytest.mark.slow
@pytest.mark.integration
def test_standard_meter_with_historique_configured_is_a_failure_with_its_fix(tmp_path: Path, meter: PtyMeter) -> None:
    config = write_config(tmp_path, meter.path)
    config.write_text(config.read_text().replace("[source]\n", '[source]\nmode = "historique"\n'))
    feeder = Feeder(meter, "standard")
    try:
        t0 = time.monotonic()
        result = doctor(config, "--sample", "1.5", "--skip", "clock", "--skip", "holders")
        elapsed = time.monotonic() - t0
    finally:
        feeder.close()
    assert result.returncode == 1
    assert lines(result.stdout, "meter")[0].startswith("FAIL  meter          standard at 9600 Bd: ")
    assert lines(result.stdout, "meter")[0].endswith("but source.mode is historique")
    assert fix_of(result.stdout, "meter") == 'fix: source.mode = "standard" (or "auto")'
    assert elapsed < 10  # 1.5 s at 1200 Bd finds nothing, the standard window stops at the second frame


@pytest.mark.slow
@pytest.mark.integration
def test_silent_and_garbled_meters(tmp_path: Path, meter: PtyMeter) -> None:
    config = write_config(tmp_path, meter.path)
    result = doctor(config, "--sample", "0.5", "--skip", "clock", "--skip", "holders")
    assert result.returncode == 1
    assert "no byte at all" in lines(result.stdout, "meter")[0] and "I1/I2" in fix_of(result.stdout, "meter")
    feeder = Feeder(meter, "garbage")
    try:
        result = doctor(config, "--sample", "0.5", "--skip", "clock", "--skip", "holders")
    finally:
        feeder.close()
    assert "bytes but no frame verified" in lines(result.stdout, "meter")[0]
    assert "8N1" in fix_of(result.stdout, "meter")


def test_every_problem_comes_with_its_fix(tmp_path: Path) -> None:
    closed = free_port()
    config = write_config(
        tmp_path,
        tmp_path / "ttyAMA0",
        f'[outputs.mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {closed}\n'
        f'[outputs.influxdb]\nenabled = true\nurl = "http://127.0.0.1:{closed}"\nspool_max_mb = 100000.0\n',
    )
    # An interface this host does not have: the multicast check fails without sending anything.
    config.write_text(config.read_text().replace('interface = "127.0.0.1"', 'interface = "nosuchif0"'))
    # The host's own /proc/cmdline and boot partition are not part of this test (see the single checks below).
    result = doctor(config, "--skip", "clock", "--skip", "console", "--boot", str(tmp_path / "no-boot"))
    out = result.stdout
    assert result.returncode == 1, out
    failing = [line.split()[1] for line in out.splitlines() if line.strip().startswith("FAIL")]
    assert failing == ["serial", "multicast", "mqtt", "influxdb", "spool"], out
    assert "firmware/apply.py" in fix_of(out, "serial device")  # a ttyAMA name: the GPIO UART is not enabled
    assert "interface" in fix_of(out, "multicast") and "broker" in fix_of(out, "mqtt")
    assert "Connection refused" in lines(out, "mqtt")[0] and "Connection refused" in lines(out, "influxdb")[0]
    assert "spool_max_mb" in fix_of(out, "spool disk")
    assert out.rstrip().endswith("5 problem(s), 0 warning(s)")


@pytest.mark.integration
def test_invalid_configuration_is_reported_and_the_rest_still_checked(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[source]\nmode = 3\n")
    result = doctor(config, "--skip", "clock", "--skip", "meter")
    assert result.returncode == 1
    assert lines(result.stdout, "configuration")[0].startswith("FAIL  configuration  source.mode: must be")
    assert "teleinfo check-config" in fix_of(result.stdout, "configuration")
    assert lines(result.stdout, "serial device")  # the defaults were checked
    assert (
        subprocess.run([sys.executable, "-m", "appliance", "doctor", "--sample", "99"], capture_output=True).returncode
        == 2
    )


# --- single checks -----------------------------------------------------------------------------------------
def test_access_of_the_service_user(tmp_path: Path) -> None:
    st = os.stat_result((0o20660, 0, 0, 0, 0, 20, 0, 0, 0, 0))  # crw-rw---- root:20 (dialout)
    assert may_open(st, 0, set()) and may_open(st, 1000, {20}) and not may_open(st, 1000, {100})
    assert may_open(os.stat_result((0o20600, 0, 0, 0, 1000, 5, 0, 0, 0, 0)), 1000, set())
    device = tmp_path / "ttyUSB0"
    device.touch()
    os.chmod(device, 0o660)
    (result,) = check_access(device, "nobody")
    assert result.status == "FAIL" and "nobody may not open" in result.detail
    group = result.detail.rsplit("group ", 1)[1].rstrip(")")
    assert result.fix == f"usermod -aG {group} nobody, then restart the service"
    os.chmod(device, 0o666)  # noqa: S103 - a test file standing for a world-writable device
    assert next(check_access(device, "nobody")).status == "ok"
    (missing,) = check_access(device, "no-such-user-x")
    assert missing.status == "warn" and "systemd-sysusers" in missing.fix


def test_console_on_the_uart(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text((FIRMWARE_DATA / "pi4" / "cmdline.txt").read_text())
    (bad,) = check_console(Path("/dev/serial0"), cmdline)
    assert bad.status == "FAIL" and "console=serial0,115200" in bad.detail and "firmware/apply.py" in bad.fix
    cmdline.write_text("console=tty1 root=PARTUUID=5e3da3da-02 rootwait\n")
    assert next(check_console(Path("/dev/ttyAMA0"), cmdline)).status == "ok"
    assert next(check_console(Path("/dev/ttyUSB0"), cmdline)).status == "skip"  # a USB dongle: no console there


@pytest.mark.integration
def test_boot_config_before_and_after_firmware_apply(tmp_path: Path) -> None:
    boot = tmp_path / "bootfs"
    shutil.copytree(FIRMWARE_DATA / "pi5", boot)
    (before,) = check_boot(Path("/dev/ttyAMA0"), boot)
    assert before.status == "FAIL" and f"--boot {boot}" in before.fix
    subprocess.run(
        [sys.executable, str(ROOT / "firmware" / "apply.py"), "--boot", str(boot)], check=True, capture_output=True
    )
    assert next(check_boot(Path("/dev/ttyAMA0"), boot)).status == "ok"
    assert next(check_boot(Path("/dev/ttyAMA0"), tmp_path / "absent")).status == "skip"


@pytest.mark.integration
def test_a_getty_on_the_port_is_found(tmp_path: Path, meter: PtyMeter) -> None:
    """A real process named agetty with the port open, as systemd-getty-generator would start."""
    agetty = tmp_path / "agetty"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", agetty)
    with open(meter.slave_name, "rb") as port:
        proc = subprocess.Popen([str(agetty), "30"], stdin=port)
    try:
        wait_until(lambda: any("getty" in r.detail for r in check_holders(meter.path)), timeout=5)
        results = list(check_holders(meter.path))
        getty = next(r for r in results if "getty" in r.detail)
        assert getty.status == "FAIL" and f"pid {proc.pid}" in getty.detail
        assert "systemctl mask --now serial-getty@" in getty.fix
    finally:
        proc.kill()
        proc.wait()


def test_clock_states() -> None:
    assert next(check_clock(state=0, now=1_750_000_000)).status == "ok"
    unsynced = next(check_clock(state=5, now=1_750_000_000))
    assert unsynced.status == "FAIL" and "timedatectl set-ntp true" in unsynced.fix
    never_set = next(check_clock(state=0, now=86_400))
    assert never_set.status == "FAIL" and "1970-01-02" in never_set.detail


@pytest.mark.integration
def test_doctor_is_a_listed_command() -> None:
    result = subprocess.run([sys.executable, "-m", "appliance", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert "doctor" in result.stdout


# --- the header UART and Debian's boot layout ----------------------------------------------------------------
UART_DATA = Path(__file__).resolve().parent / "data" / "uart"


def test_uart_says_which_which_framing_and_why() -> None:
    from appliance.sources.serial.config import SourceConfig
    from appliance.sources.serial.uart import resolve_header_uart

    (found,) = check_uart(SourceConfig(), resolve_header_uart(UART_DATA / "debian-pi3b"))
    assert found.status == "ok"
    for words in ("/dev/ttyS1", "mini UART /soc/serial@7e215040", "Raspberry Pi 3 Model B", "uart1_gpio14", "8N1"):
        assert words in found.detail, found.detail
    (none,) = check_uart(SourceConfig(), resolve_header_uart(UART_DATA / "qemu-virt"))
    assert none.status == "FAIL" and "not a Raspberry Pi" in none.detail and "source.device" in none.fix
    (dongle,) = check_uart(SourceConfig(device="/dev/ttyUSB0"), None)
    assert dongle.status == "ok" and "/dev/ttyUSB0 as configured" in dongle.detail and "7E1" in dongle.detail


def test_debian_layout_is_reported_honestly(tmp_path: Path) -> None:
    """Debian regenerates config.txt: a block there alone will vanish; the /etc/default files are what counts."""
    from appliance.sources.serial.uart import resolve_header_uart

    root = tmp_path / "root"
    shutil.copytree(FIRMWARE_DATA / "debian", root)
    boot, etc = root / "boot/firmware", root / "etc"
    uart = resolve_header_uart(UART_DATA / "debian-pi3b")
    results = {r.check: r for r in check_boot(Path("/dev/ttyS1"), boot, etc, uart)}
    assert results["boot config"].status == "FAIL" and "regenerated by Debian's raspi-firmware" in (
        results["boot config"].detail
    )
    assert results["boot console"].status == "FAIL" and "CONSOLES='auto'" in results["boot console"].detail
    assert results["uart clock"].status == "ok"  # enable_uart=1 is in every config.txt Debian generates

    # The old way: the block edited into config.txt itself.
    config = boot / "config.txt"
    config.write_text(config.read_text() + (ROOT / "firmware/raspi-firmware-custom").read_text())
    (hand,) = [r for r in check_boot(Path("/dev/ttyS1"), boot, etc, uart) if r.check == "boot config"]
    assert hand.status == "FAIL" and "will vanish" in hand.detail

    config.write_text((FIRMWARE_DATA / "debian/boot/firmware/config.txt").read_text())
    subprocess.run(
        [sys.executable, str(ROOT / "firmware/apply.py"), "--root", str(root)], check=True, capture_output=True
    )
    pending = {r.check: r for r in check_boot(Path("/dev/ttyS1"), boot, etc, uart)}
    assert pending["boot config"].status == "warn" and "update-initramfs -u" in pending["boot config"].fix
    assert pending["boot console"].status == "ok"
    config.write_text(config.read_text() + (etc / "default/raspi-firmware-custom").read_text())  # the hook's work
    assert all(r.status == "ok" for r in check_boot(Path("/dev/ttyS1"), boot, etc, uart))


def test_pi4_mini_uart_needs_a_fixed_core_clock(tmp_path: Path) -> None:
    from appliance.sources.serial.uart import resolve_header_uart

    uart = resolve_header_uart(UART_DATA / "debian-pi4b")
    boot = tmp_path / "boot"
    boot.mkdir()
    stock = (FIRMWARE_DATA / "debian/boot/firmware/config.txt").read_text()
    (boot / "config.txt").write_text(stock)
    (clock,) = [r for r in check_boot(Path("/dev/ttyS1"), boot, tmp_path, uart) if r.check == "uart clock"]
    assert clock.status == "FAIL" and "core_freq=360" in clock.fix
    (boot / "config.txt").write_text(stock + (ROOT / "firmware/raspi-firmware-custom").read_text())
    (clock,) = [r for r in check_boot(Path("/dev/ttyS1"), boot, tmp_path, uart) if r.check == "uart clock"]
    assert clock.status == "ok" and "360 MHz" in clock.detail
