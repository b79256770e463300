"""The TIC protocol, pure: framing, checksums, the label table, typed values.  No I/O, no threads, no clock.

>>> from appliance.tic import Decoder, encode_frame, encode_group
>>> frame, = Decoder().feed(encode_frame([encode_group("standard", "EAST", "099765794")]))
>>> frame.mode, frame.values
('standard', {'EAST': 99765794})
"""

from appliance.tic.decode import MODES, REJECT_REASONS, Decoder, Frame, Mode, Value, detect_mode
from appliance.tic.encode import checksum, encode_frame, encode_group
from appliance.tic.framing import FrameAssembler
from appliance.tic.labels import HISTORIQUE, STANDARD, Kind, LabelSpec, spec_for

__all__ = [
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
    "Value",
    "checksum",
    "detect_mode",
    "encode_frame",
    "encode_group",
    "spec_for",
]
