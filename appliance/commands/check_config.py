"""``teleinfo check-config`` and ``teleinfo print-example-config``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from appliance.commands import config_parent


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check-config",
        parents=[config_parent()],
        help="validate the configuration file",
        description="Validate the configuration exactly as 'teleinfo run' does, and list every problem with its "
        "key path. Exit status 0 when valid, 2 when not.",
    )
    p.set_defaults(func=check)
    e = sub.add_parser(
        "print-example-config",
        help="print a fully commented example configuration",
        description="Print a configuration holding every key at its default value, with what each one does.",
    )
    e.set_defaults(func=example)


def check(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, config_path, load_config

    path, _ = config_path(args.config)
    try:
        load_config(path, required=True)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{path}: valid")
    return 0


def example(_args: argparse.Namespace) -> int:
    from appliance.config import render_example

    sys.stdout.write(render_example())
    return 0
