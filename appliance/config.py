"""The configuration engine: one TOML file loaded into frozen, typed dataclasses, validated all at once.

The schema is declared next to the code each section configures (``appliance/<part>/config.py``, and for the
plugins ``appliance/<kind>/<name>/config.py``), assembled in :class:`appliance.schema.Config`, with the tools
this module gives: :func:`opt` (a field: default, documentation, range, check), :func:`section` (a sub-table),
:class:`Secret`, and the validators several sections share.  This module holds no section itself.

The schema is the single source of truth: the loader validates against it, and ``teleinfo print-example-config``
renders the commented example from the same field docs, so the example can never drift from what the loader
accepts (a test loads it back).

Every problem is collected with its key path (``outputs.multicast.ttl: must be at most 255 (got 300)``) and
reported together, so a user fixes a file in one pass; unknown keys are errors, which catches typos; numbers
must be finite (TOML spells ``nan`` and ``inf``, and NaN passes every range check); strings never hold a NUL
character (no path, name or address can, and the C library would cut them there or refuse them much later);
a file nested too deeply is an error, not a RecursionError, and values quoted in errors are shortened.

Secrets (passwords, tokens) are never written in the main file if the user prefers not to: any field of type
:class:`Secret` accepts a plain string, ``{ env = "NAME" }`` or ``{ file = "/path" }`` (systemd credentials live
in ``$CREDENTIALS_DIRECTORY``).  A :class:`Secret` prints as ``***`` so it can never reach a log.  A secret file
must be a regular file of at most :data:`MAX_SECRET_BYTES` (``/dev/zero`` or a FIFO is refused, never read).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import reprlib
import socket
import stat
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.schema import Config

__all__ = [
    "DEFAULT_PATH",
    "ConfigError",
    "IsoDate",
    "Secret",
    "build_section",
    "config_path",
    "host_name",
    "http_url",
    "ip_address",
    "is_loopback",
    "load_config",
    "measurement_name",
    "opt",
    "parse_config",
    "render_example",
    "section",
]

DEFAULT_PATH = Path("/etc/teleinfo/teleinfo.toml")
ENV_PATH = "TELEINFO_CONFIG"
MAX_SECRET_BYTES = 64 * 1024  # a token, a password or a key: never more

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlevel = 3


def _shown(value: Any) -> str:
    """``value`` as quoted in an error: short, whatever its size or depth."""
    return _SHOWN.repr(value)


def _root() -> type[Config]:
    from appliance.schema import Config

    return Config


class ConfigError(ApplianceError):
    """The configuration is invalid; ``errors`` lists every problem with its key path."""

    def __init__(self, errors: list[str], source: str = "configuration") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} error(s):\n" + "\n".join(f"  - {e}" for e in errors))


class Secret:
    """A secret value that never shows itself in ``repr``/``str`` (and so never in a log)."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str = "inline") -> None:
        self._value = value
        self.origin = origin

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(*** from {self.origin})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class IsoDate(str):
    """A calendar date written ``YYYY-MM-DD``: a TOML date (``since = 2026-02-01``) or the same text in quotes.

    Kept as its text, so the frozen configuration compares, prints and renders in the example like the file; a
    field of this type still needs a ``check`` that the text is a real date (``2026-02-30`` is text TOML allows).
    """

    __slots__ = ()


Check = Callable[[Any], str | None]


def opt(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    check: Check | None = None,
    example: str | None = None,
) -> Any:
    """A schema field: default, documentation, range and an optional check returning an error message."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "check": check, "example": example}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str | None = None) -> Any:
    """A sub-table field: ``[parent.name]``, documented by ``doc`` or the class's docstring."""
    return field(default_factory=cls, metadata={"doc": doc or (cls.__doc__ or "").strip()})


# --- validators several sections share (a section's own live in its config.py) ----------------------------
def ipv4_packed(value: str) -> bytes | None:
    """The 4 bytes of a dotted-quad IPv4 address, or None if ``value`` is not one.

    The C library's ``inet_pton`` parses as strictly as the ipaddress module (four decimal parts, no leading zero,
    nothing around), without loading that module's 0.3 MiB into a service that runs for months."""
    try:
        return socket.inet_pton(socket.AF_INET, value)
    except (OSError, ValueError):  # ValueError: a NUL or a character outside ASCII
        return None


def ip_packed(value: str) -> bytes | None:
    """The 4 or 16 bytes of an IPv4 or IPv6 address, or None if ``value`` is neither.

    An IPv6 address may name its zone (``fe80::1%eth0``), as the ipaddress module accepts."""
    packed = ipv4_packed(value)
    if packed is not None:
        return packed
    address, percent, zone = value.partition("%")
    if percent and (not zone or "%" in zone):
        return None
    try:
        return socket.inet_pton(socket.AF_INET6, address)
    except (OSError, ValueError):
        return None


