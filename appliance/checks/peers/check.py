"""SSH peers: each scans the same targets with nmap, and every port seen open from one side only is reported.

Host keys are pinned in a known_hosts file the project manages (``teleinfo peers enroll`` writes it after the
operator compared the fingerprint).  At run time an unknown or changed key is refused before authentication, so
no command ever runs on a host that is not the enrolled one; a missing-key policy that adds or merely warns is
never used.  Every paramiko timeout is set (TCP connect, banner, authentication, channel open, command), plus the
run's overall deadline, so a peer that stalls at any stage costs a bounded time.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.checks.config import ChecksConfig
from appliance.checks.peers.config import PeerConfig
from appliance.checks.ports.check import MAX_OUTPUT, ScanError, ScanReport, nmap_args, parse_nmap_xml, port_list, scan
from appliance.checks.results import ERROR, OK, PROBLEM, CheckResult
from appliance.errors import ApplianceError
from appliance.schema import Config

if TYPE_CHECKING:
    import paramiko

__all__ = [
    "HostKeyRefused",
    "PeerError",
    "PeersCheck",
    "check_peers",
    "fetch_host_key",
    "fingerprint",
    "host_key_name",
    "known_hosts_path",
    "remote_scans",
]

_LOG = logging.getLogger(__name__)


class PeerError(ApplianceError):
    """The peer could not be used (unreachable, authentication, timeout, remote nmap failed)."""


class HostKeyRefused(PeerError):
    """The peer's host key is not the enrolled one (``changed``) or no key is enrolled for it."""

    def __init__(self, message: str, *, changed: bool, offered: str) -> None:
        super().__init__(message)
        self.changed = changed
        self.offered = offered


def known_hosts_path(cfg: Config) -> Path:
    """The project-managed known_hosts file: ``checks.peers.known_hosts`` or ``<state directory>/known_hosts``."""
    return Path(cfg.checks.peers.known_hosts or Path(cfg.state.directory) / "known_hosts")


def host_key_name(host: str, port: int) -> str:
    """The known_hosts name: ``host`` on port 22, ``[host]:port`` otherwise (OpenSSH's convention)."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint (``ssh-keygen -lf``): what an operator compares with the peer's console."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _quiet_paramiko() -> None:
    # paramiko's transport thread logs a traceback for every failed handshake; the check reports it itself.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def fetch_host_key(host: str, port: int, timeout: float) -> paramiko.PKey:
    """The peer's host key, from a key exchange alone (no authentication): what enrolment shows."""
    import paramiko

    _quiet_paramiko()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise PeerError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise PeerError(f"no SSH key exchange with {host}:{port}: {e or type(e).__name__}") from None
    finally:
        transport.close()


