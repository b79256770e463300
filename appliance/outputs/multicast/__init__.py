"""The UDP multicast output: every frame, in real time, to every listener on the LAN (docs/DATA_FORMAT.md §3).

:mod:`.sender` sends (the output), :mod:`.parts` splits JSON frames larger than a datagram and merges them back,
:mod:`.receiver` opens a listening socket, :mod:`.addressing` resolves interfaces and groups; the line-protocol
parser is :func:`appliance.lineproto.parse_line`.  Everything here is standard library only.
"""

from appliance.lineproto import MAX_DATAGRAM
from appliance.outputs.multicast.addressing import interface_request, membership_request
from appliance.outputs.multicast.parts import JsonReassembler, merge_json_parts, split_json
from appliance.outputs.multicast.receiver import open_receiver
from appliance.outputs.multicast.sender import MulticastOutput

__all__ = [
    "MAX_DATAGRAM",
    "JsonReassembler",
    "MulticastOutput",
    "interface_request",
    "membership_request",
    "merge_json_parts",
    "open_receiver",
    "split_json",
]
