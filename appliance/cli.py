"""The ``teleinfo`` command: argparse subcommands, one module each under :mod:`appliance.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning the exit status.  Heavy imports happen inside ``func``, so
``teleinfo --help`` stays fast on a Pi Zero.  When the command line names a command, only that command's module
is imported (:func:`command_module`): the service (``teleinfo run``) must not carry ``doctor``'s ctypes or the
update tools in its memory for months, nor ``teleinfo decode`` pay for them at every start.

The unit starts the service as a bare ``teleinfo run`` (its configuration path comes from ``$TELEINFO_CONFIG``):
that command line has nothing to parse, so it runs without argparse at all
(:data:`appliance.commands.run.UNIT_OPTIONS`). Parsing would import argparse, gettext, locale and shutil (with
bz2 and lzma), about 1.4 MiB that the service would then carry for months on a 512 MiB Pi Zero 2 W.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from appliance import __version__

if TYPE_CHECKING:
    import argparse

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


#: Commands whose name is not their module's (``print-example-config`` is registered by ``check_config``).
_ALIASES = {"print-example-config": "check_config"}


def command_module(argv: Sequence[str]) -> str | None:
    """The module of the command ``argv`` names (its first word that is not an option), or None."""
    word = next((a for a in argv if not a.startswith("-")), None)
    if word is None:
        return None
    name = _ALIASES.get(word, word.replace("-", "_"))
    return name if name in COMMANDS else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full argument parser (also used by the tests and to render the README's usage); with ``only``, the
    parser of that command module alone (what :func:`main` uses once the command is known)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="teleinfo",
        description="Linky TIC telemetry appliance: decode the meter's teleinformation and publish it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"appliance.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if words == ["run"]:  # the unit's command line: nothing to parse
            from appliance.commands.run import UNIT_OPTIONS, run

            return run(UNIT_OPTIONS)
        args = build_parser(command_module(words)).parse_args(words)
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `teleinfo decode big.bin | head`: the reader went away; that is not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