def ip_address(value: str) -> str | None:
    """An IP address to listen on."""
    if ip_packed(value) is None:
        return f"not an IP address: {_shown(value)} (0.0.0.0: every IPv4 interface, 127.0.0.1: this machine only)"
    return None


def is_loopback(value: str) -> bool:
    """True for a loopback address, and for an invalid one (already reported by its own check)."""
    packed = ip_packed(value)
    if packed is None:
        return True
    return packed[0] == 127 if len(packed) == 4 else packed == socket.inet_pton(socket.AF_INET6, "::1")


def measurement_name(value: str) -> str | None:
    """An InfluxDB measurement name (line protocol)."""
    if not value or value.startswith("_") or any(c in value for c in ' ,=\\"\n'):
        return f"invalid measurement name {_shown(value)} (no spaces, commas, quotes, '=' or leading '_')"
    return None


def http_url(value: str) -> str | None:
    """An http:// or https:// URL."""
    if not value.startswith(("http://", "https://")):
        return f"must be an http:// or https:// URL (got {_shown(value)})"
    return None


def host_name(value: str) -> str | None:
    """An IP address or a DNS name: never empty, never starting with '-' (it would be read as an option)."""
    if ip_packed(value) is not None:
        return None
    labels = value.rstrip(".").split(".")
    if (
        not value
        or value.startswith("-")
        or not all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels)
    ):
        return f"neither an IP address nor a host name: {_shown(value)}"
    return None


# --- loading -----------------------------------------------------------------------------------------------
def config_path(explicit: str | None) -> tuple[Path, bool]:
    """The file to load and whether the user named it (flag or $TELEINFO_CONFIG), which makes it mandatory."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get(ENV_PATH)
    if env:
        return Path(env), True
    return DEFAULT_PATH, False


def load_config(path: str | Path | None = None, *, required: bool = True) -> Config:
    """Load and validate a file; raise :class:`ConfigError` listing every problem.

    With ``required=False`` a missing file gives the defaults (the service then runs on its built-in defaults).
    """
    if path is None:
        return _root()()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return _root()()
        raise ConfigError([f"file not found: {p}"], str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read {p}: {e}"], str(p)) from None
    return parse_config(text, str(p))


def parse_config(text: str, source: str = "configuration") -> Config:
    """Validate TOML text against the schema."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], source) from None
    except RecursionError:
        raise ConfigError(["TOML nested too deeply (arrays or tables inside one another)"], source) from None
    errors: list[str] = []
    root = _root()
    cfg = build_section(root, data, "", errors)
    if errors:
        raise ConfigError(errors, source)
    assert isinstance(cfg, root)
    return cfg


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(t))
    if t is Secret:
        return 'a string, { env = "NAME" } or { file = "/path" }'
    if t is IsoDate:
        return "a date YYYY-MM-DD"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(t, str(t))


