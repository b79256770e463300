"""The ``teleinfo`` command: argparse subcommands, one module each under :mod:`appliance.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning the exit status.  Heavy imports happen inside ``func``, so
``teleinfo --help`` stays fast on a Pi Zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from appliance import __version__

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (
    "run",
    "check_config",
    "status",
    "doctor",
    "decode",
    "simulate",
    "listen",
    "check",
    "peers",
    "replay",
    "sync",
    "sync_server",
    "update",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the tests and to render the README's usage)."""
    parser = argparse.ArgumentParser(
        prog="teleinfo",
        description="Linky TIC telemetry appliance: decode the meter's teleinformation and publish it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"appliance.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `teleinfo decode big.bin | head`: the reader went away; that is not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
