"""``teleinfo sync`` and ``teleinfo sync-server``: real processes, real sockets, real inotify.

Ten clients in ten network namespaces (created and deleted here) against one server in its own namespace, each
tree changed at random while it syncs; kill -9 of a client and of the server in the middle of a large upload;
hostile clients speaking the raw protocol; TLS.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from appliance.sync.config import SyncServerConfig
from appliance.sync.protocol import ProtocolError, check_path
from appliance.sync.server import SyncServer, load_tokens

from .syncraw import Raw
from .util import free_port, stop_process, wait_until

TOKEN = "tok-{}-0123456789abcdef"


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: path -> sha256 for files, "dir" for directories, "other" for anything else."""
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            out[rel] = "other"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            try:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            except FileNotFoundError:
                continue  # deleted while we looked: the next comparison sees it
    return out


class Proc:
    """A teleinfo subprocess (maybe inside a network namespace), its stderr in a file, stopped by its PID."""

    def __init__(self, log: Path, *args: str, netns: str | None = None) -> None:
        self.log = log
        self.argv = [*(["ip", "netns", "exec", netns] if netns else []), sys.executable, "-m", "appliance", *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT)  # ip netns exec execs
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, 5)


def tokens_file(path: Path, names: list[str]) -> Path:
    path.write_text("# name token\n" + "".join(f"{n} {TOKEN.format(n)}\n" for n in names))
    for n in names:
        (path.parent / f"{n}.token").write_text(TOKEN.format(n) + "\n")
    return path


def server_proc(tmp: Path, port: int, *, bind: str = "127.0.0.1", netns: str | None = None) -> Proc:
    return Proc(
        tmp / "server.log",
        "sync-server",
        "--bind",
        bind,
        "--port",
        str(port),
        "--root",
        str(tmp / "srv"),
        "--tokens",
        str(tmp / "tokens"),
        netns=netns,
    )


def client_proc(tmp: Path, name: str, server: str, *extra: str, netns: str | None = None) -> Proc:
    return Proc(
        tmp / f"{name}.log",
        "sync",
        "--server",
        server,
        "--name",
        name,
        "--token-file",
        str(tmp / f"{name}.token"),
        "--directory",
        str(tmp / "src" / name),
        *extra,
        netns=netns,
    )


def wait_listening(server: Proc) -> None:
    wait_until(lambda: "listening on port" in server.text() or not server.alive(), 15)
    assert server.alive(), server.text()


# --- rules ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    ["", "/etc/passwd", "../x", "a/../../b", "a//b", "./a", "a/.", "a\\b", "a\x00b", "a\nb", "x" * 300, "a/" * 40],
)
def test_paths_that_could_leave_a_tree_are_refused(bad: str) -> None:
    with pytest.raises(ProtocolError):
        check_path(bad)


def test_good_paths_and_tokens_file(tmp_path: Path) -> None:
    assert check_path("tic-2025.gz") == ("tic-2025.gz",)
    assert check_path("a/b c/é..x") == ("a", "b c", "é..x")
    t = tmp_path / "t"
    t.write_text("ok-1 0123456789abcdef\n")
    assert load_tokens(t) == {"ok-1": "0123456789abcdef"}
    for text, why in (("a short\n", "shorter than 16"), ("../x 0123456789abcdef\n", "invalid client name")):
        t.write_text(text)
        with pytest.raises(ValueError, match=why):
            load_tokens(t)


