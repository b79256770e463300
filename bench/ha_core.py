"""Our MQTT discovery against a real Home Assistant Core, in a network namespace that has only loopback.

CI's Python (3.11) cannot run Home Assistant Core, so ``tests/ha_rules.py`` encodes HA's rules and the test suite
applies them; this script is where those rules meet the real thing.  For each HA version it starts, inside a fresh
network namespace with only ``lo`` (``unshare --net``: nothing can reach anything but 127.0.0.0/8), a Debian
mosquitto, eight ``teleinfo run --simulate`` services (historique and standard, mono and tri, BASE / HCHP / TEMPO /
EJP, a producer), each with its own client id and HA discovery on, and Home Assistant Core with a minimal
configuration (``http`` on 127.0.0.1, ``api``, ``websocket_api``, ``recorder``, ``energy``; an MQTT config entry
written into ``.storage``; a long-lived token written into ``.storage/auth``).  Then it reads back what HA made,
through HA's websocket API, and checks:

* entities per meter: every component of our discovery messages is in HA's entity registry, nothing else is;
* values: every state HA holds equals what ``tests/ha_rules.py``'s model derives from the messages we sent, and the
  numbers, dates and codes equal the values our state messages carry (the services are frozen with SIGSTOP while
  HA's states are read, so both sides saw the same last message);
* HA's log: no warning or error about our discovery or states;
* the issue's points: Tempo colours today/tomorrow in both modes, DPM/FPM as timestamps, readable periods with the
  code as an attribute, no relay a meter never closed, entity ids as ``docs/NETWORK.md`` documents them, the price
  entity in currency/kWh, and the Energy dashboard's validation (``energy/validate``) clean with our indexes and
  price in its preferences;
* availability: each meter's entities ``unavailable`` after SIGTERM of its service, with the time measured.

Setup, once, outside the measured run (one virtualenv per HA version, outside the repository; downloads from the
Python package registry happen only here):

    sudo .venv/bin/python bench/ha_core.py setup            # /work/ha-venvs/ha-<version>, Python 3.13
    sudo .venv/bin/python bench/ha_core.py run              # prints a table per version; exit 1 on any failure

The run itself starts HA with ``--skip-pip``: it downloads nothing, and could not (no route but loopback).
``<ha python> bench/ha_core.py ws ...`` is the websocket client the run uses (HA's own aiohttp).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VERSIONS = ("2025.4.4", "2026.2.3")
VENVS = Path("/work/ha-venvs")
PYTHON = Path("/root/.pyenv/versions/3.13.0/bin/python3.13")
NETNS_MARK = "TELEINFO_HA_BENCH_NETNS"
#: Integrations the configuration names, next to those HA always sets up (bootstrap.py).
CONFIGURED = ("http", "api", "websocket_api", "recorder", "energy", "mqtt")
HA_LOGGERS_OURS = (
    "homeassistant.components.mqtt",
    "homeassistant.components.sensor",
    "homeassistant.components.binary_sensor",
    "homeassistant.components.energy",
    "homeassistant.helpers.entity",
    "homeassistant.helpers.template",
    "homeassistant.helpers.entity_registry",
    "homeassistant.helpers.device_registry",
)


@dataclass(frozen=True)
class Meter:
    """One simulated meter: ``teleinfo run --simulate`` with these options and its own client id and seed."""

    name: str
    mode: str
    phases: int
    contract: str
    producer: bool
    seed: int
    #: The simulated meter's clock at start (local time), when "now" would not show what it is here for:
    #: "peak" = 20:30 on the first winter weekday with a mobile peak (DPM/FPM, Tempo colour of tomorrow
    #: announced); "night" = 23:00 (off-peak: relay 1 closed).
    start: str = ""
    #: Fraction of frames damaged on purpose (``--sim-errors``): groups lost to a bad checksum leave frames
    #: without PTEC, DEMAIN, HHPHC, an index...: what HA must get no warning about.
    errors: float = 0.0


METERS = (
    Meter("hist-mono-base", "historique", 1, "BASE", False, 11),
    Meter("hist-mono-hchp", "historique", 1, "HCHP", False, 12, errors=0.2),
    Meter("hist-tri-tempo", "historique", 3, "TEMPO", False, 13, "peak", errors=0.2),
    Meter("hist-mono-ejp", "historique", 1, "EJP", False, 14),
    Meter("std-mono-base", "standard", 1, "BASE", False, 15),
    Meter("std-tri-hchp", "standard", 3, "HCHP", False, 16, "night", errors=0.2),
    Meter("std-mono-tempo", "standard", 1, "TEMPO", False, 17, "peak"),
    Meter("std-tri-base-prod", "standard", 3, "BASE", True, 18),
)


def start_of(meter: Meter) -> datetime | None:
    """The local date-time a meter's simulator starts at (see :attr:`Meter.start`), None for now."""
    from datetime import date, timedelta

    from appliance.simulator import PARIS, tariffs

    if not meter.start:
        return None
    day = date(2026, 1, 5)
    while meter.start == "peak" and not (day.weekday() < 5 and tariffs.tempo_colour(meter.seed, day) >= 2):
        day += timedelta(days=1)
    hour, minute = (20, 30) if meter.start == "peak" else (23, 0)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=PARIS)


