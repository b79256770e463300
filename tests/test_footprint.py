"""What keeps the service small (issue 16): modules the configuration does not use are never run.

Each check runs in a fresh interpreter (the test process has imported everything already), and asserts on what
that interpreter loaded, never on a time or a memory figure (those are bench/footprint.py's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parent.parent
OPENSSL = ("ssl", "hashlib", "hmac", "urllib.request", "http.client", "email")


def child(code: str, env: dict[str, str] | None = None, bare: bool = False) -> object:
    """Run ``code`` in a new interpreter (with ``env`` added to the environment); it prints one JSON value,
    returned here.  ``bare``: without the site module, as an installed console script starts (a development
    install's .pth files import pathlib and more before any code of ours runs); the packages stay importable."""
    argv = [sys.executable, "-c", code]
    if bare:
        argv.insert(1, "-S")
        env = {**(env or {}), "PYTHONPATH": os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])}
    out = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_a_deferred_module_runs_on_first_use_and_is_then_the_real_one() -> None:
    got = child(
        "import json, sys\n"
        "from appliance.lazy import defer, loaded\n"
        "m = defer('colorsys')\n"
        "before = [loaded('colorsys') is None, 'colorsys' in sys.modules]\n"
        "import colorsys\n"
        "same = colorsys is m\n"
        "value = colorsys.rgb_to_hsv(1.0, 0.0, 0.0)\n"
        "print(json.dumps([*before, same, loaded('colorsys') is sys.modules['colorsys'], list(value)]))\n"
    )
    assert got == [True, True, True, True, [0.0, 1.0, 1.0]]


def test_a_deferred_module_keeps_placeholders_until_it_runs() -> None:
    got = child(
        "import json\n"
        "from appliance.lazy import defer\n"
        "class Never(Exception): pass\n"
        "m = defer('colorsys', {'rgb_to_hsv': Never})\n"
        "first = m.rgb_to_hsv is Never\n"
        "m.hsv_to_rgb  # any other name runs the module, which replaces the placeholder\n"
        "print(json.dumps([first, m.rgb_to_hsv is not Never, m.rgb_to_hsv(0.0, 1.0, 0.0)[0]]))\n"
    )
    assert got == [True, True, 1 / 3]


def test_a_from_import_of_a_deferred_module_binds_a_forwarding_placeholder() -> None:
    """``from m import f`` asks whether ``m`` is a package first: a plain module's stand-in says no without running
    it, the name binds the :func:`forward` placeholder, and calling it runs the module and its real function."""
    got = child(
        "import json\n"
        "from appliance.lazy import defer, forward, loaded\n"
        "defer('colorsys', {'rgb_to_hsv': forward('colorsys', 'rgb_to_hsv')})\n"
        "from colorsys import rgb_to_hsv\n"
        "before = loaded('colorsys') is None\n"
        "value = rgb_to_hsv(1.0, 0.0, 0.0)\n"
        "print(json.dumps([before, loaded('colorsys') is not None, list(value)]))\n"
    )
    assert got == [True, True, [0.0, 1.0, 1.0]]


@pytest.mark.integration
def test_plain_mqtt_never_loads_openssl(tmp_path: Path) -> None:
    """A Pi publishing to its broker without TLS carries neither ssl, hashlib nor paho's proxy support."""
    with Mosquitto(tmp_path / "broker") as broker:
        got = child(
            "import json, sys, time\n"
            "from appliance.lazy import loaded\n"
            "from appliance.outputs.mqtt.config import MqttConfig\n"
            "from appliance.outputs.mqtt.output import MqttOutput\n"
            "from appliance.tic import Decoder, encode_frame, encode_group\n"
            "groups = [encode_group('standard', 'ADSC', '012345678901'),\n"
            "          encode_group('standard', 'EAST', '000001234')]\n"
            "frame, = Decoder('standard').feed(encode_frame(groups), time.time())\n"
            f"out = MqttOutput(MqttConfig(enabled=True, host='127.0.0.1', port={broker.port}, client_id='fp'))\n"
            "out.open()\n"
            "for _ in range(5):\n"
            "    out.send(frame)\n"
            "out.close()\n"
            f"print(json.dumps({{n: loaded(n) is not None for n in {OPENSSL!r}}}))\n"
        )
    assert got == dict.fromkeys(OPENSSL, False)


def test_the_service_command_imports_neither_other_commands_nor_unused_parts() -> None:
    """Importing the service loads the schemas of the tariff engine and the live page (the configuration names
    them), not the engine, its store, the clock rule nor the page's server: those load when they are enabled."""
    heavy = ("appliance.tariff.engine", "appliance.tariff.store", "appliance.tariff.feed", "appliance.clock")
    heavy += ("appliance.web.server", "appliance.web.feed", "appliance.web.live")
    got = child(
        "import json, sys\n"
        "from appliance.cli import build_parser, command_module\n"
        "build_parser(command_module(['run', '--help'])).parse_known_args(['run', '--no-view'])\n"
        "import appliance.service\n"
        f"mods = [m for m in sys.modules if m.startswith('appliance.commands.') or m in {heavy!r}]\n"
        f"print(json.dumps([sorted(mods), [n for n in {OPENSSL!r} if n in sys.modules]]))\n"
    )
    assert got == [["appliance.commands.run"], []]