def _convert(t: Any, value: Any, key: str, errors: list[str]) -> Any:
    """Check ``value`` against type ``t``; append an error and return None if it does not fit."""
    origin = typing.get_origin(t)
    if origin is Literal:
        choices = typing.get_args(t)
        if value in choices and type(value) is type(choices[0]):
            return value
        errors.append(f"{key}: must be {_type_name(t)} (got {_shown(value)})")
        return None
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return _convert(args[0], value, key, errors)
    if origin is list:
        (item,) = typing.get_args(t)
        if not isinstance(value, list):
            errors.append(f"{key}: must be a list (got {_shown(value)})")
            return None
        if dataclasses.is_dataclass(item):  # an array of tables: [[checks.peers]]
            return [build_section(item, v, f"{key}[{i}]", errors) for i, v in enumerate(value)]  # type: ignore[arg-type]
        return [_convert(item, v, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if t is Secret:
        return _secret(value, key, errors)
    if t is IsoDate:
        # TOML dates arrive as datetime.date; a date-time (2026-02-01T00:00:00) is not a date.
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            return IsoDate(value.isoformat())
        if isinstance(value, str):
            return IsoDate(value)
        errors.append(f"{key}: must be {_type_name(t)} (got {type(value).__name__} {value})")
        return None
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):  # TOML has nan and inf; no setting means either, and NaN passes ranges
            errors.append(f"{key}: must be a finite number (got {value!r})")
            return None
    elif t is str:
        ok = isinstance(value, str)
        if ok and "\0" in value:
            errors.append(f"{key}: must not contain a NUL character (got {_shown(value)})")
            return None
    else:
        ok = False
    if not ok:
        errors.append(f"{key}: must be {_type_name(t)} (got {type(value).__name__} {_shown(value)})")
        return None
    return value


def _secret(value: Any, key: str, errors: list[str]) -> Secret | None:
    if isinstance(value, str):
        return Secret(value)
    if isinstance(value, dict) and len(value) == 1 and ("env" in value or "file" in value):
        if "env" in value:
            name = value["env"]
            if not isinstance(name, str) or name not in os.environ:
                errors.append(f"{key}: environment variable {name!r} is not set")
                return None
            return Secret(os.environ[name], f"${name}")
        path = value["file"]
        if not isinstance(path, str):
            errors.append(f"{key}: file must be a path string")
            return None
        if "\0" in path:
            errors.append(f"{key}: the secret file's path must not contain a NUL character")
            return None
        p = Path(os.path.expandvars(path))
        try:
            return Secret(_read_secret_file(p).rstrip("\r\n"), str(p))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            errors.append(f"{key}: cannot read secret file {p}: {getattr(e, 'strerror', None) or e}")
            return None
    errors.append(f"{key}: must be {_type_name(Secret)}")
    return None


def _read_secret_file(path: Path) -> str:
    """A secret file's text: a regular file (never a device nor a FIFO, which could block or never end) of at most
    :data:`MAX_SECRET_BYTES`; ValueError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"larger than {MAX_SECRET_BYTES} bytes")
    return data.decode("utf-8")


def build_section(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    """``data`` (a TOML table) as an instance of the schema ``cls``; problems are appended to ``errors`` with
    their key path under ``prefix`` (None returned when the table itself is unusable)."""
    if not isinstance(data, dict):
        errors.append(f"{prefix or 'top level'}: must be a table (got {_shown(data)})")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else key
            errors.append(f"{where}: unknown key (expected one of: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        t = hints[name]
        if dataclasses.is_dataclass(t):
            value = build_section(t, data[name], key, errors)  # type: ignore[arg-type]
        else:
            n_before = len(errors)
            value = _convert(t, data[name], key, errors)
            if len(errors) == n_before:
                _check_range(f, value, key, errors)
        if value is not None:
            kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # pragma: no cover - only on a schema bug
        errors.append(f"{prefix}: {e}")
        return None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        errors.extend(f"{prefix}.{k}: {msg}" if prefix else f"{k}: {msg}" for k, msg in validate())
    return obj


def _check_range(f: dataclasses.Field[Any], value: Any, key: str, errors: list[str]) -> None:
    meta = f.metadata
    lo, hi, check = meta.get("lo"), meta.get("hi"), meta.get("check")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            errors.append(f"{key}: must be at least {lo:g} (got {value!r})")
        if hi is not None and value > hi:
            errors.append(f"{key}: must be at most {hi:g} (got {value!r})")
    if check is not None:
        msg = check(value)
        if msg:
            errors.append(f"{key}: {msg if len(msg) <= 300 else msg[:300] + '...'}")


# --- example -----------------------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Secret):
        return '{ env = "SECRET_VARIABLE" }'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _wrap(text: str, indent: str = "# ") -> list[str]:
    import textwrap

    return [indent + line for line in textwrap.wrap(" ".join(text.split()), 116)] or [indent.rstrip()]


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """The value a key takes when the file leaves it out: every schema field is built by opt() or section(),
    which always give a default or a default factory."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"schema field {f.name!r} has neither a default nor a default factory")


def render_example() -> str:
    """A complete, commented configuration holding every key at its default value."""
    lines = [
        "# teleinfo configuration (TOML). Every key is optional; the values below are the defaults.",
        f"# Default location: {DEFAULT_PATH} (override with --config or ${ENV_PATH}).",
        '# Secrets may be written inline, or as { env = "NAME" } or { file = "/path" }.',
        "",
    ]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        subs = []
        tables = []
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                subs.append((f, t))
                continue
            args = typing.get_args(t)
            if typing.get_origin(t) is list and args and dataclasses.is_dataclass(args[0]):
                tables.append((f, args[0]))
                continue
            lines.extend(_wrap(f.metadata.get("doc", "")))
            allowed = typing.get_args(t) if typing.get_origin(t) is Literal else None
            if allowed and len(allowed) > 1:
                lines.append("# one of: " + ", ".join(_toml_value(a) for a in allowed))
            default = _field_default(f)
            if default is None:
                example = f.metadata.get("example")
                lines.append(f"# {f.name} = {example}" if example else f"# {f.name} =")
            else:
                lines.append(f"{f.name} = {_toml_value(default)}")
            lines.append("")
        for f, item in tables:  # commented out: an example entry of an array of tables
            name = f"{prefix}.{f.name}" if prefix else f.name
            lines.extend(_wrap(f.metadata.get("doc", "")))
            lines.append(f"# [[{name}]]")
            for g in dataclasses.fields(item):
                default = _field_default(g)
                example = g.metadata.get("example") or ("" if default is None else _toml_value(default))
                doc = g.metadata.get("doc", "")
                lines.append(f"# {g.name} = {example}" + (f"    # {doc}" if doc else ""))
            lines.append("")
        for f, t in subs:
            name = f"{prefix}.{f.name}" if prefix else f.name
            lines.extend(_wrap(f.metadata.get("doc", "")))
            lines.append(f"[{name}]")
            walk(t, name)

    walk(_root(), "")
    return "\n".join(lines).rstrip() + "\n"
