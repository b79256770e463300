"""pyteleinfo (PyPI, 0.4.0, import name ``teleinfo``): ``teleinfo.decode(frame_bytes)`` per STX...ETX frame.

pyteleinfo decodes whole frames; its only reader (``read_frame(port)``) opens a serial port and reads one byte
at a time until ETX.  The adapter does that framing with :func:`~peers.fake_io.frames_between_stx_etx` (a few
``bytes.find`` calls per chunk, cheaper than pyteleinfo's own loop) and times ``decode()`` plus that framing.
``decode`` raises on the first bad group (``TeleinfoDecodingError``), so a caller skips the whole frame.

It verifies each group against *either* checksum rule and splits on SP or HT, so it claims both modes, but it
rejects any group holding both SP and HT, which every real standard frame has (NGTF, LTARF, MSG1, PJOURF+1 hold
spaces; docs/PROTOCOL.md §10.2): in standard mode it raises on every frame.  Historique works.

Requires Python >= 3.12, and shares the import name ``teleinfo`` with the unrelated teleinfo 1.3.1.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from peers import Adapter, Mode, Unavailable
from peers.fake_io import frames_between_stx_etx

__all__ = ["PyteleinfoAdapter"]


class PyteleinfoAdapter(Adapter):
    """pyteleinfo 0.4.0: frame-level decode, both checksum rules accepted, values as strings."""

    name = "pyteleinfo"
    dist = "pyteleinfo"
    modes = ("historique",)
    drives = "teleinfo.decode(STX..ETX bytes) per frame (well-formedness + checksum per group), framing by us"

    def load(self) -> None:
        try:
            importlib.metadata.version("pyteleinfo")
        except importlib.metadata.PackageNotFoundError as e:
            raise Unavailable("not installed (pyteleinfo 0.4.0 requires Python >= 3.12)") from e
        try:
            import teleinfo
            from teleinfo.exceptions import TeleinfoError
        except ImportError as e:
            raise Unavailable(f"`teleinfo` does not import as pyteleinfo ({e})") from e
        if not hasattr(teleinfo, "decode"):
            raise Unavailable("the import name `teleinfo` belongs to another distribution here")
        self._decode = teleinfo.decode
        self._error = TeleinfoError

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        return chunks

    def run(self, prepared: Any) -> list[Any]:
        decode = self._decode
        error = self._error
        frames: list[dict[str, str]] = []
        for raw in frames_between_stx_etx(prepared):
            try:
                frames.append(decode(raw))
            except error as e:
                self.last_error = e
        return frames