# --- setup ---------------------------------------------------------------------------------------------------
_REQUIREMENTS_SCRIPT = r"""
import json, sys
from pathlib import Path
import homeassistant, homeassistant.bootstrap as b
names = set(sys.argv[1].split(","))
for attr in ("CORE_INTEGRATIONS", "LOGGING_AND_HTTP_DEPS_INTEGRATIONS", "FRONTEND_INTEGRATIONS",
             "RECORDER_INTEGRATIONS", "DEFAULT_INTEGRATIONS"):
    names |= set(getattr(b, attr, ()))
root = Path(homeassistant.__file__).parent / "components"
seen, reqs, todo = set(), set(), list(names)
while todo:
    d = todo.pop()
    if d in seen or not (root / d / "manifest.json").exists():
        continue
    seen.add(d)
    m = json.loads((root / d / "manifest.json").read_text())
    reqs |= set(m.get("requirements", []))
    todo += m.get("dependencies", []) + m.get("after_dependencies", [])
print("\n".join(sorted(reqs)))
"""


def setup(args: argparse.Namespace) -> int:
    """One virtualenv per version with ``homeassistant==<v>`` and the requirements of every integration the run
    sets up (their manifests, dependencies followed), so the run needs ``--skip-pip`` and nothing else."""
    for version in args.versions:
        venv = args.venvs / f"ha-{version}"
        py = venv / "bin" / "python"
        if not py.exists():
            subprocess.run([str(args.python), "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-U", "pip"], check=True)
        if subprocess.run([*pip, f"homeassistant=={version}"]).returncode != 0:
            # Newer HA releases ask for a newer 3.13.x than the one here: installed anyway, and the run starts
            # it past its interpreter check (said in the results table).
            print(f"homeassistant=={version}: retrying with --ignore-requires-python", file=sys.stderr)
            subprocess.run([*pip, "--ignore-requires-python", f"homeassistant=={version}"], check=True)
        out = subprocess.run(
            [str(py), "-c", _REQUIREMENTS_SCRIPT, ",".join(CONFIGURED)], check=True, capture_output=True, text=True
        ).stdout.split()
        constraints = venv / "constraints.txt"
        frozen = subprocess.run([str(py), "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
        constraints.write_text(frozen, encoding="utf-8")  # HA's own pins stay as they are
        print(f"{version}: {len(out)} integration requirements")
        subprocess.run([*pip, "--ignore-requires-python", "-c", str(constraints), *out], check=True)
    return 0


# --- the websocket client (runs with HA's Python and its aiohttp) -------------------------------------------
def ws(args: argparse.Namespace) -> int:
    import asyncio

    import aiohttp

    async def main() -> int:
        async with aiohttp.ClientSession() as session, session.ws_connect(args.url, max_msg_size=0) as conn:
            await conn.receive_json()  # auth_required
            await conn.send_json({"type": "auth", "access_token": args.token})
            ok = await conn.receive_json()
            if ok.get("type") != "auth_ok":
                print(json.dumps({"error": ok}))
                return 1
            ident = 0

            async def call(msg: dict[str, Any]) -> Any:
                nonlocal ident
                ident += 1
                await conn.send_json({"id": ident, **msg})
                while True:
                    answer = await conn.receive_json()
                    if answer.get("id") == ident and answer.get("type") == "result":
                        return answer

            if args.action == "ping":
                cfg = await call({"type": "get_config"})
                print(json.dumps({"state": cfg["result"]["state"], "version": cfg["result"]["version"]}))
                return 0
            if args.action == "query":
                out: dict[str, Any] = {}
                if args.energy_prefs:
                    out["save_prefs"] = await call(
                        {"type": "energy/save_prefs", **json.loads(Path(args.energy_prefs).read_text())}
                    )
                out["states"] = (await call({"type": "get_states"}))["result"]
                out["registry"] = (await call({"type": "config/entity_registry/list"}))["result"]
                if args.energy_prefs:
                    out["validate"] = await call({"type": "energy/validate"})
                Path(args.out).write_text(json.dumps(out), encoding="utf-8")
                return 0
            # watch: the time each entity becomes unavailable
            wanted = set(args.entities.split(","))
            await call({"type": "subscribe_events", "event_type": "state_changed"})
            print("ready", flush=True)
            seen: dict[str, float] = {}
            deadline = time.monotonic() + args.timeout
            while wanted - set(seen) and time.monotonic() < deadline:
                try:
                    msg = await asyncio.wait_for(conn.receive_json(), max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                data = msg.get("event", {}).get("data", {})
                eid, new = data.get("entity_id"), data.get("new_state") or {}
                if eid in wanted and eid not in seen and new.get("state") == "unavailable":
                    seen[eid] = time.time()
            print(json.dumps(seen), flush=True)
            return 0

    return asyncio.run(main())


# --- the run -----------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def long_lived_token(refresh_id: str, jwt_key: str) -> str:
    """The JWT HA issues for a long-lived access token: HS256 over ``iss`` (the refresh token's id)."""
    now = int(time.time())
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"iss": refresh_id, "iat": now, "exp": now + 10 * 365 * 86400}).encode())
    sig = hmac.new(jwt_key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _store(key: str, data: dict[str, Any], version: int = 1, minor: int = 1) -> str:
    return json.dumps({"version": version, "minor_version": minor, "key": key, "data": data}, indent=1)


def ha_config(directory: Path, http_port: int, broker_port: int) -> str:
    """A minimal HA configuration (no default_config): what MQTT discovery, states and energy need; returns the
    websocket API's token."""
    storage = directory / ".storage"
    storage.mkdir(parents=True)
    (directory / "configuration.yaml").write_text(
        "homeassistant:\n  name: teleinfo bench\n  latitude: 48.8566\n  longitude: 2.3522\n  elevation: 35\n"
        "  unit_system: metric\n  time_zone: Europe/Paris\n  currency: EUR\n  country: FR\n"
        f"  internal_url: http://127.0.0.1:{http_port}\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {http_port}\n"
        f"api:\nwebsocket_api:\nenergy:\nrecorder:\n  db_url: sqlite:///{directory}/home-assistant_v2.db\n"
        "  commit_interval: 1\nlogger:\n  default: warning\n",
        encoding="utf-8",
    )
    entry = {
        "entry_id": uuid.uuid4().hex,
        "version": 1,
        "minor_version": 1,
        "domain": "mqtt",
        "title": "127.0.0.1",
        "data": {"broker": "127.0.0.1", "port": broker_port, "discovery": True, "discovery_prefix": "homeassistant"},
        "options": {},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
    }
    (storage / "core.config_entries").write_text(_store("core.config_entries", {"entries": [entry]}))
    user_id, refresh_id, jwt_key = uuid.uuid4().hex, uuid.uuid4().hex, secrets.token_hex(64)
    now = datetime.now(UTC).isoformat()
    auth = {
        "users": [
            {
                "id": user_id,
                "group_ids": ["system-admin"],
                "is_owner": True,
                "is_active": True,
                "name": "bench",
                "system_generated": False,
                "local_only": False,
            }
        ],
        "groups": [
            {"id": "system-admin", "name": "Administrators"},
            {"id": "system-users", "name": "Users"},
            {"id": "system-read-only", "name": "Read Only"},
        ],
        "credentials": [],
        "refresh_tokens": [
            {
                "id": refresh_id,
                "user_id": user_id,
                "client_id": None,
                "client_name": "teleinfo bench",
                "client_icon": None,
                "token_type": "long_lived_access_token",
                "created_at": now,
                "access_token_expiration": 10 * 365 * 86400.0,
                "token": secrets.token_hex(64),
                "jwt_key": jwt_key,
                "last_used_at": None,
                "last_used_ip": None,
                "expire_at": None,
                "credential_id": None,
                "version": None,
            }
        ],
    }
    (storage / "auth").write_text(_store("auth", auth))
    (storage / "onboarding").write_text(
        _store("onboarding", {"done": ["user", "core_config", "analytics", "integration"]}, version=4)
    )
    return long_lived_token(refresh_id, jwt_key)


def meter_config(directory: Path, meter: Meter, broker_port: int) -> Path:
    text = (
        f"[source.simulator]\nseed = {meter.seed}\n"
        "[outputs.multicast]\nenabled = false\n"
        f'[outputs.mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'client_id = "bench-{meter.name}"\n'
        "[health]\nenabled = false\n[control]\nenabled = false\n[web]\nenabled = false\n"
        f'[state]\ndirectory = "{directory / meter.name}"\n'
    )
    path = directory / f"{meter.name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


#: ``teleinfo run`` with the simulator's start instant moved (only the source's ``datetime.now``; the service's
#: own clock is the machine's).
_SHIFTED = (
    "import sys, datetime as d; import appliance.sources.simulator.source as s; start = d.datetime.fromisoformat("
    "sys.argv.pop(1))\n"
    "class D(d.datetime):\n    @classmethod\n    def now(cls, tz=None): return start.astimezone(tz)\n"
    "s.datetime = D; from appliance.cli import main; raise SystemExit(main())"
)


def meter_argv(config: Path, meter: Meter) -> list[str]:
    start = start_of(meter)
    head = [sys.executable, "-c", _SHIFTED, start.isoformat()] if start else [sys.executable, "-m", "appliance"]
    argv = [*head, "run", "--simulate", "--config", str(config), "--no-view"]
    argv += ["--sim-mode", meter.mode, "--sim-phases", str(meter.phases), "--sim-contract", meter.contract]
    argv += ["--sim-errors", str(meter.errors)] if meter.errors else []
    return argv + (["--sim-producer"] if meter.producer else [])


class Recorder:
    """Everything published under ``teleinfo/#`` and ``homeassistant/#``, in order (paho, from the repo's venv)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-recorder")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("teleinfo/#", 1), ("homeassistant/#", 1)])
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload)))

    def snapshot(self) -> list[tuple[float, str, bytes]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Published:
    """What one meter published: its address, discovery messages and state messages."""

    address: str
    client: str
    discovery: dict[str, dict[str, Any]] = field(default_factory=dict)  # topic -> last payload
    states: list[dict[str, Any]] = field(default_factory=list)
    tariffs: list[dict[str, Any]] = field(default_factory=list)

    def components(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for payload in self.discovery.values():
            for cid, c in payload["cmps"].items():
                out[c["unique_id"]] = {**payload, **c, "cid": cid}
        return out


def published(messages: list[tuple[float, str, bytes]]) -> dict[str, Published]:
    """Meter address -> what it published, from the recorded messages (the client is found through the
    availability topic of its discovery message)."""
    meters: dict[str, Published] = {}
    for _t, topic, raw in messages:
        parts = topic.split("/")
        if topic.startswith("homeassistant/device/linky_") and raw:
            payload = json.loads(raw)
            address = payload["dev"]["sn"]
            client = payload["availability_topic"].split("/")[-2]
            meters.setdefault(address, Published(address, client)).discovery[topic] = payload
    for _t, topic, raw in messages:
        parts = topic.split("/")
        if len(parts) == 3 and parts[0] == "teleinfo" and parts[1] in meters and raw:
            if parts[2] == "state":
                meters[parts[1]].states.append(json.loads(raw))
            elif parts[2] == "tariff":
                meters[parts[1]].tariffs.append(json.loads(raw))
    return meters


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Result:
    version: str
    note: str = ""
    checks: list[Check] = field(default_factory=list)
    per_meter: list[tuple[str, str, int, int, int, int, int]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def _same(ha: str, expected: str, device_class: str | None) -> bool:
    if ha == expected:
        return True
    if device_class == "timestamp":
        try:
            return datetime.fromisoformat(ha) == datetime.fromisoformat(expected)
        except ValueError:
            return False
    try:
        a, b = float(ha), float(expected)
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _label_of(meter: Published, cid: str) -> str | None:
    from appliance.lineproto import field_key

    for state in meter.states:
        for label in state["values"]:
            if field_key(label) == cid:
                return str(label)
    return None


def compare(meter: Published, ha: dict[str, dict[str, Any]], eid_of: dict[str, str]) -> tuple[int, int, list[str]]:
    """(values compared, values equal, differences) for one meter: HA's state of each entity against
    tests/ha_rules.py's model fed every message we sent, and against the raw values our messages carry."""
    from tests.ha_rules import Entity, Warned

    compared = equal = 0
    diffs: list[str] = []
    for uid, c in sorted(meter.components().items()):
        eid = eid_of.get(uid)
        if eid is None or eid not in ha:
            continue
        state = ha[eid]
        model = Entity(c["cid"], c)
        stream = meter.tariffs if c["cid"].startswith("tariff_") else meter.states
        try:
            for payload in stream:
                model.receive(payload)
        except Warned as e:
            diffs.append(f"{eid}: our model warns: {e}")
        compared += 1
        dc = c.get("device_class")
        ok = _same(state["state"], model.state, dc)
        for key, value in model.attributes.items():
            if state["attributes"].get(key) != value:
                ok = False
                diffs.append(f"{eid}: attribute {key}={state['attributes'].get(key)!r}, we sent {value!r}")
        # The raw value our state message carries, independently of the template.
        label = None if c["cid"].startswith(("tariff_", "tempo_", "relais_")) else _label_of(meter, c["cid"])
        last = [s for s in meter.states if label in s["values"]] if label else []
        if label and last and state["state"] not in ("unknown", "unavailable"):
            raw = last[-1]["values"][label]
            if dc == "timestamp":
                sent = last[-1].get("timestamps", {}).get(label)
                ok = ok and sent is not None and datetime.fromisoformat(state["state"]) == datetime.fromisoformat(sent)
            elif isinstance(raw, int) and "unit_of_measurement" in c:
                scale = 1000 if "* 1000" in c["value_template"] else 1
                ok = ok and _same(state["state"], str(raw * scale), None)
            elif "code" in state["attributes"]:
                ok = ok and state["attributes"]["code"] == raw
            elif isinstance(raw, str) and dc is None:
                ok = ok and state["state"] == " ".join(raw.split())
        if ok:
            equal += 1
        else:
            diffs.append(f"{eid}: HA {state['state']!r}, ours {model.state!r}")
    return compared, equal, diffs


def log_findings(log: str, addresses: list[str]) -> tuple[list[str], list[str]]:
    """(warnings/errors about our discovery or states, other warnings/errors) in HA's log."""
    ours: list[str] = []
    other: list[str] = []
    for line in log.splitlines():
        if not any(f" {lvl} " in line[:40] for lvl in ("WARNING", "ERROR", "CRITICAL")):
            continue
        mine = any(f"[{name}" in line for name in HA_LOGGERS_OURS) or any(
            s in line for s in ("linky", "teleinfo", "Ignoring invalid option", "template", *addresses)
        )
        (ours if mine else other).append(line)
    return ours, other


class HA:
    """Home Assistant Core in its virtualenv, started with --skip-pip, stopped by its own process id."""

    def __init__(self, venv: Path, config: Path, http_port: int, token: str) -> None:
        self.py = venv / "bin" / "python"
        self.config = config
        self.url = f"ws://127.0.0.1:{http_port}/api/websocket"
        self.token = token
        self.log_path = config / "home-assistant.log"
        required = subprocess.run(
            [str(self.py), "-c", "import homeassistant.const as c; print('.'.join(map(str, c.REQUIRED_PYTHON_VER)))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        here = subprocess.run(
            [str(self.py), "-c", "import platform; print(platform.python_version())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.bypass = tuple(map(int, here.split("."))) < tuple(map(int, required.split(".")))
        self.note = f"Python {here}" + (f" (HA asks >= {required}: its start-up check bypassed)" if self.bypass else "")
        argv = ["--config", str(config), "--skip-pip", "--log-file", str(self.log_path), "--log-no-color"]
        if self.bypass:
            launcher = "import sys, homeassistant.__main__ as m; m.validate_python = lambda: None; sys.exit(m.main())"
            cmd = [str(self.py), "-c", launcher, *argv]
        else:
            cmd = [str(self.py), "-m", "homeassistant", *argv]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def ws(self, *args: str, timeout: float = 60) -> str:
        cmd = [str(self.py), str(Path(__file__)), "ws", "--url", self.url, "--token", self.token, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout

    def wait_running(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"HA exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                answer = json.loads(self.ws("ping", timeout=20))
                if answer.get("state") == "RUNNING":
                    return str(answer["version"])
            except (subprocess.SubprocessError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"HA not running after {timeout} s:\n{self.log()[-3000:]}")

    def query(self, directory: Path, energy_prefs: dict[str, Any] | None) -> dict[str, Any]:
        out = directory / "query.json"
        args = ["query", "--out", str(out)]
        if energy_prefs is not None:
            prefs = directory / "energy_prefs.json"
            prefs.write_text(json.dumps(energy_prefs), encoding="utf-8")
            args += ["--energy-prefs", str(prefs)]
        self.ws(*args)
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result

    def log(self) -> str:
        """The whole log, the run before a restart included (HA rolls the previous one over to ``.log.1``)."""
        paths = (self.log_path.with_name(self.log_path.name + ".1"), self.log_path)
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def energy_prefs(meters: dict[str, Published], eid_of: dict[str, str]) -> dict[str, Any]:
    """One grid source: each meter's consumption indexes bought at its current-price entity, a producer's
    injection index sold."""
    flow_from: list[dict[str, Any]] = []
    flow_to: list[dict[str, Any]] = []
    for m in meters.values():
        price = eid_of.get(f"{m.address}_tariff_price")
        for uid, c in m.components().items():
            eid = eid_of.get(uid)
            if eid is None or c.get("device_class") != "energy" or c["cid"].startswith("tariff_"):
                continue
            cid = c["cid"]
            if cid == "eait":
                flow_to.append(
                    {"stat_energy_to": eid, "stat_compensation": None, "entity_energy_price": None,
                     "number_energy_price": None}
                )  # fmt: skip
            elif cid == "east" or not cid.startswith(("ea", "er")):
                flow_from.append(
                    {"stat_energy_from": eid, "stat_cost": None, "entity_energy_price": price,
                     "number_energy_price": None}
                )  # fmt: skip
    grid = {"type": "grid", "flow_from": flow_from, "flow_to": flow_to, "cost_adjustment_day": 0.0}
    return {"energy_sources": [grid], "device_consumption": []}


def _issues(validation: dict[str, Any]) -> list[str]:
    out: list[str] = []
    result = validation.get("result") or {}
    groups = [*result.get("energy_sources", []), *result.get("device_consumption", [])]
    for group in groups:
        out += [f"{i['type']}: {i.get('affected_entities')}" for i in group]
    return out


def _clean_env() -> dict[str, str]:
    drop = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM", NETNS_MARK)
    return {k: v for k, v in os.environ.items() if k not in drop}


def _wait_discovered(ha: HA, recorder: Recorder, directory: Path, timeout: float) -> dict[str, Published]:
    """Until every meter sent both discovery messages (its own and its tariff's) and HA's registry holds every
    component of them, unchanged over two polls."""
    deadline = time.monotonic() + timeout
    previous: object = None
    while True:
        meters = published(recorder.snapshot())
        registry = {e["unique_id"] for e in ha.query(directory, None)["registry"] if e.get("platform") == "mqtt"}
        wanted = {uid for m in meters.values() for uid in m.components()}
        complete = len(meters) == len(METERS) and all(len(m.discovery) == 2 for m in meters.values())
        now = (sorted(wanted), sorted(registry))
        if complete and wanted <= registry and now == previous:
            return meters
        if time.monotonic() > deadline:
            return meters
        previous = now
        time.sleep(5)


def run_version(version: str, args: argparse.Namespace) -> Result:
    from tests.mosquitto import Mosquitto
    from tests.util import free_port

    res = Result(version)
    venv = args.venvs / f"ha-{version}"
    if not (venv / "bin" / "python").exists():
        res.add("installed", False, f"{venv} missing: run `bench/ha_core.py setup` first")
        return res
    with tempfile.TemporaryDirectory(prefix=f"ha-bench-{version}-") as tmp:
        d = Path(tmp)
        broker = Mosquitto(d / "mosquitto").start()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ha: HA | None = None
        recorder: Recorder | None = None
        try:
            http_port = free_port()
            token = ha_config(d / "ha", http_port, broker.port)
            recorder = Recorder(broker.port)
            t0 = time.monotonic()
            ha = HA(venv, d / "ha", http_port, token)
            res.note = ha.note
            running = ha.wait_running(args.start_timeout)
            res.add("HA Core running", running == version, f"{running} after {time.monotonic() - t0:.0f} s")
            for m in METERS:
                cfg = meter_config(d, m, broker.port)
                with open(d / f"{m.name}.log", "wb") as log:
                    procs[m.name] = subprocess.Popen(
                        meter_argv(cfg, m),
                        cwd=REPO,
                        env=_clean_env(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,
                    )
            time.sleep(args.settle)
            meters = _wait_discovered(ha, recorder, d, args.discovery_timeout)
            # Freeze the services: HA and our recorder then hold the same last message of each meter.
            for p in procs.values():
                p.send_signal(signal.SIGSTOP)
            time.sleep(3)
            meters = published(recorder.snapshot())
            answer = ha.query(d, None)
            for p in procs.values():
                p.send_signal(signal.SIGCONT)
            eid_of = {e["unique_id"]: e["entity_id"] for e in answer["registry"] if e.get("platform") == "mqtt"}
            check_all(res, meters, answer, eid_of)
            energy_check(res, ha, d, energy_prefs(meters, eid_of), args.statistics_timeout)
            before = len(ha.log())
            negative_control(res, ha, recorder)
            after = len(ha.log())
            ha.stop()
            ha = HA(venv, d / "ha", http_port, token)
            restart_check(res, ha, d, eid_of, args.start_timeout)
            lwt(res, ha, procs, meters, eid_of)
            log = ha.log()
            ours, other = log_findings(log[:before] + log[after:], list(meters))  # the control's lines aside
            res.add("HA log: our warnings/errors", not ours, f"{len(ours)} ({len(other)} others, not about us)")
            for line in ours[:20]:
                print(f"  [{version}] {line[:300]}")
            if args.show_other_log:
                for line in other[:40]:
                    print(f"  [{version}] (other) {line[:300]}")
        except Exception as e:  # the table says what broke
            res.add("run", False, f"{type(e).__name__}: {e}"[:2000])
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    p.wait(10)
            if recorder is not None:
                recorder.close()
            if ha is not None:
                ha.stop()
                if args.keep:
                    keep = Path(args.keep) / version
                    shutil.rmtree(keep, ignore_errors=True)
                    shutil.copytree(d, keep, ignore=shutil.ignore_patterns("*.db*"))
            broker.stop()
    return res


def check_all(res: Result, meters: dict[str, Published], answer: dict[str, Any], eid_of: dict[str, str]) -> None:
    states = {s["entity_id"]: s for s in answer["states"]}
    registry = [e for e in answer["registry"] if e.get("platform") == "mqtt"]
    by_client = {f"bench-{m.name}": m for m in METERS}
    total = total_cmp = total_eq = 0
    all_diffs: list[str] = []
    id_wrong: list[str] = []
    tempo_bad: list[str] = []
    stamps: list[str] = []
    stamps_bad: list[str] = []
    readable: list[str] = []
    readable_bad: list[str] = []
    relay_bad: list[str] = []
    price_bad: list[str] = []
    missing_meters = [m.name for m in METERS if f"bench-{m.name}" not in {p.client for p in meters.values()}]
    res.add("8 meters discovered", not missing_meters, f"missing: {missing_meters}" if missing_meters else "all 8")
    for address, pub in sorted(meters.items(), key=lambda kv: kv[1].client):
        meter = by_client.get(pub.client)
        comps = pub.components()
        mine = {e["unique_id"]: e for e in registry if e["unique_id"].startswith(f"{address}_")}
        absent = sorted(set(comps) - set(mine))
        extra = sorted(set(mine) - set(comps))
        if absent or extra:
            all_diffs.append(f"{address}: not in HA {absent}; in HA but not sent {extra}")
        compared, equal, diffs = compare(pub, states, eid_of)
        all_diffs += diffs
        total += len(mine)
        total_cmp += compared
        total_eq += equal
        name = meter.name if meter else pub.client
        contract = f"{meter.contract}{' +prod' if meter and meter.producer else ''}" if meter else "?"
        tariff = sum(1 for u in mine if u.startswith(f"{address}_tariff_"))
        res.per_meter.append((name, contract, len(comps), len(mine) - tariff, tariff, compared, equal))
        for uid, c in comps.items():
            entry = mine.get(uid)
            if entry is None:
                continue
            eid = entry["entity_id"]
            if eid != c.get("default_entity_id"):
                id_wrong.append(f"{eid} (documented {c.get('default_entity_id')})")
            st = states.get(eid, {"state": "absent", "attributes": {}})
            cid = c["cid"]
            if cid.startswith("tempo_"):
                if st["state"] not in c.get("options", []) and not (
                    cid == "tempo_tomorrow" and st["state"] == "unknown"
                ):
                    tempo_bad.append(f"{eid}={st['state']!r}")
            if cid[:3] in ("dpm", "fpm"):
                stamps.append(eid)
                ok = st["attributes"].get("device_class") == "timestamp" and st["state"] != "0"
                try:
                    datetime.fromisoformat(st["state"])
                except ValueError:
                    ok = ok and st["state"] == "unknown"
                if not ok:
                    stamps_bad.append(f"{eid}={st['state']!r}")
            if "code" in st["attributes"]:
                readable.append(eid)
                if st["state"] == st["attributes"]["code"] or st["state"] not in c.get("options", [st["state"]]):
                    readable_bad.append(f"{eid}={st['state']!r} code {st['attributes']['code']!r}")
            if cid == "tariff_price":
                attrs = st["attributes"]
                if attrs.get("unit_of_measurement") != "EUR/kWh" or attrs.get("state_class") != "measurement":
                    price_bad.append(f"{eid}: {attrs.get('unit_of_measurement')} {attrs.get('state_class')}")
                try:
                    float(st["state"])
                except ValueError:
                    price_bad.append(f"{eid}={st['state']!r}")
        if meter is not None and meter.contract == "TEMPO":
            have = {c["cid"] for c in comps.values()}
            if not {"tempo_today", "tempo_tomorrow"} <= have:
                tempo_bad.append(f"{name}: no Tempo colour entities")
        closed = {
            n
            for s in pub.states
            if isinstance(r := s["values"].get("RELAIS"), int)
            for n in range(1, 9)
            if r >> (n - 1) & 1
        }
        relays = {int(c["cid"][7:]) for c in comps.values() if c["cid"].startswith("relais_")}
        in_ha = {int(e["unique_id"].rsplit("_", 1)[1]) for e in mine.values() if "_relais_" in e["unique_id"]}
        if relays != closed or in_ha != closed:
            relay_bad.append(f"{name}: closed {sorted(closed)}, sent {sorted(relays)}, in HA {sorted(in_ha)}")
        elif closed:
            readable.append(f"{name} relays {sorted(closed)}")
    res.add("entities per meter", not [x for x in all_diffs if "not in HA" in x], f"{total} entities in HA")
    lacking = 0
    labels: Counter[str] = Counter()
    for pub in meters.values():
        steady = set.intersection(*(set(s["values"]) for s in pub.states[-5:])) if pub.states else set()
        for state in pub.states:
            labels.update(steady - set(state["values"]))
            lacking += bool(steady - set(state["values"]))
    res.add(
        "frames lacking a label (--sim-errors)",
        lacking > 0,
        f"{lacking} state messages without a label the meter sends: {', '.join(sorted(labels))}",
    )
    res.add("values equal", total_cmp > 0 and total_cmp == total_eq, f"{total_eq}/{total_cmp} equal")
    for line in all_diffs[:30]:
        print(f"  [{res.version}] {line}")
    res.add(
        "entity ids as documented", not id_wrong, f"{len(id_wrong)} differ" + (f": {id_wrong[:3]}" if id_wrong else "")
    )
    tempo_n = sum(1 for m in meters.values() for c in m.components().values() if c["cid"].startswith("tempo_"))
    res.add("Tempo today/tomorrow entities", not tempo_bad and tempo_n >= 4, f"{tempo_n} entities; {tempo_bad[:3]}")
    res.add("DPM/FPM timestamps", bool(stamps) and not stamps_bad, f"{len(stamps)} entities; bad {stamps_bad[:3]}")
    res.add(
        "readable periods, code attribute", bool(readable) and not readable_bad, f"{len(readable)}; {readable_bad[:3]}"
    )
    res.add("no unused relay", not relay_bad, "; ".join(relay_bad) or "relays = those seen closed")
    res.add("price entity EUR/kWh", not price_bad, "; ".join(price_bad[:3]) or "unit and state class right")


#: Discovery messages HA must complain about, to show that the log check sees what it looks for: an enum whose
#: template renders ``unknown`` (the issue's "Ignoring invalid option"), a timestamp sensor given ``0`` (what
#: DPM/FPM used to send), and, on its own device message, the ``reactive_energy`` device class (refused by HA
#: before 2025.6).
_CONTROL = {
    "dev": {"ids": ["bench_control"], "name": "bench control"},
    "o": {"name": "ha_core.py control"},
    "state_topic": "bench/control/state",
    "cmps": {
        "enum": {
            "p": "sensor",
            "unique_id": "bench_control_enum",
            "device_class": "enum",
            "options": ["A", "B"],
            "value_template": "{{ value_json.get('x', 'unknown') }}",
        },
        "stamp": {
            "p": "sensor",
            "unique_id": "bench_control_stamp",
            "device_class": "timestamp",
            "value_template": "{{ 0 }}",
        },
    },
}
_CONTROL_VARH = {
    "dev": {"ids": ["bench_control_varh"], "name": "bench control varh"},
    "o": {"name": "ha_core.py control"},
    "state_topic": "bench/control/state",
    "cmps": {
        "varh": {
            "p": "sensor",
            "unique_id": "bench_control_varh",
            "device_class": "reactive_energy",
            "unit_of_measurement": "varh",
            "state_class": "total_increasing",
            "value_template": "{{ value_json.y }}",
        }
    },
}


def negative_control(res: Result, ha: HA, recorder: Recorder) -> None:
    """Publish :data:`_CONTROL`, a state for it, and check HA's log shows the warnings the log check looks for."""
    mark = len(ha.log())
    topics = ("homeassistant/device/bench_control/config", "homeassistant/device/bench_control_varh/config")
    for topic, payload in zip(topics, (_CONTROL, _CONTROL_VARH), strict=True):
        recorder.client.publish(topic, json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    time.sleep(3)
    recorder.client.publish("bench/control/state", json.dumps({"y": 1}), qos=1).wait_for_publish(5)
    time.sleep(3)
    for topic in topics:
        recorder.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    time.sleep(2)
    caught, _ = log_findings(ha.log()[mark:], [])
    text = "\n".join(caught)
    invalid_option = "invalid option" in text.lower()
    stamp = "'0'" in text or "Invalid state message" in text
    varh = "reactive_energy" in text
    res.add(
        "negative control: log check sees",
        invalid_option and stamp,
        f"invalid option {'caught' if invalid_option else 'MISSED'}, timestamp 0 {'caught' if stamp else 'MISSED'}; "
        f"reactive_energy {'refused (logged)' if varh else 'accepted'} by this version",
    )


def restart_check(res: Result, ha: HA, directory: Path, eid_of: dict[str, str], timeout: float) -> None:
    """HA restarted while the meters run: the retained discovery and our answer to its birth message bring every
    entity back, under the same id, none duplicated, each with a state within a minute."""
    t0 = time.monotonic()
    ha.wait_running(timeout)
    running = time.monotonic()
    ours = set(eid_of.values())
    waiting: set[str] = ours
    same = False
    while time.monotonic() - running < 60:
        answer = ha.query(directory, None)
        again = {e["unique_id"]: e["entity_id"] for e in answer["registry"] if e.get("platform") == "mqtt"}
        same = again == eid_of
        states = {s["entity_id"]: s["state"] for s in answer["states"]}
        waiting = {e for e in ours if states.get(e, "unavailable") == "unavailable"}
        if same and not waiting:
            break
        time.sleep(1)
    res.add(
        "HA restarted: entities back",
        same and not waiting,
        f"{len(ours) - len(waiting)}/{len(ours)} available {time.monotonic() - running:.0f} s after HA ran again "
        f"({running - t0:.0f} s start), ids {'unchanged' if same else 'CHANGED'}",
    )


def energy_check(res: Result, ha: HA, directory: Path, prefs: dict[str, Any], timeout: float) -> None:
    """Our indexes and price entities in the Energy dashboard's preferences, then ``energy/validate`` until HA's
    first long-term statistics compile (every 5 minutes) has run: before it, every index is "statistics not
    defined" whatever it is."""
    print(f"[{res.version}] energy/validate: waiting for HA's 5-minute statistics compile (up to {timeout:.0f} s)")
    deadline = time.monotonic() + timeout
    while True:
        answer = ha.query(directory, prefs)
        saved, validation = answer.get("save_prefs", {}), answer.get("validate", {})
        issues = _issues(validation)
        waiting = any(i.startswith("statistics_not_defined") for i in issues)
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(15)
    flows = sum(len(s.get(k, [])) for s in prefs["energy_sources"] for k in ("flow_from", "flow_to"))
    res.add(
        "energy/validate clean",
        bool(saved.get("success")) and bool(validation.get("success")) and not issues,
        f"{flows} flows, each meter's price entity; issues {issues[:4] or 'none'}"
        + (f" {saved.get('error')}" if saved.get("error") else ""),
    )


def lwt(
    res: Result, ha: HA, procs: dict[str, subprocess.Popen[bytes]], meters: dict[str, Published], eid_of: dict[str, str]
) -> None:
    """SIGTERM each meter's service in turn: the time until every entity of that meter is ``unavailable``."""
    times: list[float] = []
    bad: list[str] = []
    for meter in METERS:
        pub = next((p for p in meters.values() if p.client == f"bench-{meter.name}"), None)
        proc = procs[meter.name]
        if pub is None:
            continue
        entities = [eid_of[u] for u in pub.components() if u in eid_of]
        cmd = [str(ha.py), str(Path(__file__)), "ws", "--url", ha.url, "--token", ha.token, "watch"]
        watch = subprocess.Popen(
            [*cmd, "--entities", ",".join(entities), "--timeout", "30"], stdout=subprocess.PIPE, text=True
        )
        assert watch.stdout is not None
        if watch.stdout.readline().strip() != "ready":
            bad.append(f"{meter.name}: watcher did not start")
            watch.kill()
            continue
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        seen = json.loads(watch.stdout.readline() or "{}")
        watch.wait(10)
        proc.wait(20)
        if len(seen) != len(entities):
            bad.append(f"{meter.name}: {len(entities) - len(seen)} of {len(entities)} never unavailable")
        if seen:
            times.append(max(seen.values()) - t0)
    detail = (
        f"all entities of each meter unavailable {min(times):.2f}-{max(times):.2f} s after SIGTERM "
        f"(median {sorted(times)[len(times) // 2]:.2f} s, {len(times)} meters)"
        if times
        else "no measure"
    )
    res.add(
        "unavailable after SIGTERM (LWT)",
        not bad and len(times) == len(METERS),
        detail + ("; " + "; ".join(bad) if bad else ""),
    )


def print_table(results: list[Result]) -> None:
    for r in results:
        print(f"\n== Home Assistant Core {r.version}  ({r.note}) ==")
        if r.per_meter:
            head = f"{'meter':<20} {'contract':<12} {'sent':>5} {'in HA: meter':>13} {'+ tariff':>9}"
            print(f"{head} {'compared':>9} {'equal':>6}")
            for name, contract, sent, meter, tariff, compared, equal in r.per_meter:
                print(f"{name:<20} {contract:<12} {sent:>5} {meter:>13} {tariff:>9} {compared:>9} {equal:>6}")
            sums = [sum(row[i] for row in r.per_meter) for i in range(2, 7)]  # type: ignore[misc]
            print(f"{'total':<33} {sums[0]:>5} {sums[1]:>13} {sums[2]:>9} {sums[3]:>9} {sums[4]:>6}")
        print(f"{'check':<36} {'result':<6} detail")
        for c in r.checks:
            print(f"{c.name:<36} {'ok' if c.ok else 'FAIL':<6} {c.detail}")
    print()
    for r in results:
        print(f"Home Assistant Core {r.version}: {'PASS' if r.ok else 'FAIL'}")


def enter_namespace() -> None:
    """Re-run this command inside a new network namespace (only ``lo``, brought up), and check it is so."""
    if os.environ.get(NETNS_MARK) != "1":
        if os.geteuid() != 0:
            raise SystemExit("ha_core.py run: needs root (a network namespace of its own: unshare --net)")
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        env = {**os.environ, NETNS_MARK: "1"}
        os.execve(unshare, [unshare, "--net", "--", sys.executable, str(Path(__file__)), *sys.argv[1:]], env)  # noqa: S606
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip() for line in links.splitlines()]
    routes = subprocess.run(["ip", "route", "show"], check=True, capture_output=True, text=True).stdout.strip()
    if names != ["lo"] or routes:
        raise SystemExit(f"ha_core.py: the namespace is not loopback-only (links {names}, routes {routes!r})")
    print("network namespace: only lo (127.0.0.1), no route", flush=True)


def run(args: argparse.Namespace) -> int:
    enter_namespace()
    for p in (str(BENCH), str(REPO)):
        if p not in sys.path:
            sys.path.insert(0, p)
    results = [run_version(v, args) for v in args.versions]
    print_table(results)
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="one virtualenv per HA version (downloads; done once)")
    r = sub.add_parser("run", help="the experiment, in a loopback-only network namespace (root)")
    for p in (s, r):
        p.add_argument("--versions", nargs="+", default=list(VERSIONS))
        p.add_argument("--venvs", type=Path, default=VENVS, help="where the virtualenvs are (outside the repo)")
    s.add_argument("--python", type=Path, default=PYTHON, help="the Python (>= 3.13) of the virtualenvs")
    r.add_argument("--settle", type=float, default=30.0, help="seconds of frames before looking (default 30)")
    r.add_argument("--start-timeout", type=float, default=300.0)
    r.add_argument("--discovery-timeout", type=float, default=120.0)
    r.add_argument("--statistics-timeout", type=float, default=420.0, help="wait for HA's statistics compile")
    r.add_argument("--keep", default="", help="copy HA's configuration, log and the services' logs here")
    r.add_argument("--show-other-log", action="store_true", help="also print HA's warnings not about us")
    w = sub.add_parser("ws", help="(internal) HA's websocket API, run with HA's Python")
    w.add_argument("--url", required=True)
    w.add_argument("--token", required=True)
    w.add_argument("action", choices=("ping", "query", "watch"))
    w.add_argument("--out", default="")
    w.add_argument("--energy-prefs", default="")
    w.add_argument("--entities", default="")
    w.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    return {"setup": setup, "run": run, "ws": ws}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