def test_command_module_names() -> None:
    from appliance.cli import command_module

    assert command_module(["decode", "x.bin"]) == "decode"
    assert command_module(["check-config", "--config", "x"]) == "check_config"
    assert command_module(["print-example-config"]) == "check_config"
    assert command_module(["--version"]) is None
    assert command_module(["no-such-command"]) is None


def test_the_page_and_the_tariff_engine_leave_out_what_they_do_not_need() -> None:
    """Static files read as plain files, the clock rule's ctypes loaded only when the kernel is asked, month
    lengths without the calendar module: the page and the engine carry none of them into the service."""
    unused = ("ctypes", "importlib.resources", "zipfile", "tempfile", "calendar", "subprocess")
    got = child(
        "import json, sys\n"
        "import appliance.web.server, appliance.web.feed, appliance.tariff.feed, appliance.clock\n"
        f"print(json.dumps([n for n in {unused!r} if n in sys.modules]))\n"
    )
    assert got == []


#: What a bare ``teleinfo run`` (the unit's command line) must never run: the parser and what it pulls in, and
#: inspect (dataclasses' docstring writer) with its helpers; platform and base64 only paho's import asks for.
NOT_IN_THE_SERVICE = ("argparse", "gettext", "locale", "shutil", "bz2", "lzma", "inspect", "ast", "dis")
NOT_IN_THE_SERVICE += ("platform", "base64", "ipaddress", "sysconfig", "stringprep", "urllib.parse")
NOT_IN_THE_SERVICE += ("traceback", "linecache", "tokenize", "textwrap")


def unit_setting(name: str) -> str:
    """The value systemd/teleinfo.service gives the variable ``name`` (``Environment=NAME=value``)."""
    unit = (REPO / "systemd" / "teleinfo.service").read_text(encoding="utf-8")
    return next(line.split("=", 2)[2] for line in unit.splitlines() if line.startswith(f"Environment={name}="))


def test_the_units_bare_run_command_needs_no_parser() -> None:
    """The modules ``teleinfo run`` (no option) goes through, with MQTT, multicast, the serial source, the page
    and the tariff engine, as the appliance runs them, with the unit's $PYTHONTZPATH, and a host name looked up:
    none of the modules above really runs."""
    got = child(
        "import json, sys\n"
        f"given = [n for n in {NOT_IN_THE_SERVICE!r} if n in sys.modules]  # the interpreter's own (3.11.7's\n"
        "# urllib.parse, which pathlib imports, imports ipaddress; Debian's 3.11.2 does not)\n"
        "from appliance.cli import main\n"
        "from appliance.commands.run import UNIT_OPTIONS, run\n"
        "import appliance.service, appliance.console, appliance.logs, appliance.systemd\n"
        "import appliance.outputs.mqtt.output, appliance.outputs.multicast.output\n"
        "import appliance.sources.serial.source, appliance.web.server, appliance.web.feed, appliance.tariff.feed\n"
        "import socket, zoneinfo\n"
        "zoneinfo.ZoneInfo('Europe/Paris')\n"
        "socket.getaddrinfo('localhost', 1883)\n"
        "from appliance.lazy import loaded\n"
        f"print(json.dumps([n for n in {NOT_IN_THE_SERVICE!r} if loaded(n) is not None and n not in given]))\n",
        env={"PYTHONTZPATH": unit_setting("PYTHONTZPATH")},
        bare=True,
    )
    assert got == []


def test_the_bare_run_options_are_what_the_parser_gives() -> None:
    """``UNIT_OPTIONS`` stands for a parsed bare ``teleinfo run``: the same values, option for option."""
    from appliance.cli import build_parser
    from appliance.commands.run import UNIT_OPTIONS, RunOptions

    assert RunOptions.parsed(build_parser("run").parse_args(["run"])) == UNIT_OPTIONS
    flags = build_parser("run").parse_args(["run", "--simulate", "--sim-mode", "historique", "--no-view"])
    assert RunOptions.parsed(flags) == RunOptions(simulate=True, sim_mode="historique", no_view=True)


def test_every_dataclass_of_ours_has_a_docstring() -> None:
    """dataclasses runs inspect only to give a class without a docstring one (appliance/__init__.py)."""
    import ast

    bare = []
    for path in sorted((REPO / "appliance").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and ast.get_docstring(node) is None:
                if any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                    bare.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert bare == []


def test_an_exception_is_still_logged_whole_when_traceback_runs_late() -> None:
    """traceback is deferred (appliance/__init__.py): the first exception logged runs it, and is logged whole."""
    got = child(
        "import appliance  # first, as the console script does\n"
        "import io, json, logging\n"
        "from appliance.lazy import loaded\n"
        "before = loaded('traceback') is None\n"
        "out = io.StringIO()\n"
        "logging.basicConfig(stream=out)\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('t').exception('failed')\n"
        "text = out.getvalue()\n"
        "print(json.dumps([before, 'Traceback (most recent call last)' in text, 'ZeroDivisionError' in text]))\n",
        bare=True,
    )
    assert got == [True, True, True]
