"""``teleinfo run``: the long-running service (what the systemd unit starts)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from appliance.commands import config_parent
from appliance.schema import Config

if TYPE_CHECKING:
    import argparse


@dataclass(frozen=True)
class RunOptions:
    """What ``teleinfo run`` was asked, as its parser defines it (the defaults are what an absent option gives).

    The unit runs a bare ``teleinfo run``: :data:`UNIT_OPTIONS`, which :func:`appliance.cli.main` uses without
    building a parser (why: :mod:`appliance.cli`). A test checks that the parser gives exactly these defaults."""

    config: str | None = None
    simulate: bool = False
    sim_mode: str | None = None
    sim_phases: int | None = None
    sim_contract: str | None = None
    sim_producer: bool = False
    sim_errors: float | None = None
    no_view: bool = False

    @classmethod
    def parsed(cls, args: argparse.Namespace) -> RunOptions:
        """The options of a parsed ``run`` command line."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


#: ``teleinfo run`` with no option: what systemd/teleinfo.service starts.
UNIT_OPTIONS = RunOptions()


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        parents=[config_parent()],
        help="run the service: read the meter, publish every frame",
        description=(
            "Read the meter (or the built-in simulator), decode every frame and publish it to the enabled "
            "outputs. In a terminal it shows a live view of the latest readings; under systemd it logs to the "
            "journal and speaks the sd_notify protocol (READY, WATCHDOG, STATUS). SIGHUP reloads the "
            "configuration; SIGTERM or Ctrl-C stops cleanly."
        ),
    )
    g = p.add_argument_group("simulator", "run on the built-in meter simulator: no hardware, no server needed")
    g.add_argument(
        "--simulate",
        action="store_true",
        help="read the built-in simulator instead of the serial port; multicast stays on 127.0.0.1 "
        "unless an interface is configured",
    )
    g.add_argument("--sim-mode", choices=("historique", "standard"), help="TIC mode of the simulated meter")
    g.add_argument("--sim-phases", type=int, choices=(1, 3), help="1 or 3 phases")
    g.add_argument("--sim-contract", choices=("BASE", "HCHP", "TEMPO", "EJP"), help="tariff contract")
    g.add_argument("--sim-producer", action="store_true", help="the simulated meter also injects (standard)")
    g.add_argument("--sim-errors", type=float, metavar="RATE", help="fraction of frames corrupted on purpose")
    p.add_argument("--no-view", action="store_true", help="plain log lines even in a terminal")
    p.set_defaults(func=lambda args: run(RunOptions.parsed(args)))


def _with_simulation(cfg: Config, args: RunOptions) -> Config:
    from appliance.service import simulated

    sim = cfg.source.simulator
    changes: dict[str, Any] = {
        "mode": args.sim_mode,
        "phases": args.sim_phases,
        "contract": args.sim_contract,
        "producer": True if args.sim_producer else None,
        "errors": args.sim_errors,
    }
    sim = replace(sim, **{k: v for k, v in changes.items() if v is not None})
    cfg = replace(cfg, source=replace(cfg.source, simulator=sim))
    return simulated(cfg)


def load(args: RunOptions) -> Config:
    """The configuration ``run`` uses (also on SIGHUP): the file, then the command-line overrides."""
    from appliance.config import config_path, load_config

    path, required = config_path(args.config)
    cfg = load_config(path, required=required)
    if args.simulate:
        cfg = _with_simulation(cfg, args)
    return cfg


def run(args: RunOptions) -> int:
    from appliance.config import ConfigError, config_path
    from appliance.console import LiveView
    from appliance.logs import setup_logging
    from appliance.service import Service
    from appliance.stats import Stats
    from appliance.systemd import under_systemd

    if args.sim_errors is not None and not 0 <= args.sim_errors <= 1:
        print("teleinfo run: --sim-errors must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        cfg = load(args)
    except ConfigError as e:
        print(f"teleinfo run: invalid configuration, not starting.\n{e}", file=sys.stderr)
        return 2
    stats = Stats()
    view = None
    if sys.stdout.isatty() and not under_systemd() and not args.no_view:
        view = LiveView(stats, sys.stdout)
        setup_logging(cfg.logging.level, view.handler)
    else:
        setup_logging(cfg.logging.level)
    log = logging.getLogger("appliance")
    path, _ = config_path(args.config)
    log.info(
        "starting: configuration %s%s, source %s",
        path,
        "" if path.exists() else " (absent: defaults)",
        cfg.source.kind if cfg.source.kind == "simulator" else cfg.source.device,
    )
    service = Service(cfg, reload=lambda: load(args), view=view, stats=stats)
    service.install_signal_handlers()
    try:
        return service.run()
    finally:
        if view is not None:
            view.close()
            print(service.summary())
