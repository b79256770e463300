"""``teleinfo sync``: mirror a directory (the raw journal by default) to a ``teleinfo sync-server``, live.

Settings come from ``[sync]`` (``docs/SYNC.md``); the flags override them.  The token is read from the
configuration (``{ env = ... }``/``{ file = ... }`` work), ``--token-file`` or ``$TELEINFO_SYNC_TOKEN``, never
from the command line, where any local user could read it in ``ps``.

Exit status: 0 stopped (or, with ``--once``, in step), 1 the server could not be reached or the connection
failed during ``--once``, 2 bad configuration or refused credentials.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from appliance.commands import config_parent


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sync",
        parents=[config_parent("[sync] section")],
        help="mirror a directory (the raw journal) to a sync-server, live (inotify)",
        description=(
            "Send the directory's changes (creations, writes, renames, deletions) to a teleinfo sync-server as "
            "they happen; on every connection first bring the server's copy in step (a full scan). Interrupted "
            "uploads resume. Exit status: 0 stopped or in step (--once), 1 server unreachable, 2 bad "
            "configuration or refused token."
        ),
    )
    p.add_argument("--server", metavar="HOST:PORT", help="the sync-server (default: sync.address)")
    p.add_argument("--name", help="this client's name on the server (default: sync.name, else the host name)")
    p.add_argument("--token-file", metavar="PATH", help="file holding the token (default: sync.token)")
    p.add_argument("--directory", metavar="DIR", help="directory to mirror (default: sync.directory, else the journal)")
    p.add_argument("--max-rate", type=float, default=0.0, metavar="KB/S", help="upload at most this fast (0: no limit)")
    p.add_argument("--once", action="store_true", help="bring the server in step once, then exit")
    p.set_defaults(func=run)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"server must be HOST:PORT (got {text!r})")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    import ssl

    from appliance.commands import load_config_or_report
    from appliance.journal import journal_directory
    from appliance.logs import setup_logging
    from appliance.sync.client import SyncClient
    from appliance.sync.protocol import ProtocolError, check_name

    err = sys.stderr
    cfg = load_config_or_report("sync", args.config)
    if cfg is None:
        return 2
    setup_logging(cfg.logging.level)
    s = cfg.sync
    try:
        host, port = _address(args.server or s.address)
    except ValueError as e:
        print(f"teleinfo sync: {e}; set sync.address or --server", file=err)
        return 2
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            print(f"teleinfo sync: cannot read the token: {e}", file=err)
            return 2
    elif s.token is not None:
        token = s.token.get()
    else:
        token = os.environ.get("TELEINFO_SYNC_TOKEN", "")
    if not token:
        print("teleinfo sync: no token (sync.token, --token-file or $TELEINFO_SYNC_TOKEN)", file=err)
        return 2
    name = args.name or s.name or socket.gethostname().split(".")[0]
    try:
        check_name(name)
    except ProtocolError as e:
        print(f"teleinfo sync: {e}; set sync.name or --name", file=err)
        return 2
    directory = Path(args.directory or s.directory or journal_directory(cfg.journal, cfg.state.directory))
    if args.max_rate < 0:
        print("teleinfo sync: --max-rate must not be negative", file=err)
        return 2
    tls = None
    if s.tls:
        tls = ssl.create_default_context(cafile=s.ca_file or None)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = SyncClient(
        directory,
        host,
        port,
        name,
        token,
        tls=tls,
        max_backoff=s.reconnect_max_backoff,
        max_rate=args.max_rate * 1000,
        stop=stop,
    )
    return client.run(once=args.once)
