"""Configuration migrations between schema versions, run by the *new* release before the switch.

``CONFIG_SCHEMA`` is the version of the configuration's schema this release reads; a release that renames or
moves a key bumps it and adds ``MIGRATIONS[n]``, a function turning a schema-``n`` document (the parsed TOML, a
dict) into a schema-``n+1`` one in place and returning what it changed, in words.  The installer asks the new
release (``teleinfo update migrate-config``) to migrate the running configuration from the running release's schema
and to validate the result with its own schema: when a step is missing or the result is invalid, the update is
refused with every reason and nothing is switched.  A document that needs no step is only validated.

The migrated file is written by :func:`dump_toml`, which handles what a configuration holds (tables, arrays of
tables, strings, numbers, booleans, arrays); comments of the original are not kept, so an unchanged configuration is
never rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["CONFIG_SCHEMA", "MIGRATIONS", "MigrationError", "dump_toml", "migrate"]

#: The configuration schema this release reads.
CONFIG_SCHEMA = 1

#: ``MIGRATIONS[n]`` turns a schema-``n`` document into schema ``n + 1`` (in place) and says what it changed.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], list[str]]] = {}


class MigrationError(Exception):
    """The configuration cannot be migrated; ``reasons`` says why."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


def migrate(doc: dict[str, Any], from_schema: int, to_schema: int | None = None) -> list[str]:
    """Migrate ``doc`` in place from ``from_schema`` to ``to_schema`` (this release's); the changes, in words."""
    target = CONFIG_SCHEMA if to_schema is None else to_schema
    if from_schema > target:
        raise MigrationError(
            [f"the configuration is of schema {from_schema}, newer than this release's {target}: a downgrade "
             "across a schema change is refused (restore the configuration saved with the older release)"]
        )  # fmt: skip
    changes: list[str] = []
    for n in range(from_schema, target):
        step = MIGRATIONS.get(n)
        if step is None:
            raise MigrationError([f"no migration from configuration schema {n} to {n + 1}"])
        try:
            changes += step(doc) or [f"schema {n} -> {n + 1}"]
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a document the step did not expect
            raise MigrationError(
                [f"the migration from schema {n} to {n + 1} failed: {type(e).__name__}: {e}"]
            ) from None
    return changes


def _key(name: str) -> str:
    if name and all(c.isalnum() or c in "_-" for c in name):
        return name
    return _string(name)


def _string(value: str) -> str:
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table ({ env = "NAME" } secrets)
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise ValueError(f"cannot write {type(value).__name__} values")


def dump_toml(doc: dict[str, Any]) -> str:
    """TOML text that :func:`tomllib.loads` reads back as ``doc``."""
    lines: list[str] = []

    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    def walk(table: dict[str, Any], path: list[str]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and not is_table_array(v)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict) and not _is_inline(v)}
        arrays = {k: v for k, v in table.items() if is_table_array(v)}
        scalars.update({k: v for k, v in table.items() if isinstance(v, dict) and _is_inline(v)})
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in tables.items():
            name = ".".join(_key(p) for p in [*path, k])
            lines.extend(["", f"[{name}]"])
            walk(v, [*path, k])
        for k, items in arrays.items():
            name = ".".join(_key(p) for p in [*path, k])
            for item in items:
                lines.extend(["", f"[[{name}]]"])
                walk(item, [*path, k])

    walk(doc, [])
    return "\n".join(lines).strip() + "\n"


def _is_inline(table: dict[str, Any]) -> bool:
    """Secrets ({ env = ... } / { file = ... }) stay inline tables, as written."""
    return len(table) == 1 and next(iter(table)) in ("env", "file") and isinstance(next(iter(table.values())), str)
