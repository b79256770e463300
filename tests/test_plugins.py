"""Convention test (Telegraf's all_test.go): every registered source, output and check is a folder of the one
shape (appliance.plugins), configured (its section is in the example configuration), documented (docs/PLUGINS.md,
and docs/DATA_FORMAT.md for outputs) and tested (a test file imports its implementation or configures it)."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from appliance.checks import CHECKS
from appliance.config import parse_config, render_example
from appliance.outputs import OUTPUTS
from appliance.sources import SOURCES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = render_example()
PLUGINS_DOC = (ROOT / "docs" / "PLUGINS.md").read_text(encoding="utf-8")
DATA_FORMAT = (ROOT / "docs" / "DATA_FORMAT.md").read_text(encoding="utf-8")
TESTS = {
    p.name: p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name
}

REGISTERED = (
    [("source", p.name, p.module) for p in SOURCES.values()]
    + [("output", p.name, p.module) for p in OUTPUTS]
    + [("check", p.name, p.module) for p in CHECKS]
)
PLUGINS = [*SOURCES.values(), *OUTPUTS, *CHECKS]
IMPLEMENTATION = {"source": "source", "output": "output", "check": "check"}


def section(kind: str, name: str) -> str:
    return {"source": "[source]" if name == "serial" else f"[source.{name}]"}.get(kind, f"[{kind}s.{name}]")


@pytest.mark.parametrize(("kind", "name", "module"), REGISTERED)
def test_every_plugin_is_configured(kind: str, name: str, module: str) -> None:
    assert section(kind, name) in EXAMPLE.splitlines()
    if kind == "source":
        assert f'kind = "{name}"' in EXAMPLE or f'"{name}"' in EXAMPLE  # one of source.kind's choices
        parse_config(f'[source]\nkind = "{name}"\n')  # the loader accepts it
    importlib.import_module(module)  # the implementation the registry names exists


@pytest.mark.parametrize(("kind", "name", "module"), REGISTERED)
def test_every_plugin_is_documented(kind: str, name: str, module: str) -> None:
    row = f"| {kind} | `{name}` |"
    assert row in PLUGINS_DOC, f"docs/PLUGINS.md lists no {kind} {name}"
    if kind == "output":
        assert f"[outputs.{name}]" in DATA_FORMAT or f"outputs.{name}" in DATA_FORMAT


@pytest.mark.parametrize(("kind", "name", "module"), REGISTERED)
def test_every_plugin_is_tested(kind: str, name: str, module: str) -> None:
    configured = {"source": f'kind = "{name}"', "output": f"[outputs.{name}]", "check": f"[checks.{name}]"}[kind]
    users = [t for t, text in TESTS.items() if module in text or configured in text]
    assert users, f"no test file imports {module} or configures {configured}"


def test_the_registries_match_the_configuration_schema() -> None:
    """A section without a registered plugin (or the reverse) would be configurable but never used."""
    cfg = parse_config("")
    assert [f.name for f in dataclasses.fields(cfg.outputs)] == [p.name for p in OUTPUTS]
    tables = [
        f.name
        for f in dataclasses.fields(cfg.checks)
        if dataclasses.is_dataclass(f.type) or f.name in {c.name for c in CHECKS}
    ]
    assert tables == [c.name for c in CHECKS]
    for plugin in OUTPUTS:
        settings = plugin.section(cfg)
        assert settings is getattr(cfg.outputs, plugin.name) and settings.enabled in (True, False)
    for check in CHECKS:
        assert check.section(cfg) is getattr(cfg.checks, check.name) and check.section(cfg).interval >= 0
    kinds = typing.get_args(typing.get_type_hints(type(cfg.source))["kind"])
    assert set(kinds) == set(SOURCES)


@pytest.mark.parametrize(("kind", "name", "module"), REGISTERED)
def test_every_plugin_is_a_folder_of_the_one_shape(kind: str, name: str, module: str) -> None:
    """appliance/<kind>s/<name>/: __init__.py holding PLUGIN, config.py holding its schema, and the
    implementation in <name>/source.py, output.py or check.py."""
    folder = ROOT / "appliance" / f"{kind}s" / name
    assert (folder / "__init__.py").is_file() and (folder / "config.py").is_file()
    assert (
        module == f"appliance.{kind}s.{name}.{IMPLEMENTATION[kind]}"
        and (folder / f"{IMPLEMENTATION[kind]}.py").is_file()
    )
    package = importlib.import_module(f"appliance.{kind}s.{name}")
    plugin = package.PLUGIN
    assert plugin.name == name and plugin in PLUGINS
    assert plugin.config.__module__ == f"appliance.{kind}s.{name}.config"  # the schema lives next to the code
    assert isinstance(plugin.section(parse_config("")), plugin.config)


def test_the_registries_import_no_implementation() -> None:
    """Listing the plugins (the service, doctor, the docs) costs no heavy import: each implementation, and the
    libraries it needs, is imported only when the plugin is built."""
    code = (
        "import sys, appliance.sources, appliance.outputs, appliance.checks, appliance.schema\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('appliance.', 'paho', 'influxdb_client', "
        "'serial', 'paramiko', 'requests')))))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    for plugin in PLUGINS:
        assert plugin.module not in loaded, f"{plugin.module} imported by the registry"
    assert not {m for m in loaded if not m.startswith("appliance.")}, loaded
