"""``teleinfo update``: install signed update bundles with automatic rollback, and show what is installed.

Subcommands (``docs/UPDATES.md``; root only, except ``status``):

* ``install BUNDLE|URL``: verify, install beside the running release, switch, keep it only if healthy.
* ``status``: the releases on disk, the running one, the last attempts.
* ``auto``: what ``teleinfo-update.service`` runs (at boot and hourly): a bundle dropped on the boot partition,
  then, if ``[update]`` is enabled, due and inside its window, the configured channel.
* ``guard``: the recovery the service's ``ExecStartPre=`` runs (a killed install finished or rolled back).
* ``wait-quiet``: wait (bounded) until no output holds spooled frames (apt's hook before upgrading packages).
* ``migrate-config``, ``seed``: used by the installer (on the new release) and by the image build.

Exit status: 0 done (or nothing to do), 1 refused or rolled back (the running release is untouched or back), 2 bad
usage or configuration, 3 another update is running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "update",
        help="install a signed update bundle (rolled back by itself if unhealthy), show the releases",
        description="Install signed update bundles beside the running release, switch atomically, keep the new "
        "release only once the service reports READY and health up, roll back by itself otherwise. See "
        "image/README.md (Updating).",
    )
    p.add_argument("--root", metavar="DIR", help="act on the system under DIR (default: /; tests)")
    p.add_argument("--config", metavar="PATH", help="configuration file (default: ROOT/etc/teleinfo/teleinfo.toml)")
    s = p.add_subparsers(dest="update_command", metavar="SUBCOMMAND", required=True)
    i = s.add_parser("install", help="install a bundle from a file or an https URL")
    i.add_argument("source", metavar="BUNDLE|URL")
    i.add_argument("--allow-downgrade", action="store_true", help="accept a bundle older than the running release")
    st = s.add_parser("status", help="the releases on disk and the last attempts")
    st.add_argument("--json", action="store_true")
    s.add_parser("auto", help="the boot partition's bundle, then the configured channel when due")
    s.add_parser("guard", help="finish or roll back an interrupted update (what the unit runs before a start)")
    w = s.add_parser("wait-quiet", help="wait until no output holds spooled frames")
    w.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds (default 300)")
    m = s.add_parser("migrate-config", help=argparse.SUPPRESS)
    m.add_argument("--from-schema", type=int, required=True)
    m.add_argument("--output", type=Path, required=True)
    seed = s.add_parser("seed", help=argparse.SUPPRESS)
    seed.add_argument("--name", required=True)
    seed.add_argument("--source", default="image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.update.guard import Paths

    paths = Paths.from_env(args.root)
    handler = {
        "install": _install,
        "status": _status,
        "auto": _auto,
        "guard": _guard,
        "wait-quiet": _wait_quiet,
        "migrate-config": _migrate_config,
        "seed": _seed,
    }[args.update_command]
    try:
        return int(handler(args, paths))
    except PermissionError as e:  # not root: a clear refusal, not a traceback
        print(f"teleinfo update: {e.strerror}: {e.filename} (run it as root)", file=sys.stderr)
        return 2


def _say_factory(paths: Any) -> Any:
    """Messages to standard error (the journal under systemd) and, run by hand on the device, to syslog too:
    the journal always says why an update was refused or rolled back."""
    from appliance.systemd import under_systemd

    syslog = None
    if str(paths.root) == "/" and not under_systemd() and Path("/dev/log").exists():
        import syslog as syslog_module

        syslog_module.openlog("teleinfo-update")
        syslog = syslog_module

    def say(message: str) -> None:
        print(f"teleinfo update: {message}", file=sys.stderr, flush=True)
        if syslog is not None:
            for line in message.splitlines():
                syslog.syslog(line)

    return say


def _config(args: argparse.Namespace, paths: Any) -> Any:
    from appliance.commands import load_config_or_report

    return load_config_or_report("update", args.config or str(paths.config))


def _updater(args: argparse.Namespace, paths: Any, cfg: Any) -> Any:
    from appliance.update.control import Systemctl
    from appliance.update.install import Updater

    return Updater(paths, cfg, Systemctl(), say=_say_factory(paths))


def _install(args: argparse.Namespace, paths: Any) -> int:
    cfg = _config(args, paths)
    if cfg is None:
        return 2
    return install_source(_updater(args, paths, cfg), args.source, allow_downgrade=args.allow_downgrade)


def install_source(updater: Any, source: str, *, allow_downgrade: bool = False, channel: str | None = None) -> int:
    """Install from a file or a URL; the exit status (0, 1 refused/rolled back, 3 busy)."""
    from appliance.update.fetch import DownloadError, download, redact
    from appliance.update.guard import LockBusy
    from appliance.update.install import RolledBack, UpdateError

    u = updater.cfg.update
    try:
        if source.startswith(("https://", "http://")):
            updater.say(f"downloading {redact(source)}")
            path = download(
                source,
                updater.paths.downloads,
                connect_timeout=u.connect_timeout,
                timeout=u.download_timeout,
                max_bytes=int(u.max_mb * 1e6),
                ca_file=u.ca_file,
            )
            origin, downloaded = redact(source), True
        else:
            path, origin, downloaded = Path(source), source, False
        try:
            outcome = updater.install(path, source=origin, allow_downgrade=allow_downgrade, channel=channel)
        finally:
            if downloaded:  # its space is given back, whatever happened
                path.unlink(missing_ok=True)
    except LockBusy as e:
        updater.say(f"refused: {e}")
        return 3
    except RolledBack as e:
        updater.say(f"ROLLED BACK: {e}")
        return 1
    except (UpdateError, DownloadError) as e:
        updater.say(f"refused, nothing changed: {e}")
        return 1
    updater.say(outcome.message)
    return 0


def _status(args: argparse.Namespace, paths: Any) -> int:
    from appliance.update.install import status
    from appliance.update.reboot import pending_reboot

    doc = status(paths)
    doc["reboot_reasons"] = pending_reboot(paths.root)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"running release: {doc['current'] or 'none (this system predates updates)'}")
    for r in doc["releases"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["installed"])) if r["installed"] else "?"
        state = r["role"] or ("" if r["complete"] else "incomplete")
        print(f"  {r['name']:<28} {r['version'] or '?':<12} installed {when}  {state}")
    tx = doc["transaction"]
    if tx:
        print(f"last attempt: {tx.get('to')} from {tx.get('source', '?')}: {tx.get('phase')}" +
              (f" - {tx['reason']}" if tx.get("reason") else ""))  # fmt: skip
    for h in doc["history"][-5:]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(h.get("ended") or h.get("started") or 0))
        print(f"  {when} {h.get('to')}: {h.get('phase')} - {h.get('reason', '')}")
    for reason in doc["reboot_reasons"]:
        print(f"reboot pending: {reason}")
    return 0


def _guard(_args: argparse.Namespace, paths: Any) -> int:
    from appliance.update.guard import guard

    for line in guard(paths):
        print(f"teleinfo update guard: {line}", file=sys.stderr)
    return 0


def _wait_quiet(args: argparse.Namespace, paths: Any) -> int:
    """0 once no output holds spooled frames (or the service is unreachable), 1 at the timeout."""
    from appliance.update.control import health_address, probe, spooled

    cfg = _config(args, paths)
    if cfg is None:
        return 2
    address = health_address(cfg.health)
    deadline = time.monotonic() + args.timeout
    while address is not None:
        doc = probe(*address)
        if not isinstance(doc, dict) or not spooled(doc):
            break
        if time.monotonic() > deadline:
            held = sum(spooled(doc).values())
            print(f"teleinfo update wait-quiet: {held} frames still spooled after {args.timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(1.0)
    return 0


def _migrate_config(args: argparse.Namespace, paths: Any) -> int:
    """Run by the installer on the *new* release: migrate the running configuration to this release's schema
    and validate it; the migrated file is written only if something changed.  Exit 2 with every reason."""
    import tomllib

    from appliance.config import ConfigError, parse_config
    from appliance.update.migrate import CONFIG_SCHEMA, MigrationError, dump_toml, migrate

    source = Path(args.config or paths.config)
    try:
        text = source.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
        changes = migrate(doc, args.from_schema)
        new_text = dump_toml(doc) if changes else text
        parse_config(new_text, f"{source} (migrated to schema {CONFIG_SCHEMA})" if changes else str(source))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        print(f"cannot read {source}: {e}", file=sys.stderr)
        return 2
    except MigrationError as e:
        print("\n".join(e.reasons), file=sys.stderr)
        return 2
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if changes:
        args.output.write_text(new_text, encoding="utf-8")
        print("; ".join(changes))
    return 0


def _seed(args: argparse.Namespace, paths: Any) -> int:
    from appliance.update.install import UpdateError, seed_release

    try:
        record = seed_release(paths, args.name, args.source)
    except UpdateError as e:
        print(f"teleinfo update seed: {e}", file=sys.stderr)
        return 2
    print(f"release {record['name']} ({record['version']}) is current")
    return 0


def _auto(args: argparse.Namespace, paths: Any) -> int:
    """Boot-partition bundles (always), then the channel (when enabled, due and in the window)."""
    from appliance.update.fetch import DownloadError, boot_bundles, read_channel, redact
    from appliance.update.guard import link_name
    from appliance.update.install import compare_versions, release_record

    cfg = _config(args, paths)
    if cfg is None:
        return 2
    updater = _updater(args, paths, cfg)
    status = 0
    for bundle in boot_bundles(paths.boot):
        updater.say(f"bundle found on the boot partition: {bundle.name}")
        status = install_source(updater, str(bundle))
        _mark_boot_bundle(bundle, status, paths, updater.messages[-1] if updater.messages else "")
    u = cfg.update
    if not u.enabled or u.url is None:
        return status
    stamp = paths.state / "last-check"
    try:
        last = float(stamp.read_text())
    except (OSError, ValueError):
        last = 0.0
    now = time.time()
    if now - last < u.interval_hours * 3600 or not in_window(u.window, time.localtime(now)):
        return status
    import platform

    url = u.url.get()
    try:
        entry = read_channel(url, u.channel, platform.machine(), connect_timeout=u.connect_timeout, timeout=60.0,
                             ca_file=u.ca_file)  # fmt: skip
    except DownloadError as e:
        updater.say(f"channel {u.channel} not read: {e}")
        return 1
    paths.state.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{now:.0f}\n")
    current = link_name(paths.current)
    running = (release_record(paths, current) or {}).get("version", "0") if current else "0"
    if compare_versions(entry.version, running) <= 0:
        updater.say(f"channel {u.channel}: {entry.version}, running {running}: nothing to do")
        return status
    updater.say(f"channel {u.channel}: {entry.version} available ({redact(entry.url)})")
    return install_source(updater, entry.url, channel=u.channel)


def in_window(window: str, now: time.struct_time) -> bool:
    """Whether local time ``now`` is inside ``"HH:MM-HH:MM"`` (which may cross midnight); "" is always."""
    if not window:
        return True
    start, end = ((int(h) * 60 + int(m)) for h, m in (part.split(":") for part in window.split("-")))
    minute = now.tm_hour * 60 + now.tm_min
    return start <= minute < end if start <= end else minute >= start or minute < end


def _mark_boot_bundle(bundle: Path, status: int, paths: Any, outcome: str) -> None:
    """A processed bundle is renamed (never picked up twice) and the outcome written beside it, for whoever put
    the card back in a computer."""
    suffix = {0: "installed", 3: "busy"}.get(status, "refused")
    if status == 3:
        return  # tried again at the next run
    try:
        bundle.rename(bundle.with_name(f"{bundle.name}.{suffix}"))
        with (paths.boot / "teleinfo-update.log").open("a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {bundle.name}: {suffix}: {outcome}\n")
    except OSError as e:
        print(f"teleinfo update: cannot mark {bundle}: {e}", file=sys.stderr)
