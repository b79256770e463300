"""The open-ports check with the real nmap, against listeners the test opened on 127.0.0.1 (only those ports are
scanned), and its failures: nmap missing, killed at its timeout, a target nmap skips while exiting 0."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.checks.ports.check import ScanError, check_target, nmap_args, parse_nmap_xml, scan
from appliance.checks.ports.config import PortsCheckConfig, PortsTargetConfig
from appliance.checks.results import ERROR, OK, PROBLEM, exit_status, to_lines

from .util import free_port

pytestmark = pytest.mark.integration

NMAP = shutil.which("nmap")
needs_nmap = pytest.mark.skipif(NMAP is None, reason="nmap not installed (apt-get install -y nmap)")


@pytest.fixture
def listeners() -> Iterator[list[int]]:
    """Two listening sockets on 127.0.0.1; the third port of the list is free (closed)."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
    yield [s.getsockname()[1] for s in socks] + [free_port()]
    for s in socks:
        s.close()


def target(ports: list[int], expected: list[int]) -> PortsTargetConfig:
    return PortsTargetConfig(host="127.0.0.1", ports=",".join(map(str, ports)), expected=expected)


@needs_nmap
def test_open_ports_as_expected(listeners: list[int]) -> None:
    a, b, closed = listeners
    result = check_target(PortsCheckConfig(), target(listeners, [a, b]), time.monotonic() + 30)
    assert result.status == OK, result.message
    assert result.details["open"] == sorted([a, b])
    assert closed not in result.details["open"]
    assert result.fields["unexpected"] == result.fields["missing"] == 0
    assert result.fields["open"] == 2


@needs_nmap
def test_unexpected_and_missing_ports_are_reported(listeners: list[int]) -> None:
    a, b, closed = listeners
    result = check_target(PortsCheckConfig(), target(listeners, [a, closed]), time.monotonic() + 30)
    assert result.status == PROBLEM
    assert result.details["unexpected"] == [b]
    assert result.details["missing"] == [closed]
    assert f"unexpected open: {b}" in result.message
    assert f"expected but not open: {closed}" in result.message
    assert result.fields["unexpected_ports"] == str(b)
    assert result.fields["missing_ports"] == str(closed)
    line = to_lines([result])[1]
    assert line.startswith("teleinfo_ports,target=127.0.0.1 open=2i,")


@needs_nmap
def test_real_nmap_xml_services_are_optional(listeners: list[int]) -> None:
    """-sT without -sV names only well-known ports: a <service> element may be missing."""
    assert NMAP is not None
    a, b, closed = listeners
    out = subprocess.run(nmap_args(NMAP, "127.0.0.1", f"{a},{b},{closed}"), capture_output=True, check=True).stdout
    report = parse_nmap_xml(out, "127.0.0.1")
    assert report.open == {a, b}
    assert b"<service" not in out or report.services


@needs_nmap
def test_target_nmap_skips_is_an_error_although_it_exits_0() -> None:
    """nmap skips an IPv6 address given without -6 and exits 0: the run statistics say no host was up."""
    assert NMAP is not None
    proc = subprocess.run([NMAP, "-sT", "-Pn", "-n", "-p", "22", "-oX", "-", "::1"], capture_output=True, check=False)
    assert proc.returncode == 0
    with pytest.raises(ScanError, match=r"::1 was not scanned \(.*0 hosts up"):
        parse_nmap_xml(proc.stdout, "::1")


@needs_nmap
def test_ipv6_target_gets_dash_6() -> None:
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s.listen()
    try:
        port = s.getsockname()[1]
        assert scan("nmap", "::1", str(port), 30).open == {port}
    finally:
        s.close()


def test_nmap_missing_is_a_clear_error() -> None:
    cfg = PortsCheckConfig(nmap="/nonexistent/nmap")
    result = check_target(cfg, target([22], []), time.monotonic() + 5)
    assert result.status == ERROR
    assert result.message == "/nonexistent/nmap not found: install nmap (apt-get install nmap)"
    assert exit_status([result]) == 2


def fake_nmap(tmp_path: Path, body: str) -> str:
    """A stand-in nmap: the only way to get an nmap that hangs or writes garbage on demand."""
    path = tmp_path / "nmap"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.slow
