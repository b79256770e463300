"""Configuration: typed loading, every error at once with its key path, secrets, the example."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from appliance.config import ConfigError, Secret, load_config, parse_config, render_example
from appliance.schema import Config


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return e.value.errors


def test_example_is_valid_and_holds_the_defaults() -> None:
    assert parse_config(render_example()) == Config()


def test_example_documents_every_key() -> None:
    text = render_example()
    assert "     " not in text  # docstrings' indentation does not leak into the comments
    for key in ("kind", "device", "mode", "framing", "no_data_timeout", "group", "ttl", "interface", "precision"):
        assert f"\n{key} = " in text
    assert "[outputs.multicast]" in text and "[source.simulator]" in text


def test_values_are_typed() -> None:
    cfg = parse_config('[source]\nkind = "simulator"\nno_data_timeout = 12\n[outputs.multicast]\nttl = 4\n')
    assert cfg.source.kind == "simulator"
    assert cfg.source.no_data_timeout == 12.0 and isinstance(cfg.source.no_data_timeout, float)
    assert cfg.outputs.multicast.ttl == 4


def test_all_errors_reported_at_once_with_key_paths() -> None:
    errs = errors_of(
        """
[source]
kind = "usb"
devise = "/dev/ttyUSB0"
no_data_timeout = 1
[outputs.multicast]
ttl = 300
group = "10.0.0.1"
port = "4242"
enabled = 1
interface = "not an interface!"
measurement = "tele info"
[loging]
level = "debug"
"""
    )
    assert errs == [
        "loging: unknown key (expected one of: source, outputs, health, control, web, state, logging, checks, gpio, "
        "tariff, "
        "journal, sync, update)",
        "source.devise: unknown key (expected one of: kind, device, mode, framing, no_data_timeout, "
        "reconnect_max_backoff, simulator)",
        "source.kind: must be 'serial' or 'simulator' (got 'usb')",
        "source.no_data_timeout: must be at least 3 (got 1.0)",
        "outputs.multicast.enabled: must be a boolean (got int 1)",
        "outputs.multicast.group: 10.0.0.1 is not a multicast address (224.0.0.0/4)",
        "outputs.multicast.port: must be an integer (got str '4242')",
        "outputs.multicast.ttl: must be at most 255 (got 300)",
        "outputs.multicast.interface: neither an IPv4 address nor an interface name: 'not an interface!'",
        "outputs.multicast.measurement: invalid measurement name 'tele info' (no spaces, commas, quotes, '=' or "
        "leading '_')",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[source\nkind = 1", "TOML syntax error"),
        ("source = 3", "source: must be a table (got 3)"),
        ('[outputs.multicast]\ngroup = "224.0.0.251"', "reserved for link-local control traffic"),
        ("[source.simulator]\nphases = 2", "source.simulator.phases: must be 1 or 3 (got 2)"),
        ("[source.simulator]\nerrors = 1.5", "source.simulator.errors: must be at most 1 (got 1.5)"),
        ("[source]\nframing = true", "source.framing: must be 'auto' or '7E1' or '8N1' (got True)"),
        ("[health]\ndown_after = nan", "health.down_after: must be a finite number (got nan)"),
        ("[update]\ndeadline = inf", "update.deadline: must be a finite number (got inf)"),
        ('[update]\nwindow = "3h-5h"', 'update.window: must be "HH:MM-HH:MM"'),
        ('[update]\nurl = "ftp://x/y"', "update.url: must be an https:// (or http://) URL"),
        ('[update]\nchannel = "../x"', "update.channel: must be 1-32 lower-case letters"),
    ],
)
def test_individual_errors(text: str, message: str) -> None:
    assert any(message in e for e in errors_of(text)), errors_of(text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    assert load_config(tmp_path / "nope.toml", required=False) == Config()


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass

    from appliance import config as c

    @dataclass(frozen=True)
    class WithSecret:
        password: Secret | None = c.opt(None, "a password")

    monkeypatch.setenv("TI_PW", "s3cret")
    (tmp_path / "pw").write_text("from-file\n")
    errors: list[str] = []
    a = c.build_section(WithSecret, {"password": {"env": "TI_PW"}}, "x", errors)
    b = c.build_section(WithSecret, {"password": {"file": str(tmp_path / "pw")}}, "x", errors)
    assert errors == []
    assert a.password.get() == "s3cret" and b.password.get() == "from-file"
    assert "s3cret" not in repr(a) and "from-file" not in str(b.password)
    c.build_section(WithSecret, {"password": {"env": "TI_MISSING"}}, "x", errors)
    c.build_section(WithSecret, {"password": {"file": str(tmp_path / "none")}}, "x", errors)
    c.build_section(WithSecret, {"password": 3}, "x", errors)
    assert errors[0] == "x.password: environment variable 'TI_MISSING' is not set"
    assert errors[1].startswith("x.password: cannot read secret file")
    assert errors[2].startswith("x.password: must be a string,")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.integration
def test_check_config_and_example_commands(tmp_path: Path) -> None:
    example = run_cli("print-example-config")
    assert example.returncode == 0
    good = tmp_path / "good.toml"
    good.write_text(example.stdout)
    ok = run_cli("check-config", "--config", str(good))
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nkind = "usb"\n[outputs.multicast]\nport = 0\n')
    r = run_cli("check-config", "--config", str(bad))
    assert r.returncode == 2
    assert "source.kind: must be 'serial' or 'simulator' (got 'usb')" in r.stderr
    assert "outputs.multicast.port: must be at least 1 (got 0)" in r.stderr


@pytest.mark.integration
def test_run_refuses_an_invalid_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[outputs.multicast]\nttl = -1\n")
    r = run_cli("run", "--config", str(bad))
    assert r.returncode == 2
    assert "invalid configuration, not starting" in r.stderr and "outputs.multicast.ttl" in r.stderr
    r = run_cli("run", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "file not found" in r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
def test_non_finite_numbers_are_refused_with_their_key_path(value: str) -> None:
    """TOML spells NaN and infinities, and NaN passes every range check (every comparison is false): the engine
    refuses both for every number of every section, with the key path."""
    text = (
        f"[source]\nno_data_timeout = {value}\n[checks.public_ip]\ninterval = {value}\n"
        f'[[gpio.outputs]]\nname = "a"\npin = 17\nshed_above = {value}\n'
    )
    errs = errors_of(text)
    for key in ("source.no_data_timeout", "checks.public_ip.interval", "gpio.outputs[0].shed_above"):
        assert any(e.startswith(f"{key}: must be a finite number") for e in errs), errs


# --- issue 15: every number finite, every string without NUL, no crash on a hostile file -----------------------
def schema_keys(kind: type) -> dict[str, list[str]]:
    """Every key of the schema whose type is ``kind`` (or ``kind | None``), by table path (arrays of tables aside)."""
    import dataclasses
    import typing

    found: dict[str, list[str]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                walk(t, f"{prefix}.{f.name}" if prefix else f.name)
            elif t is kind or (typing.get_origin(t) in (types.UnionType, typing.Union) and kind in typing.get_args(t)):
                found.setdefault(prefix, []).append(f.name)

    walk(Config, "")
    return found


def toml_with(keys: dict[str, list[str]], value: str) -> str:
    return "".join(
        (f"[{table}]\n" if table else "") + "".join(f"{k} = {value}\n" for k in names) for table, names in keys.items()
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_number_of_the_schema_refuses_nan_and_infinities(value: str) -> None:
    """The issue tried eleven keys (health.read_timeout, health.down_after, the sync-server's limits...): every
    float of every section is refused, each with its key path."""
    keys = schema_keys(float)
    assert sum(len(v) for v in keys.values()) > 30
    for key in ("health.read_timeout", "health.down_after", "sync.server.max_file_mb", "sync.server.idle_timeout"):
        table, _, name = key.rpartition(".")
        assert name in keys[table], key
    errs = errors_of(toml_with(keys, value))
    for table, names in keys.items():
        for name in names:
            key = f"{table}.{name}" if table else name
            assert any(e.startswith(f"{key}: must be a finite number") for e in errs), (key, errs)


def test_every_string_of_the_schema_refuses_a_nul() -> None:
    keys = schema_keys(str)
    assert "directory" in keys["journal"]
    errs = errors_of(toml_with(keys, '"a\\u0000b"'))
    for table, names in keys.items():
        for name in names:
            key = f"{table}.{name}" if table else name
            assert any(e.startswith(f"{key}: must not contain a NUL") for e in errs), (key, errs)


def test_a_nul_in_the_journal_directory_fails_check_config(tmp_path: Path) -> None:
    bad = tmp_path / "nul.toml"
    bad.write_text('[journal]\nenabled = true\ndirectory = "/var/lib/tele\\u0000info"\n')
    for command in ("check-config", "run"):
        r = run_cli(command, "--config", str(bad))
        assert r.returncode == 2 and "journal.directory: must not contain a NUL" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("text", ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{ b = " * 3000 + "1" + " }" * 3000])
def test_deep_nesting_is_an_error_not_a_crash(text: str) -> None:
    errs = errors_of(text)
    assert len(errs) == 1 and ("nested too deeply" in errs[0] or "unknown key" in errs[0]), errs
    assert len(errs[0]) < 400


def test_a_deep_value_in_a_known_key_is_quoted_short() -> None:
    errs = errors_of("[health]\nport = " + "[" * 200 + "]" * 200 + '\nbind = "' + "x" * 10_000 + '"\n')
    assert all(len(e) < 400 for e in errs), [len(e) for e in errs]


def test_secret_files_are_bounded_regular_files(tmp_path: Path) -> None:
    import os

    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes it: reading would block for ever
    for path, why in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"), (str(big), "larger")):
        errs = errors_of(f'[sync]\ntoken = {{ file = "{path}" }}\n')
        assert len(errs) == 1 and "cannot read secret file" in errs[0] and why in errs[0], errs
    ok = tmp_path / "ok"
    ok.write_text("s3cret-token\n")
    assert parse_config(f'[sync]\ntoken = {{ file = "{ok}" }}\n').sync.token == Secret("s3cret-token")
