"""Where records go: the registry of outputs.  The contract (:class:`~appliance.outputs.base.Output` and its
optional abilities) and the worker that isolates each output are in :mod:`appliance.outputs.base`.

Every output is a folder ``appliance/outputs/<name>/`` (:mod:`appliance.plugins` gives the shape) whose
``PLUGIN`` is one entry of :data:`OUTPUTS`: its name (the ``[outputs.<name>]`` section and the name in
``/status``), its settings, how to build it (its implementation is imported only then), how its worker is set up
(queue, on-disk spool, batch size) and what ``teleinfo doctor`` checks for it.  The service, ``teleinfo doctor``
and the documentation loop over this tuple; docs/PLUGINS.md says how to add an output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.outputs import influxdb, mqtt, multicast
from appliance.plugins import OutputPlugin, WorkerOptions

if TYPE_CHECKING:
    from appliance.schema import Config

__all__ = ["OUTPUTS", "OutputPlugin", "WorkerOptions", "enabled_outputs", "output_plugin"]

#: Every output, in the order they are started and listed.
OUTPUTS: tuple[OutputPlugin, ...] = (multicast.PLUGIN, mqtt.PLUGIN, influxdb.PLUGIN)


def output_plugin(name: str) -> OutputPlugin:
    """The registered output called ``name`` (KeyError if none)."""
    for plugin in OUTPUTS:
        if plugin.name == name:
            return plugin
    raise KeyError(name)


def enabled_outputs(cfg: Config) -> list[tuple[OutputPlugin, Any]]:
    """The enabled outputs of ``cfg``, each with its settings, in registry order."""
    return [(p, s) for p in OUTPUTS if (s := p.section(cfg)).enabled]