# --- ten clients in ten network namespaces ---------------------------------------------------------------------
def _netns_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "iproute2 not installed"
    return None


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, list[str]]]:
    """A server namespace and ten client namespaces, each client linked to the server by its own veth pair."""
    why = _netns_missing()
    if why:
        pytest.skip(why)
    tag = f"ts{os.getpid() % 100000}"
    srv = f"{tag}s"
    clients = [f"{tag}c{i}" for i in range(10)]
    created: list[str] = []
    try:
        for ns in (srv, *clients):
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i, ns in enumerate(clients):
            sh("ip", "-n", srv, "link", "add", f"vs{i}", "type", "veth", "peer", "name", "vc", "netns", ns)
            sh("ip", "-n", srv, "addr", "add", f"10.231.{i}.1/30", "dev", f"vs{i}")
            sh("ip", "-n", ns, "addr", "add", f"10.231.{i}.2/30", "dev", "vc")
            sh("ip", "-n", srv, "link", "set", f"vs{i}", "up")
            sh("ip", "-n", ns, "link", "set", "vc", "up")
        yield srv, clients
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def random_ops(root: Path, rng: random.Random, rounds: int) -> None:
    """Create, append, rename (files and directories), delete, nest: what a journal and a user might do."""
    for _ in range(rounds):
        files = [p for p in root.rglob("*") if p.is_file()]
        dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]
        op = rng.random()
        try:
            if op < 0.3 or not files:
                d = rng.choice(dirs)
                size = rng.choice((0, 10, 1000, 50_000, 300_000))
                (d / f"f{rng.randrange(10**6)}").write_bytes(rng.randbytes(size))
            elif op < 0.5:
                with rng.choice(files).open("ab") as f:
                    f.write(rng.randbytes(rng.randrange(1, 20_000)))
            elif op < 0.6:
                src = rng.choice(files)
                src.rename(rng.choice(dirs) / f"r{rng.randrange(10**6)}")
            elif op < 0.7:
                rng.choice(files).unlink()
            elif op < 0.82:
                (rng.choice(dirs) / f"d{rng.randrange(1000)}" / f"e{rng.randrange(1000)}").mkdir(parents=True)
            elif op < 0.9 and len(dirs) > 1:
                d = rng.choice(dirs[1:])
                d.rename(
                    rng.choice([root, *(x for x in dirs if d not in x.parents and x != d)]) / f"m{rng.randrange(1000)}"
                )
            elif len(dirs) > 1:
                shutil.rmtree(rng.choice(dirs[1:]))
        except (FileNotFoundError, FileExistsError, OSError):
            continue  # a path removed by a previous op: just another random event
        time.sleep(rng.random() * 0.01)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.root
