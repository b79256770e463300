"""``teleinfo check``: run the network self-checks once, for people (a table) and scripts (JSON, exit status)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from appliance.commands import config_parent

CHOICES = {"public-ip": ["public_ip"], "ports": ["ports"], "peers": ["peers"], "all": []}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        parents=[config_parent("[checks]")],
        help="run the network self-checks once (public IP, open ports, SSH peers)",
        description=(
            "Run the self-checks of the [checks] section now and print what they found. Exit status 0 when every "
            "check passed, 1 when one found a problem (an unexpected open port, a port seen differently from a "
            "peer), 2 when one could not run (no provider answered, nmap missing, a peer refused or unreachable) "
            "or the configuration is invalid. The public IP check calls the configured providers over the "
            "network; results are not written to InfluxDB (the service does that on its schedule)."
        ),
    )
    p.add_argument("which", nargs="?", choices=list(CHOICES), default="all", help="which check (default: all)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.checks.results import ERROR, CheckResult, exit_status
    from appliance.checks.scheduler import CHECKS, CheckRunner
    from appliance.commands import load_config_or_report
    from appliance.config import config_path

    cfg = load_config_or_report("check", args.config)
    if cfg is None:
        return 2
    path, _ = config_path(args.config)
    runner = CheckRunner(cfg, persist=False)
    names = CHOICES[args.which] or [n for n in CHECKS if runner.configured(n)]
    results: list[CheckResult] = []
    for name in names:
        if runner.configured(name):
            results.extend(runner.run(name))
        else:
            results.append(CheckResult(name, "-", ERROR, f"nothing to check: see [checks.{name}] in {path}"))
    if not names:
        results.append(CheckResult("all", "-", ERROR, f"no check is configured: see the [checks] section of {path}"))
    status = exit_status(results)
    if args.format == "json":
        doc = {"status": ("ok", "problem", "error")[status], "results": [r.to_dict() for r in results]}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(_table(results))
    return status


def _table(results: list[Any]) -> str:
    rows = [("CHECK", "TARGET", "STATUS", "MESSAGE")] + [(r.check, r.target, r.status, r.message) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}" for row in rows)
