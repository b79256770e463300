"""teleinfo (PyPI, 1.3.1): ``teleinfo.Parser.get_frame()`` on a vendor object whose ``read_char()`` is fed by us.

``Parser`` pulls one character at a time from a ``BASE_vendor`` subclass; its hardware vendors return
``serial.read(1)``, i.e. ``bytes``, which never equals its ``str`` markers on Python 3, so the adapter's vendor
returns ``str`` characters, which is what the parser's logic needs.  A frame is what ``get_frame()`` returns; it
drops groups whose checksum fails and returns ``{}`` on a frame it cannot split.  Note that the constructor
already synchronises on a first STX and ``get_frame()`` synchronises again, so the first frame is skipped.

Historique only: groups are split on spaces.  The import name ``teleinfo`` is also used by pyteleinfo; the
two distributions cannot be installed together (see ``requirements.txt``).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from peers import Adapter, Mode, Unavailable
from peers.fake_io import char_reader

__all__ = ["TeleinfoAdapter"]


class TeleinfoAdapter(Adapter):
    """teleinfo 1.3.1: character-by-character framing, split on SP, checksum per group."""

    name = "teleinfo"
    dist = "teleinfo"
    modes = ("historique",)
    drives = "Parser(vendor).get_frame() per frame; vendor.read_char() yields one str char at a time"

    def load(self) -> None:
        try:
            importlib.metadata.version("teleinfo")
        except importlib.metadata.PackageNotFoundError as e:
            raise Unavailable("not installed (the import name `teleinfo` may belong to pyteleinfo here)") from e
        try:
            from teleinfo.base_vendor import BASE_vendor
            from teleinfo.parser import Parser
        except ImportError as e:
            raise Unavailable(f"`teleinfo` does not import as teleinfo 1.3.1 ({e})") from e

        class _StreamVendor(BASE_vendor):  # type: ignore[misc]
            """A vendor whose ``read_char`` is the C-level ``__next__`` of an iterator: as cheap as a read gets."""

            def __init__(self, read_char: Any) -> None:
                self.read_char = read_char

        self._vendor_cls = _StreamVendor
        self._parser_cls = Parser

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        return self._vendor_cls(char_reader(chunks))

    def run(self, prepared: Any) -> list[Any]:
        frames: list[dict[str, str]] = []
        try:
            parser = self._parser_cls(prepared)
            get_frame = parser.get_frame
            while True:
                frames.append(get_frame())
        except EOFError:
            pass
        return frames
