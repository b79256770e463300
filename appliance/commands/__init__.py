"""One module per ``teleinfo`` subcommand; see :mod:`appliance.cli`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from appliance.schema import Config


def load_config_or_report(command: str, config: str | None) -> Config | None:
    """The configuration a one-shot command runs with, or None after printing every error to stderr.

    Every command resolves the file the same way as ``teleinfo run`` (``--config``, ``$TELEINFO_CONFIG``, the
    default path, which may be absent) and words a refusal the same way; the caller exits with status 2.
    """
    from appliance.config import ConfigError, config_path, load_config

    path, required = config_path(config)
    try:
        return load_config(path, required=required)
    except ConfigError as e:
        print(f"teleinfo {command}: invalid configuration.\n{e}", file=sys.stderr)
        return None


def config_parent(what: str = "") -> argparse.ArgumentParser:
    """The ``--config`` option every command that reads the configuration shares (pass as ``parents=[...]``).

    ``what`` names the section the command uses, for its help line.
    """
    import argparse

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file"
        + (f" ({what})" if what else "")
        + " (default: $TELEINFO_CONFIG, else /etc/teleinfo/teleinfo.toml)",
    )
    return parent
