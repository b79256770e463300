"""``teleinfo sync-server``: receive the trees of every ``teleinfo sync`` client (run once, on a NAS say).

Settings come from ``[sync.server]`` (``docs/SYNC.md``); the flags override them.  SIGTERM or Ctrl-C stops.
Exit status: 0 stopped, 2 bad configuration, unreadable tokens file, or the port cannot be opened.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import replace
from typing import Any

from appliance.commands import config_parent


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sync-server",
        parents=[config_parent("[sync.server] section")],
        help="receive the directories of teleinfo sync clients",
        description=(
            "Store each client's tree under <root>/<client name>/, for clients that log in with their token "
            "(tokens file: one 'name token' line each, re-read when it changes). Exit status: 0 stopped, 2 bad "
            "configuration or port unavailable."
        ),
    )
    p.add_argument("--bind", help="address to listen on (default: sync.server.bind)")
    p.add_argument("--port", type=_port, help="TCP port (default: sync.server.port; 0: any free port)")
    p.add_argument("--root", metavar="DIR", help="where the trees are stored (default: sync.server.root)")
    p.add_argument("--tokens", metavar="PATH", help="tokens file (default: sync.server.tokens_file)")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (got {value})")
    return value


def run(args: argparse.Namespace) -> int:
    from appliance.commands import load_config_or_report
    from appliance.logs import setup_logging
    from appliance.sync.server import SyncServer

    err = sys.stderr
    cfg = load_config_or_report("sync-server", args.config)
    if cfg is None:
        return 2
    setup_logging(cfg.logging.level)
    overrides = {
        k: v
        for k, v in (("bind", args.bind), ("port", args.port), ("root", args.root), ("tokens_file", args.tokens))
        if v is not None
    }
    server = SyncServer(replace(cfg.sync.server, **overrides))
    try:
        server.start()
    except (OSError, ValueError) as e:
        print(f"teleinfo sync-server: cannot start: {e}", file=err)
        return 2
    print(f"teleinfo sync-server: listening on port {server.port}", file=err, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0
