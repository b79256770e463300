"""SSH peer checks in two network namespaces joined by a veth pair (docs/NETWORK.md §5.4 and §6.1).

``peer`` (198.51.100.1) runs a real sshd; ``target`` (198.51.100.2) runs two listeners and the appliance (the
``teleinfo`` commands run there with ``ip netns exec``), and its nftables drop one listener's port for packets
from the peer only.  No interface is ever created in the host's namespace; both namespaces are deleted at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .util import stop_process, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.root]

SSHD = "/usr/sbin/sshd"
PEER_IP, TARGET_IP, SSH_PORT = "198.51.100.1", "198.51.100.2", 2222
OPEN_PORT, DROPPED_PORT, CLOSED_PORT = 18081, 18080, 18082


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "nmap", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path(SSHD).exists():
        return "openssh-server not installed"
    return None


def sh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=input, timeout=30).stdout


@dataclass
class Topology:
    peer_ns: str
    target_ns: str
    root: Path
    client_key: Path
    host_pub: Path
    sshd_log: Path

    def accepted(self) -> int:
        """How many logins sshd accepted so far (a command can only run after one)."""
        return self.sshd_log.read_text().count("Accepted publickey")

    def teleinfo(self, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        """Run the appliance's command in the target namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.target_ns, sys.executable, "-m", "appliance", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=90,
            check=False,
        )

    def config(self, name: str) -> tuple[Path, Path]:
        """A configuration with its own known_hosts file (returned too, not created)."""
        known = self.root / f"{name}.known_hosts"
        conf = self.root / f"{name}.toml"
        conf.write_text(
            f'[state]\ndirectory = "{self.root / name}"\n'
            "[checks.public_ip]\nproviders = []\n"
            f'[[checks.ports.targets]]\nhost = "{TARGET_IP}"\n'
            f'ports = "{DROPPED_PORT},{OPEN_PORT},{CLOSED_PORT}"\nexpected = [{DROPPED_PORT}, {OPEN_PORT}]\n'
            f'[checks.peers]\nknown_hosts = "{known}"\nconnect_timeout = 5.0\ncommand_timeout = 60.0\n'
            f'[[checks.peers.hosts]]\nname = "peer1"\nhost = "{PEER_IP}"\nport = {SSH_PORT}\nuser = "root"\n'
            f'key_file = "{self.client_key}"\n'
        )
        return conf, known


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    why = _missing()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("peers")
    tag = f"{os.getpid() % 100000}"
    peer, target = f"t6peer{tag}", f"t6tgt{tag}"
    procs: list[subprocess.Popen[bytes]] = []
    sh("ip", "netns", "add", peer)
    try:
        sh("ip", "netns", "add", target)
        # both ends are created inside the namespaces: nothing ever appears in the host's namespace
        sh("ip", "-n", peer, "link", "add", "vpeer", "type", "veth", "peer", "name", "vtgt", "netns", target)
        for ns, dev, ip in ((peer, "vpeer", PEER_IP), (target, "vtgt", TARGET_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "netns",
            "exec",
            target,
            "nft",
            "-f",
            "-",
            input=(
                "table inet t6 {\n chain input {\n  type filter hook input priority 0;\n"
                f"  ip saddr {PEER_IP} tcp dport {DROPPED_PORT} drop\n }}\n}}\n"
            ),
        )
        listener = (
            "import socket, sys, time\n"
            "socks = [socket.create_server((sys.argv[1], int(p))) for p in sys.argv[2:]]\n"
            "print('ready', flush=True)\ntime.sleep(3600)\n"
        )
        lst = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                target,
                sys.executable,
                "-c",
                listener,
                TARGET_IP,
                str(DROPPED_PORT),
                str(OPEN_PORT),
            ],
            stdout=subprocess.PIPE,
        )
        procs.append(lst)
        assert lst.stdout is not None and lst.stdout.readline() == b"ready\n"

        keys = root / "keys"
        keys.mkdir(mode=0o700)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testhost", "-f", str(keys / "host_ed25519"))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "appliance", "-f", str(keys / "id_ed25519"))
        shutil.copy(keys / "id_ed25519.pub", keys / "authorized_keys")
        (keys / "authorized_keys").chmod(0o600)
        conf = keys / "sshd_config"
        conf.write_text(
            f"Port {SSH_PORT}\nListenAddress {PEER_IP}\nHostKey {keys / 'host_ed25519'}\nPidFile {keys / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
            "LogLevel VERBOSE\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sh(SSHD, "-t", "-f", str(conf))
        log = root / "sshd.log"
        with log.open("wb") as out:
            sshd = subprocess.Popen(
                ["ip", "netns", "exec", peer, SSHD, "-D", "-e", "-f", str(conf)], stderr=out, stdout=out
            )
        procs.append(sshd)
        wait_until(lambda: "Server listening on" in log.read_text(), timeout=10)
        yield Topology(peer, target, root, keys / "id_ed25519", keys / "host_ed25519.pub", log)
    finally:
        for proc in procs:
            stop_process(proc, 5)
        for ns in (peer, target):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def host_fingerprint(pub: Path) -> str:
    return sh("ssh-keygen", "-lf", str(pub)).split()[1]


def results(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert proc.stdout, proc.stderr
    return list(json.loads(proc.stdout)["results"])


def test_unknown_host_key_is_refused_before_any_login(topo: Topology) -> None:
    conf, known = topo.config("unknown")
    before = topo.accepted()
    proc = topo.teleinfo("check", "peers", "--config", str(conf), "--format", "json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (r,) = results(proc)
    assert r["status"] == "error"
    assert r["host_key_refused"] is True
    assert r["host_key_changed"] is False
    assert r["offered_key"] == host_fingerprint(topo.host_pub)
    assert "is not enrolled" in str(r["message"])
    assert f"teleinfo peers enroll {PEER_IP}:{SSH_PORT}" in str(r["message"])
    assert topo.accepted() == before
    assert not known.exists()  # nothing was added behind the operator's back


@pytest.mark.slow
def test_enroll_after_confirmation_then_the_dropped_port_is_reported(topo: Topology) -> None:
    conf, known = topo.config("enrolled")
    fp = host_fingerprint(topo.host_pub)
    declined = topo.teleinfo("peers", "enroll", f"{PEER_IP}:{SSH_PORT}", "--config", str(conf), input="no\n")
    assert declined.returncode == 1
    assert fp in declined.stdout
    assert "not recorded" in declined.stdout
    assert not known.exists()

    confirmed = topo.teleinfo("peers", "enroll", "peer1", "--config", str(conf), input="yes\n")
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert f"[{PEER_IP}]:{SSH_PORT} host key: ssh-ed25519 {fp}" in confirmed.stdout
    pinned = known.read_text().split()
    assert pinned[:2] == [f"[{PEER_IP}]:{SSH_PORT}", "ssh-ed25519"]
    assert pinned[2] == topo.host_pub.read_text().split()[1]
    again = topo.teleinfo("peers", "enroll", f"{PEER_IP}:{SSH_PORT}", "--config", str(conf), "--yes")
    assert again.returncode == 0
    assert "already enrolled" in again.stdout

    start = time.monotonic()
    proc = topo.teleinfo("check", "all", "--config", str(conf), "--format", "json")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout + proc.stderr
    ports, peer = results(proc)
    assert ports["check"] == "ports"
    assert ports["status"] == "ok"  # from here both listeners are open, as expected
    assert peer["check"] == "peers"
    assert peer["target"] == f"peer1/{TARGET_IP}"
    assert peer["status"] == "problem"
    assert peer["seen_here"] == [DROPPED_PORT, OPEN_PORT]
    assert peer["seen_from_peer"] == [OPEN_PORT]
    assert peer["only_here"] == [DROPPED_PORT]
    assert peer["only_peer"] == []
    assert f"open from here but not from peer1: {DROPPED_PORT}" in str(peer["message"])
    assert topo.accepted() >= 1
    assert elapsed < 60


@pytest.mark.slow
def test_changed_host_key_is_refused_and_no_command_runs(topo: Topology) -> None:
    conf, known = topo.config("changed")
    other = topo.root / "other_host"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    known.write_text(f"[{PEER_IP}]:{SSH_PORT} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n")
    before = topo.accepted()
    proc = topo.teleinfo("check", "peers", "--config", str(conf), "--format", "json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (r,) = results(proc)
    assert r["host_key_refused"] is True
    assert r["host_key_changed"] is True
    assert r["offered_key"] == host_fingerprint(topo.host_pub)
    assert "CHANGED" in str(r["message"])
    assert host_fingerprint(Path(f"{other}.pub")) in str(r["message"])
    assert topo.accepted() == before  # refused before authentication: no session, so no command

    refused = topo.teleinfo("peers", "enroll", f"{PEER_IP}:{SSH_PORT}", "--config", str(conf), "--yes")
    assert refused.returncode == 1
    assert "DIFFERENT key" in refused.stdout
    replaced = topo.teleinfo("peers", "enroll", f"{PEER_IP}:{SSH_PORT}", "--config", str(conf), "--yes", "--replace")
    assert replaced.returncode == 0
    assert known.read_text().split()[2] == topo.host_pub.read_text().split()[1]
    assert len(known.read_text().splitlines()) == 1


def test_unreachable_peer_and_unreadable_key_are_errors(topo: Topology) -> None:
    conf, _known = topo.config("unreachable")
    conf.write_text(conf.read_text().replace(f"port = {SSH_PORT}", "port = 2299"))
    proc = topo.teleinfo("check", "peers", "--config", str(conf), "--format", "json")
    assert proc.returncode == 2
    (r,) = results(proc)
    assert "cannot connect" in str(r["message"])
    assert r["host_key_refused"] is False
    conf.write_text(conf.read_text().replace(str(topo.client_key), "/nonexistent/key"))
    (r,) = results(topo.teleinfo("check", "peers", "--config", str(conf), "--format", "json"))
    assert "cannot read the key file /nonexistent/key" in str(r["message"])
