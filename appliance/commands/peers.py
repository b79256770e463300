"""``teleinfo peers enroll``: pin an SSH peer's host key in the project's known_hosts, after the operator checked it.

This is the only way a key gets trusted: the self-checks refuse unknown and changed keys at run time.  The key is
shown as OpenSSH's SHA256 fingerprint, to compare with ``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`` run
on the peer's own console, and recorded only after the operator types ``yes`` (or with ``--yes`` in scripts that
obtained the fingerprint another trusted way).  A key different from the recorded one is refused unless
``--replace`` is given: that is exactly what a man-in-the-middle looks like.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.commands import config_parent

OK, REFUSED, FAILED = 0, 1, 2


def register(sub: Any) -> None:
    p = sub.add_parser(
        "peers",
        help="manage the SSH peers of the self-checks (enroll their host keys)",
        description="Manage the SSH peers used by the self-checks.",
    )
    psub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    e = psub.add_parser(
        "enroll",
        parents=[config_parent("[checks.peers]")],
        help="show a peer's host key fingerprint and record it after confirmation",
        description=(
            "Connect to HOST[:PORT] (or the configured peer of that name), show its SSH host key fingerprint and "
            "record the key in the project's known_hosts (checks.peers.known_hosts, default: known_hosts in the "
            "state directory) once you confirm it matches the peer's own (ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub on the peer). Exit status 0 when recorded (or already), 1 when "
            "refused (not confirmed, or a different key is already recorded and --replace was not given), 2 when "
            "the peer cannot be reached."
        ),
    )
    e.add_argument("peer", metavar="HOST[:PORT]", help="address, host name or configured peer name; [v6]:port")
    e.add_argument("--yes", action="store_true", help="record without asking (scripts)")
    e.add_argument("--replace", action="store_true", help="replace a different key already recorded")
    e.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to connect (default: 10)")
    e.set_defaults(func=enroll)


def parse_peer(text: str, default_port: int = 22) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port); ValueError if malformed."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not port:
            raise ValueError(f"malformed peer {text!r}")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    number = int(port) if port else default_port
    if not 1 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


def _save(hostkeys: Any, path: Path) -> None:
    """Write the file atomically (a crash never leaves a truncated trust store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    hostkeys.save(str(tmp))
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def enroll(args: argparse.Namespace) -> int:
    import paramiko

    from appliance.checks.peers.check import PeerError, fetch_host_key, fingerprint, host_key_name, known_hosts_path
    from appliance.commands import load_config_or_report

    cfg = load_config_or_report("peers enroll", args.config)
    if cfg is None:
        return FAILED
    named = {p.name: p for p in cfg.checks.peers.hosts}
    if args.peer in named:
        host, port = named[args.peer].host, named[args.peer].port
    else:
        try:
            host, port = parse_peer(args.peer)
        except ValueError as err:
            print(f"teleinfo peers enroll: {err}", file=sys.stderr)
            return FAILED
    store = known_hosts_path(cfg)
    try:
        hostkeys = paramiko.HostKeys(str(store)) if store.exists() else paramiko.HostKeys()
    except (OSError, paramiko.SSHException) as err:
        print(f"cannot read {store}: {err}", file=sys.stderr)
        return FAILED
    try:
        key = fetch_host_key(host, port, args.timeout)
    except PeerError as err:
        print(f"teleinfo peers enroll: {err}", file=sys.stderr)
        return FAILED
    name = host_key_name(host, port)
    print(f"{name} host key: {key.get_name()} {fingerprint(key)}")
    known: Mapping[str, paramiko.PKey] = hostkeys.lookup(name) or {}
    if known.get(key.get_name()) == key:
        print(f"already enrolled in {store}")
        return OK
    if known:
        old = ", ".join(f"{t} {fingerprint(k)}" for t, k in known.items())
        print(f"WARNING: {store} already holds a DIFFERENT key for {name}: {old}")
        if not args.replace:
            print("refused: if the peer was reinstalled and you checked the new key, run again with --replace")
            return REFUSED
    kind = next((k for k in ("ed25519", "ecdsa", "rsa") if k in key.get_name()), "*")
    print(f"Check it on the peer: ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub")
    if not args.yes:
        try:
            answer = input("Record this key? Type yes to confirm: ")
        except EOFError:
            answer = ""
        if answer.strip().lower() != "yes":
            print("not recorded")
            return REFUSED
    if known:
        del hostkeys[name]
    hostkeys.add(name, key.get_name(), key)
    try:
        _save(hostkeys, store)
    except OSError as err:
        print(f"cannot write {store}: {err.strerror or err}", file=sys.stderr)
        return FAILED
    print(f"recorded in {store}")
    return OK