def test_hanging_nmap_is_killed_at_its_timeout(tmp_path: Path) -> None:
    cfg = PortsCheckConfig(nmap=fake_nmap(tmp_path, "import time; time.sleep(60)"), timeout=1.0)
    start = time.monotonic()
    result = check_target(cfg, target([22], []), time.monotonic() + 30)
    assert time.monotonic() - start < 5
    assert result.status == ERROR
    assert "did not finish within 1 s (killed)" in result.message


def test_the_deadline_bounds_the_scan(tmp_path: Path) -> None:
    cfg = PortsCheckConfig(nmap=fake_nmap(tmp_path, "import time; time.sleep(60)"), timeout=100.0)
    start = time.monotonic()
    result = check_target(cfg, target([22], []), time.monotonic() + 0.5)
    assert time.monotonic() - start < 4
    assert "did not finish within 0.5 s" in result.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("import sys; sys.stdout.write('<html>'); sys.exit(0)", "not valid XML"),
        ("import sys; sys.stderr.write('QUITTING!\\n'); sys.exit(1)", "nmap exited with status 1: QUITTING!"),
        (
            'print(\'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><nmaprun>&a;</nmaprun>\')',
            "declares XML entities",
        ),
        ("print('<nmaprun><host/></nmaprun>')", "incomplete"),
    ],
)
def test_broken_nmap_output_is_an_error(tmp_path: Path, body: str, message: str) -> None:
    result = check_target(PortsCheckConfig(nmap=fake_nmap(tmp_path, body)), target([22], []), time.monotonic() + 10)
    assert result.status == ERROR
    assert message in result.message


@needs_nmap
def test_cli_exit_status_and_json(listeners: list[int], tmp_path: Path) -> None:
    a, b, closed = listeners
    conf = tmp_path / "teleinfo.toml"

    def check(expected: list[int], fmt: str = "json") -> tuple[int, str]:
        conf.write_text(
            f'[state]\ndirectory = "{tmp_path}"\n[checks.public_ip]\nproviders = []\n'
            f'[[checks.ports.targets]]\nhost = "127.0.0.1"\nports = "{a},{b},{closed}"\nexpected = {expected}\n'
        )
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "check", "all", "--config", str(conf), "--format", fmt],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return proc.returncode, proc.stdout

    rc, out = check([a, b])
    assert rc == 0
    doc = json.loads(out)
    assert doc["status"] == "ok"
    assert [r["check"] for r in doc["results"]] == ["ports"]  # public_ip has no provider: not run
    rc, out = check([a])
    assert rc == 1
    assert json.loads(out)["results"][0]["unexpected"] == [b]
    rc, out = check([a, b], "table")
    assert rc == 0
    assert out.splitlines()[0].split() == ["CHECK", "TARGET", "STATUS", "MESSAGE"]
    assert out.splitlines()[1].split()[:3] == ["ports", "127.0.0.1", "ok"]


def test_cli_named_check_not_configured_and_bad_config(tmp_path: Path) -> None:
    conf = tmp_path / "teleinfo.toml"
    conf.write_text(f'[state]\ndirectory = "{tmp_path}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "check", "peers", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "nothing to check: see [checks.peers]" in proc.stdout
    conf.write_text('[[checks.ports.targets]]\nhost = "-iL/etc/passwd"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "check", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "checks.ports.targets[0].host: neither an IP address nor a host name: '-iL/etc/passwd'" in proc.stderr


def test_config_rejects_what_nmap_would_misread() -> None:
    from appliance.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(
            '[[checks.ports.targets]]\nhost = "10.0.0.1"\nports = "20-25,80"\nexpected = [22, 443]\n'
            '[[checks.ports.targets]]\nhost = "10.0.0.2"\nports = "-sV,22"\n'
            '[[checks.peers.hosts]]\nname = "a b"\nhost = "10.0.0.3"\n'
        )
    assert info.value.errors == [
        "checks.ports.targets[1].ports: must be an nmap port list such as \"22,80,8000-8100\" (got '-sV,22')",
        "checks.peers.hosts[0].name: invalid name 'a b' (no spaces, commas, quotes or '=': it becomes an InfluxDB tag)",
        "checks.peers.hosts[0].key_file: is required",
        "checks.ports.targets[0].expected: [443] not in the scanned ports '20-25,80'",
    ]
