"""The TIC protocol, pure: framing, checksums, the label table, typed values.  No I/O, no threads, no clock.

>>> from appliance.tic import Decoder, encode_frame, encode_group
>>> frame, = Decoder().feed(encode_frame([encode_group("standard", "EAST", "099765794")]))
>>> frame.mode, frame.values
('standard', {'EAST': 99765794})
"""

from appliance.tic.decode import Decoder, detect_mode
from appliance.tic.encode import checksum, encode_frame, encode_group
from appliance.tic.frame import BAUDRATES, MODES, REJECT_REASONS, Frame, Mode, RejectReason, Value
from appliance.tic.framing import FrameAssembler
from appliance.tic.labels import HISTORIQUE, STANDARD, Kind, LabelSpec, spec_for

__all__ = [
    "BAUDRATES",
    "HISTORIQUE",
    "MODES",
    "REJECT_REASONS",
    "STANDARD",
    "Decoder",
    "Frame",
    "FrameAssembler",
    "Kind",
    "LabelSpec",
    "Mode",
    "RejectReason",
    "Value",
    "checksum",
    "detect_mode",
    "encode_frame",
    "encode_group",
    "spec_for",
]
