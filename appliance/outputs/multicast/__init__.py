"""The UDP multicast output: every frame, in real time, to every listener on the LAN (docs/DATA_FORMAT.md §3).

:mod:`.output` sends, :mod:`.parts` splits JSON frames larger than a datagram and merges them back,
:mod:`.receiver` opens a listening socket (``teleinfo listen``), :mod:`.addressing` resolves interfaces and
groups; the line-protocol parser is :func:`appliance.lineproto.parse_line`.  Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from appliance.outputs.multicast.config import MulticastConfig
from appliance.plugins import OutputPlugin, WorkerOptions

if TYPE_CHECKING:
    from appliance.commands.doctor import Result
    from appliance.outputs.base import Output

__all__ = ["PLUGIN"]


def _build(settings: Any) -> Output:
    from appliance.outputs.multicast.output import MulticastOutput

    return MulticastOutput(settings)


def _diagnose(settings: Any) -> Iterator[Result]:
    from appliance.commands.doctor import check_multicast

    yield check_multicast(settings)


PLUGIN = OutputPlugin(
    "multicast",
    "UDP multicast to the LAN: line protocol or JSON, best effort",
    "appliance.outputs.multicast.output",
    MulticastConfig,
    lambda cfg: cfg.outputs.multicast,
    _build,
    lambda s: WorkerOptions(s.queue_size),
    _diagnose,
)
