"""The declared shape of every plugin: what a source, an output or a check registers.

Every plugin is a folder of the same shape (Telegraf's ``plugins/<kind>/<name>/``)::

    appliance/<kind>/<name>/
        __init__.py    PLUGIN: its registry entry (below); imports nothing heavy
        config.py      the schema of its configuration section
        <impl>.py      the implementation: source.py, output.py or check.py (and helpers), imported only when
                       the plugin is built, so a disabled plugin costs no import (paho, influxdb-client, pyserial,
                       paramiko)

and each kind's ``__init__.py`` (:mod:`appliance.sources`, :mod:`appliance.outputs`, :mod:`appliance.checks`)
holds the registry, a tuple or dict of these entries, that the service, ``teleinfo doctor``, the scheduler and
the documentation loop over.  docs/PLUGINS.md says how to add one; tests/test_plugins.py proves every
registered plugin is configured, documented and tested.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.checks import Check
    from appliance.commands.doctor import Result
    from appliance.outputs.base import Output
    from appliance.schema import Config
    from appliance.sources import Source
    from appliance.stats import Stats

__all__ = ["CheckPlugin", "OutputPlugin", "SourcePlugin", "WorkerOptions"]


@dataclass(frozen=True, slots=True)
class SourcePlugin:
    """A registered source: ``source.kind = name`` selects it; ``section`` picks its settings (of type
    ``config``) out of the configuration; ``build(settings, stats, stop)`` imports its module and makes it."""

    name: str
    summary: str
    module: str  # the implementation, imported by ``build`` only (for the docs and the convention test)
    config: type
    section: Callable[[Config], Any]
    build: Callable[[Any, Stats, threading.Event], Source]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How the worker of one output is set up: its queue, its spool (None: best effort, never on disk), and the
    size of a record lane where the service's default does not fit this output's units (record kind -> units)."""

    queue_size: int
    spool_max_bytes: int | None = None
    batch_size: int = 500
    lane_sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputPlugin:
    """A registered output: ``[outputs.<name>]`` (of type ``config``) is its section; ``build`` makes the output
    (importing its module then); ``options`` sets up its worker; ``diagnose`` is its ``teleinfo doctor`` check
    (it may reach the server, never send data)."""

    name: str
    summary: str
    module: str
    config: type
    section: Callable[[Config], Any]
    build: Callable[[Any], Output]
    options: Callable[[Any], WorkerOptions]
    diagnose: Callable[[Any], Iterator[Result]]


@dataclass(frozen=True, slots=True)
class CheckPlugin:
    """A registered check: ``[checks.<name>]`` (of type ``config``, with ``interval``) is its section;
    ``configured`` says whether it gives it anything to check; ``build(cfg, persist)`` makes it (``persist``:
    the service may write state files, one-shot commands only read them)."""

    name: str
    summary: str
    module: str
    config: type
    section: Callable[[Config], Any]
    configured: Callable[[Config], bool]
    build: Callable[[Config, bool], Check]