@pytest.mark.timeout(120)
def test_ten_clients_in_their_namespaces_converge_while_their_trees_change(
    tmp_path: Path, namespaces: tuple[str, list[str]]
) -> None:
    srv_ns, client_ns = namespaces
    names = [f"client-{i}" for i in range(10)]
    tokens_file(tmp_path / "tokens", names)
    server = server_proc(tmp_path, 4243, bind="0.0.0.0", netns=srv_ns).start()  # its own namespace
    clients: list[Proc] = []
    try:
        wait_listening(server)
        for i, (name, ns) in enumerate(zip(names, client_ns, strict=True)):
            src = tmp_path / "src" / name
            src.mkdir(parents=True)
            (src / "before-start").write_bytes(os.urandom(5000))  # the scan on start sends it
            clients.append(client_proc(tmp_path, name, f"10.231.{i}.1:4243", netns=ns).start())
        workers = [
            threading.Thread(target=random_ops, args=(tmp_path / "src" / n, random.Random(i), 120))
            for i, n in enumerate(names)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

        def converged() -> bool:
            return all(tree(tmp_path / "src" / n) == tree(tmp_path / "srv" / n) for n in names)

        wait_until(converged, 40, interval=0.5)
        assert all(c.alive() for c in clients) and server.alive()
        assert all(len(tree(tmp_path / "src" / n)) > 5 for n in names)  # the trees are not trivially empty
        assert sorted(p.name for p in (tmp_path / "srv").iterdir()) == sorted([".partial", *names])
        log = server.text()
        assert all(f"{n} logged in from 10.231.{i}.2" in log for i, n in enumerate(names))
    finally:
        for c in clients:
            c.stop()
        server.stop()


# --- kill -9 in the middle of a large upload -----------------------------------------------------------------
def staging_size(tmp: Path, name: str) -> int:
    """Bytes of the uploads in progress for ``name`` on the server (an upload may complete while we look)."""
    total = 0
    partial = tmp / "srv" / ".partial" / name
    for p in partial.iterdir() if partial.is_dir() else ():
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            continue
    return total


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_kill9_of_client_then_server_mid_upload_resumes_and_converges(tmp_path: Path) -> None:
    tokens_file(tmp_path / "tokens", ["pi"])
    src = tmp_path / "src" / "pi"
    (src / "j").mkdir(parents=True)
    big = os.urandom(40_000_000)
    (src / "j" / "big.bin").write_bytes(big)
    (src / "small").write_text("small")
    port = free_port()
    server = server_proc(tmp_path, port).start()
    rate = ("--max-rate", "10000")  # 10 MB/s: the 40 MB upload takes 4 s, time to kill in the middle
    client = client_proc(tmp_path, "pi", f"127.0.0.1:{port}", *rate).start()
    try:
        wait_listening(server)
        wait_until(lambda: staging_size(tmp_path, "pi") > 8_000_000, 20)
        client.kill9()
        first = staging_size(tmp_path, "pi")
        assert first < len(big)
        client = client_proc(tmp_path, "pi", f"127.0.0.1:{port}", *rate).start()
        wait_until(lambda: staging_size(tmp_path, "pi") > first + 8_000_000, 20)
        server.kill9()
        second = staging_size(tmp_path, "pi")
        assert second < len(big)
        server = server_proc(tmp_path, port).start()  # same port: the client reconnects by itself
        wait_until(lambda: tree(src) == tree(tmp_path / "srv" / "pi"), 30, interval=0.2)
        resumed = [
            int(line.split("resuming at byte ")[1].split()[0])
            for line in client.text().splitlines()
            if "resuming" in line
        ]
        assert resumed and resumed[-1] >= first, client.text()  # the second client resumed, not restarted
        assert staging_size(tmp_path, "pi") == 0  # nothing half-done left behind
        assert client.alive() and server.alive()
    finally:
        client.stop()
        server.stop()


# --- hostile clients ---------------------------------------------------------------------------------------------
@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[SyncServer]:
    tokens_file(tmp_path / "tokens", ["alice", "bob"])
    cfg = SyncServerConfig(
        port=0,
        root=str(tmp_path / "srv"),
        tokens_file=str(tmp_path / "tokens"),
        max_file_mb=1,
        max_tree_mb=2,
        max_requests_per_second=50,
        idle_timeout=5,
    )
    server = SyncServer(cfg)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_hostile_clients_are_refused_logged_and_confined(
    inproc: SyncServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "appliance.sync")
    port = inproc.port
    bob = Raw(port)
    assert bob.hello("bob", TOKEN.format("bob"))["ok"] is True
    assert bob.put("keep/me", b"bob's data")["ok"] is True
    outside = tmp_path / "outside"
    outside.mkdir()
    before_outside = tree(tmp_path)

    # wrong tokens, another client's name, unknown names: refused and logged
    for name, token in (("alice", "wrong-token-wrong-token"), ("bob", TOKEN.format("alice")), ("eve", "x" * 20)):
        r = Raw(port)
        assert r.hello(name, token) == {"ok": False, "error": "authentication refused"}
        assert r.closed()
    assert sum("authentication refused" in m for m in caplog.messages) == 3

    # garbage, an endless line, a bad hello: disconnected and logged
    for junk in (b"\x00\xff\xfe garbage\n", b"x" * 10_000, b'{"op":"hello","v":1,"name":"../bob","token":"x"}\n'):
        r = Raw(port)
        r.sock.sendall(junk)
        assert r.closed()
    assert sum("protocol error" in m for m in caplog.messages) >= 3

    # traversal and absolute paths in every operation: refused before any file-system call
    attacks: list[dict[str, Any]] = [
        {"op": "put", "path": "../bob/keep/me", "size": 3},
        {"op": "put", "path": "/tmp/evil", "size": 3},
        {"op": "mkdir", "path": "a/../../outside/x"},
        {"op": "delete", "path": "../bob"},
        {"op": "delete", "path": ".."},
        {"op": "rename", "src": "x", "dst": "../bob/keep/me"},
        {"op": "put", "path": "x", "size": 10_000_000},  # over max_file_mb: the declaration alone is refused
        {"op": "put", "path": "x", "size": -1},
        {"op": "frobnicate"},
    ]
    for attack in attacks:
        alice = Raw(port)
        assert alice.hello("alice", TOKEN.format("alice"))["ok"] is True
        reply = alice.ask(attack)
        assert reply["ok"] is False, attack
        assert alice.closed()

    # symlinks and devices planted in alice's server tree are never followed nor read
    alice_root = tmp_path / "srv" / "alice"
    (alice_root / "link").symlink_to(tmp_path / "srv" / "bob")
    (alice_root / "up").symlink_to(outside)
    os.mkfifo(alice_root / "fifo")
    alice = Raw(port)
    assert alice.hello("alice", TOKEN.format("alice"))["ok"] is True
    assert alice.put("link/keep/me", b"overwrite bob")["ok"] is False
    assert alice.put("up/evil", b"escape")["ok"] is False
    assert alice.ask({"op": "mkdir", "path": "link/new"})["ok"] is False
    assert alice.put("fifo", b"into a fifo")["ok"] is False
    assert alice.ask({"op": "rename", "src": "fifo", "dst": "f2"})["ok"] is False
    listing = alice.ask({"op": "list"})
    files = json.loads(alice.conn.recv_exact(listing["size"]))
    assert files == {"files": {}, "dirs": []}  # the link, the fifo: neither files nor directories
    assert alice.ask({"op": "delete", "path": "link"})["ok"] is True  # removes the link itself, not bob's tree

    # a wrong hash: nothing lands; quotas: refused, connection kept
    assert alice.put("bad", b"data", sha="0" * 64)["ok"] is False
    assert not (alice_root / "bad").exists()
    assert alice.put("a", b"a" * 900_000)["ok"] is True
    assert alice.put("b", b"b" * 900_000)["ok"] is True
    quota = alice.put("c", b"c" * 900_000)
    assert quota["ok"] is False and "quota" in quota["error"]

    # a request flood: cut off
    flood = Raw(port)
    assert flood.hello("alice", TOKEN.format("alice"))["ok"] is True
    sent = 0
    try:
        while sent < 200:
            flood.conn.send({"op": "ping"})
            sent += 1
    except (BrokenPipeError, ConnectionResetError):  # the server may cut the flood before the last ping is out
        pass
    assert sent > 1
    assert flood.closed()
    assert any("requests a second" in m for m in caplog.messages)

    # after all that: bob intact, nothing written outside the trees, the server still serves
    assert (tmp_path / "srv" / "bob" / "keep" / "me").read_bytes() == b"bob's data"
    after = tree(tmp_path)
    changed = {p for p in set(before_outside) | set(after) if before_outside.get(p) != after.get(p)}
    assert all(p in ("srv/alice", "srv/.partial/alice") or p.startswith("srv/alice/") for p in changed), changed
    assert bob.ask({"op": "ping"})["ok"] is True


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_full_disk_mid_upload_is_resumed_once_there_is_room(
    inproc: SyncServer, tmp_path: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's disk fills up in the middle of an upload: the connection ends with the error logged, nothing
    half-written appears in the tree, and once there is room again the upload resumes from what reached the disk.
    Only a fake disk fills up on demand: os.write refuses, past 200 kB, writes to the server's staging files."""
    caplog.set_level(logging.INFO, "appliance.sync")
    room: dict[str, int | None] = {"left": 200_000}
    real_write = os.write
    staging = str(tmp_path / "srv" / ".partial")

    def write(fd: int, block: bytes) -> int:
        left = room["left"]
        if left is not None and os.readlink(f"/proc/self/fd/{fd}").startswith(staging):
            if len(block) > left:
                raise OSError(errno.ENOSPC, "No space left on device")
            room["left"] = left - len(block)
        return real_write(fd, block)

    disk = mocker.patch("appliance.sync.upload.os.write", side_effect=write)
    data = random.Random(5).randbytes(600_000)
    alice = Raw(inproc.port)
    assert alice.hello("alice", TOKEN.format("alice"))["ok"] is True
    assert alice.ask({"op": "put", "path": "big", "size": len(data)})["offset"] == 0
    with contextlib.suppress(OSError):  # the server may close before all of it is sent
        alice.conn.send({"op": "data", "offset": 0}, data)
    assert alice.closed()
    wait_until(lambda: any("No space left on device" in m for m in caplog.messages), 5)
    assert not (tmp_path / "srv" / "alice" / "big").exists()  # nothing half-written in the tree

    room["left"] = None  # room again
    again = Raw(inproc.port)
    assert again.hello("alice", TOKEN.format("alice"))["ok"] is True
    offer = again.ask({"op": "put", "path": "big", "size": len(data)})
    offset = offer["offset"]
    assert 0 < offset <= 200_000 and offer["sha256"] == hashlib.sha256(data[:offset]).hexdigest()
    again.conn.send({"op": "data", "offset": offset}, data[offset:])
    assert again.ask({"op": "commit", "sha256": hashlib.sha256(data).hexdigest()})["ok"] is True
    assert (tmp_path / "srv" / "alice" / "big").read_bytes() == data
    assert disk.call_count > 3


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_new_login_supersedes_the_old_and_a_reset_upload_resumes(inproc: SyncServer, tmp_path: Path) -> None:
    conns = []
    for i in range(12):
        r = Raw(inproc.port)
        name = ("alice", "bob")[i % 2]
        assert r.hello(name, TOKEN.format(name))["ok"] is True
        conns.append(r)
    # a newer login of the same client supersedes the older one (a link that died without a FIN)
    assert conns[-1].ask({"op": "ping"})["ok"] is True and conns[-2].ask({"op": "ping"})["ok"] is True
    assert all(r.closed() for r in conns[:-2])
    half = Raw(inproc.port)
    assert half.hello("alice", TOKEN.format("alice"))["ok"] is True
    half.conn.send({"op": "put", "path": "cut", "size": 500_000})
    assert half.conn.recv()["ok"] is True
    half.conn.send({"op": "data", "offset": 0}, b"z" * 100_000)
    wait_until(lambda: staging_size(tmp_path, "alice") == 100_000, 10)  # the server wrote what it received
    half.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    half.sock.close()  # RST in the middle of an upload
    for r in conns:
        r.sock.close()
    fresh = Raw(inproc.port)
    assert fresh.hello("alice", TOKEN.format("alice"))["ok"] is True
    reply = fresh.ask({"op": "put", "path": "cut", "size": 500_000})
    assert reply["ok"] is True and reply["offset"] == 100_000  # what arrived before the reset is resumable
    assert reply["sha256"] == hashlib.sha256(b"z" * 100_000).hexdigest()
    fresh.conn.send({"op": "data", "offset": 100_000}, b"z" * 400_000)
    assert fresh.ask({"op": "commit", "sha256": hashlib.sha256(b"z" * 500_000).hexdigest()})["ok"] is True
    assert (tmp_path / "srv" / "alice" / "cut").read_bytes() == b"z" * 500_000


# --- TLS ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_tls_from_the_configuration(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    tokens_file(tmp_path / "tokens", ["pi"])
    port = free_port()
    (tmp_path / "server.toml").write_text(
        f'[sync.server]\nport = {port}\nroot = "{tmp_path / "srv"}"\ntokens_file = "{tmp_path / "tokens"}"\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_bytes(os.urandom(100_000))
    (tmp_path / "client.toml").write_text(
        f'[sync]\naddress = "localhost:{port}"\nname = "pi"\ntoken = "{TOKEN.format("pi")}"\n'
        f'directory = "{src}"\ntls = true\nca_file = "{cert}"\n'
    )
    server = Proc(tmp_path / "server.log", "sync-server", "--config", str(tmp_path / "server.toml")).start()
    try:
        wait_listening(server)
        once = subprocess.run(
            [sys.executable, "-m", "appliance", "sync", "--config", str(tmp_path / "client.toml"), "--once"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert once.returncode == 0, once.stderr
        assert tree(src) == tree(tmp_path / "srv" / "pi")
        plain = Raw(port)  # a client speaking plain TCP to the TLS port gets nowhere
        plain.sock.sendall(b'{"op":"hello","v":1,"name":"pi","token":"' + TOKEN.format("pi").encode() + b'"}\n')
        assert plain.closed()
    finally:
        server.stop()


# --- the purpose: a live journal carried off to the server, replayable there ---------------------------------------
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_live_journal_is_mirrored_segment_by_segment_and_replays_from_the_server(tmp_path: Path) -> None:
    from datetime import datetime

    from appliance.journal import Journal, JournalConfig, segment_files
    from appliance.simulator import PARIS, MeterSimulator

    tokens_file(tmp_path / "tokens", ["pi"])
    port = free_port()
    server = server_proc(tmp_path, port).start()
    journal_dir = tmp_path / "src" / "pi"
    journal_dir.mkdir(parents=True)
    client = client_proc(tmp_path, "pi", f"127.0.0.1:{port}").start()
    sim = MeterSimulator(start=datetime(2025, 6, 1, tzinfo=PARIS), mode="standard", phases=3, seed=3)
    frames = 400
    try:
        wait_listening(server)
        wait_until(lambda: "in step" in client.text(), 15)
        j = Journal(JournalConfig(enabled=True, flush_interval=0.05, segment_max_mb=0.05), journal_dir, "standard")
        j.start()
        for f, _ in zip(sim.frames(step=15.0), range(frames), strict=False):
            j.append(f.data, f.at.timestamp())
            time.sleep(0.005)  # ~2 s of writing: each segment grows flush after flush while it is synced
        j.close()
        assert len(segment_files(journal_dir)) == 2  # 100 simulated minutes: two hourly segments
        wait_until(lambda: tree(journal_dir) == tree(tmp_path / "srv" / "pi"), 30, interval=0.2)
        assert "resuming at byte" in client.text()  # a grown segment: only its new flushes crossed
        replayed = subprocess.run(
            [sys.executable, "-m", "appliance", "replay", "--dry-run", str(tmp_path / "srv" / "pi")],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert replayed.returncode == 0 and f"{frames} frame(s) decoded" in replayed.stderr, replayed.stderr
    finally:
        client.stop()
        server.stop()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_moves_out_of_and_into_the_tree_symlinks_and_fifos(inproc: SyncServer, tmp_path: Path) -> None:
    from appliance.sync.client import SyncClient

    src = tmp_path / "src" / "alice"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_bytes(b"f" * 1000)
    (src / "link").symlink_to(tmp_path / "srv")  # never followed, never sent
    os.mkfifo(src / "fifo")  # never opened
    client = SyncClient(src, "127.0.0.1", inproc.port, "alice", TOKEN.format("alice"))
    worker = threading.Thread(target=client.run)
    worker.start()
    mirror = tmp_path / "srv" / "alice"
    try:
        wait_until(lambda: (mirror / "d" / "e" / "f").exists(), 10)
        outside = tmp_path / "outside"
        (src / "d").rename(outside)  # out of the tree: deleted on the server, no longer watched
        wait_until(lambda: not (mirror / "d").exists(), 10)
        (outside / "e" / "later").write_text("not synced")
        (src / "new").write_text("synced")
        wait_until(lambda: (mirror / "new").exists(), 10)
        assert not (mirror / "d").exists() and not any(p.name == "later" for p in mirror.rglob("*"))
        outside.rename(src / "back")  # into the tree: sent with everything below it
        wait_until(lambda: (mirror / "back" / "e" / "later").exists(), 10)
        assert tree(src / "back") == tree(mirror / "back")
        assert sorted(tree(mirror)) == sorted(p for p in tree(src) if p not in ("link", "fifo"))
    finally:
        client.stop.set()
        worker.join(10)
    assert not worker.is_alive()


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_connections_beyond_the_limit_are_told_busy_and_slots_come_back(tmp_path: Path) -> None:
    tokens_file(tmp_path / "tokens", ["pi"])
    cfg = SyncServerConfig(port=0, root=str(tmp_path / "srv"), tokens_file=str(tmp_path / "tokens"), max_connections=2)
    server = SyncServer(cfg)
    server.start()
    try:
        held = [Raw(server.port), Raw(server.port)]
        assert held[0].hello("pi", TOKEN.format("pi"))["ok"] is True
        extra = Raw(server.port)
        assert extra.conn.recv() == {"ok": False, "error": "server busy"}
        for r in held:
            r.sock.close()  # abrupt: no bye

        def logs_in() -> bool:
            try:
                return Raw(server.port).hello("pi", TOKEN.format("pi")).get("ok") is True
            except (OSError, ConnectionError):
                return False  # still busy: told so and closed

        wait_until(logs_in, 10)
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_abandoned_uploads_are_bounded_and_count_against_the_quota(inproc: SyncServer, tmp_path: Path) -> None:
    for i in range(12):  # twelve uploads of 150 kB cut after 100 kB each
        r = Raw(inproc.port)
        assert r.hello("alice", TOKEN.format("alice"))["ok"] is True
        assert r.ask({"op": "put", "path": f"cut{i}", "size": 150_000})["ok"] is True
        r.conn.send({"op": "data", "offset": 0}, b"x" * 100_000)
        wait_until(
            lambda i=i: (
                (tmp_path / "srv" / ".partial" / "alice").is_dir()
                and staging_size(tmp_path, "alice") >= min(i + 1, 9) * 100_000
            ),
            10,
        )
        r.sock.close()
    partial = list((tmp_path / "srv" / ".partial" / "alice").iterdir())
    assert len(partial) <= 9  # the eight most recent besides the current one
    r = Raw(inproc.port)
    assert r.hello("alice", TOKEN.format("alice"))["ok"] is True
    ok = r.ask({"op": "put", "path": "big", "size": 999_000})  # quota 2 MB: 0.9 MB pending + 1 MB fits
    assert ok["ok"] is True
    r.conn.send({"op": "data", "offset": 0}, b"y" * 999_000)
    assert r.ask({"op": "commit", "sha256": hashlib.sha256(b"y" * 999_000).hexdigest()})["ok"] is True
    refused = r.ask({"op": "put", "path": "big2", "size": 999_000})  # 1 MB stored + 0.9 MB pending + 1 MB
    assert refused["ok"] is False and "quota" in refused["error"]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_command_line_errors_are_clear(inproc: SyncServer, tmp_path: Path) -> None:
    def teleinfo(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "appliance", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    tok = str(tmp_path / "alice.token")
    common = ("--token-file", tok, "--directory", str(tmp_path / "d"), "--once")
    cases = [
        (("sync", "--server", "127.0.0.1:1", "--name", "bad.name", *common), 2, "invalid client name"),
        (("sync", "--server", "nohost", "--name", "alice", *common), 2, "HOST:PORT"),
        (("sync", "--server", f"127.0.0.1:{free_port()}", "--name", "alice", *common), 1, "cannot connect"),
        (("sync", "--server", f"127.0.0.1:{inproc.port}", "--name", "bob", *common), 2, "authentication refused"),
        (
            ("sync-server", "--port", "0", "--tokens", str(tmp_path / "none"), "--root", str(tmp_path)),
            2,
            "cannot start",
        ),
    ]
    for args, status, text in cases:
        r = teleinfo(*args)
        assert r.returncode == status and text in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