def _connect(peer: PeerConfig, known_hosts: Path, timeout: float) -> paramiko.SSHClient:
    import paramiko

    class Refuse(paramiko.MissingHostKeyPolicy):
        """Refuse an unknown key, keeping its fingerprint for the report (never adds it)."""

        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            raise HostKeyRefused(
                f"host key of {hostname} is not enrolled (offered {fingerprint(key)}): "
                f"run 'teleinfo peers enroll {peer.host}:{peer.port}' after checking it on the peer",
                changed=False,
                offered=fingerprint(key),
            )

    _quiet_paramiko()
    try:
        Path(peer.key_file).read_bytes()
    except OSError as e:
        raise PeerError(f"cannot read the key file {peer.key_file}: {e.strerror or e}") from None
    client = paramiko.SSHClient()
    if known_hosts.exists():
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as e:
            raise PeerError(f"cannot read {known_hosts}: {e}") from None
    client.set_missing_host_key_policy(Refuse())
    try:
        client.connect(
            peer.host,
            port=peer.port,
            username=peer.user,
            key_filename=peer.key_file,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except HostKeyRefused:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyRefused(
            f"host key of {peer.host}:{peer.port} CHANGED: enrolled {fingerprint(e.expected_key)}, offered "
            f"{fingerprint(e.key)}; refused (if the peer was reinstalled, enrol it again)",
            changed=True,
            offered=fingerprint(e.key),
        ) from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise PeerError(f"authentication as {peer.user} failed: {e}") from None
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise PeerError(f"cannot connect to {peer.host}:{peer.port}: {reason}") from None
    return client


def _run(client: paramiko.SSHClient, command: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``command``; its output must be complete within ``timeout`` seconds, in total."""
    transport = client.get_transport()
    assert transport is not None
    deadline = time.monotonic() + timeout
    channel = transport.open_session(timeout=timeout)
    try:
        channel.exec_command(command)
        out = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError(f"remote command did not finish within {timeout:.3g} s")
            channel.settimeout(remaining)
            try:
                chunk = channel.recv(65536)
            except TimeoutError:
                raise PeerError(f"remote command did not finish within {timeout:.3g} s") from None
            if not chunk:
                break
            out += chunk
            if len(out) > MAX_OUTPUT:
                raise PeerError(f"remote output larger than {MAX_OUTPUT} bytes")
        err = bytearray()
        while channel.recv_stderr_ready() and len(err) < 65536:
            err += channel.recv_stderr(65536)
        if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
            raise PeerError(f"remote command gave no exit status within {timeout:.3g} s")
        return channel.recv_exit_status(), bytes(out), bytes(err)
    finally:
        channel.close()


def remote_scans(
    peer: PeerConfig, cfg: ChecksConfig, known_hosts: Path, deadline: float
) -> dict[str, ScanReport | ScanError]:
    """Log in to ``peer`` once and scan every target from there; raises :class:`PeerError` if the peer cannot be
    used at all (per-target failures are returned as :class:`ScanError`)."""
    import paramiko

    timeout = max(0.1, min(cfg.peers.connect_timeout, deadline - time.monotonic()))
    client = _connect(peer, known_hosts, timeout)
    reports: dict[str, ScanReport | ScanError] = {}
    try:
        for target in cfg.ports.targets:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reports[target.host] = ScanError("not scanned: the check's deadline passed")
                continue
            command = shlex.join(nmap_args(peer.nmap, target.host, target.ports))
            try:
                rc, out, err = _run(client, command, min(cfg.peers.command_timeout, remaining))
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise PeerError(f"SSH session with {peer.name} failed: {e or type(e).__name__}") from None
            if rc != 0:
                last = (err or out).decode("utf-8", "replace").strip().splitlines()
                reports[target.host] = ScanError(
                    f"nmap on {peer.name} exited with status {rc}: {last[-1][:200] if last else 'no message'}"
                )
                continue
            try:
                reports[target.host] = parse_nmap_xml(out, target.host)
            except ScanError as e:
                reports[target.host] = e
    finally:
        client.close()
    return reports


@dataclass(frozen=True, slots=True)
class _Local:
    """This machine's own scan of a peer's address: the report, or why there is none."""

    report: ScanReport | None
    error: str | None


def _compare(peer: PeerConfig, host: str, local: ScanReport, remote: ScanReport, duration: float) -> CheckResult:
    only_local = local.open - remote.open
    only_peer = remote.open - local.open
    problems = []
    if only_local:
        problems.append(f"open from here but not from {peer.name}: {port_list(only_local)}")
    if only_peer:
        problems.append(f"open from {peer.name} but not from here: {port_list(only_peer)}")
    details: dict[str, Any] = {
        "peer": peer.name,
        "host": host,
        "seen_here": sorted(local.open),
        "seen_from_peer": sorted(remote.open),
        "only_here": sorted(only_local),
        "only_peer": sorted(only_peer),
    }
    message = (
        f"{host}: " + "; ".join(problems)
        if problems
        else f"{host}: {peer.name} sees the same open ports ({port_list(local.open) or 'none'})"
    )
    return CheckResult(
        "peers",
        f"{peer.name}/{host}",
        PROBLEM if problems else OK,
        message,
        details,
        measurement="peer_ports",
        tags={"peer": peer.name, "target": host},
        fields={
            "open": len(remote.open),
            "ports": port_list(remote.open),
            "only_local": len(only_local),
            "only_local_ports": port_list(only_local),
            "only_peer": len(only_peer),
            "only_peer_ports": port_list(only_peer),
        },
        duration_s=duration,
    )


def check_peers(cfg: ChecksConfig, known_hosts: Path, deadline: float) -> list[CheckResult]:
    """Scan every ports target from here, then from each peer, and compare: one result per peer and target."""
    local: dict[str, _Local] = {}
    for target in cfg.ports.targets:
        timeout = max(0.1, min(cfg.ports.timeout, deadline - time.monotonic()))
        try:
            local[target.host] = _Local(scan(cfg.ports.nmap, target.host, target.ports, timeout), None)
        except ScanError as e:
            local[target.host] = _Local(None, str(e))
    results: list[CheckResult] = []
    for peer in cfg.peers.hosts:
        start = time.monotonic()
        try:
            reports = remote_scans(peer, cfg, known_hosts, deadline)
        except PeerError as e:
            refused = isinstance(e, HostKeyRefused)
            if refused:
                _LOG.warning("peer %s refused: %s", peer.name, e)
            details: dict[str, Any] = {"peer": peer.name, "host_key_refused": refused}
            if isinstance(e, HostKeyRefused):
                details |= {"host_key_changed": e.changed, "offered_key": e.offered}
            results.append(
                CheckResult(
                    "peers", peer.name, ERROR, f"{peer.name}: {e}", details, duration_s=time.monotonic() - start
                )
            )
            continue
        for host, remote in reports.items():
            here = local[host]
            if isinstance(remote, ScanError) or here.report is None:
                why = str(remote) if isinstance(remote, ScanError) else f"local scan failed: {here.error}"
                results.append(
                    CheckResult(
                        "peers",
                        f"{peer.name}/{host}",
                        ERROR,
                        f"{host}: {why}",
                        {"peer": peer.name, "host": host},
                        duration_s=time.monotonic() - start,
                    )
                )
                continue
            results.append(_compare(peer, host, here.report, remote, time.monotonic() - start))
    return results


class PeersCheck:
    """The registered ``peers`` check: every peer of ``[checks.peers]`` against every ports target."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def run(self, deadline: float) -> list[CheckResult]:
        return check_peers(self.cfg.checks, known_hosts_path(self.cfg), deadline)
