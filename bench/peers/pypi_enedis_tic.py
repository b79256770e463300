"""enedis-tic (PyPI, 0.2.0): ``FrameFactory(text).to_dict()`` then ``FrameParser(frame).to_dict()`` per frame.

enedis-tic reads with asyncio (pyserial-asyncio): its ``Link`` awaits ``readuntil(ETX)`` on the port and hands
each ``STX ... ETX`` frame, decoded as ASCII, to ``FrameFactory`` (split into groups on CR LF, separator SP or HT
guessed from the frame, checksum checked with either rule, horodates parsed by ``strptime``), and ``Tic`` then
runs ``FrameParser`` (typed values with their units, STGE and RELAIS decoded, French names).  The adapter does
the framing with :func:`~peers.fake_io.frames_between_stx_etx` (cheaper than an asyncio stream) and times the two
calls ``Tic.infinite_update`` makes per frame.  A frame with one bad group raises, and is skipped, as ``Link``
does (it logs and counts it).

It handles both modes: the separator is HT as soon as the frame holds one, and standard data with spaces is kept
whole because groups are split on the separator only.  The sanity columns compare ``FrameFactory``'s ``data``
(``FrameParser`` renames labels into French descriptions).
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

from peers import Adapter, Mode, Unavailable
from peers.fake_io import frames_between_stx_etx

__all__ = ["EnedisTicAdapter"]


class EnedisTicAdapter(Adapter):
    """enedis-tic 0.2.0: frame-level decode in both modes, typed values, checksum with either rule."""

    name = "enedis-tic"
    dist = "enedis-tic"
    modes = ("historique", "standard")
    drives = "FrameFactory(frame.decode()).to_dict() + FrameParser(...).to_dict() per STX..ETX, framing by us"

    def load(self) -> None:
        try:
            importlib.metadata.version("enedis-tic")
        except importlib.metadata.PackageNotFoundError as e:
            raise Unavailable("not installed (pip install -r bench/requirements.txt)") from e
        try:
            from enedis_tic.application_layer import FrameParser
            from enedis_tic.link_layer import FrameFactory
        except ImportError as e:
            raise Unavailable(f"does not import ({e})") from e
        logging.getLogger("enedis_tic").setLevel(logging.WARNING)
        self._factory = FrameFactory
        self._parser = FrameParser

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        return chunks

    def run(self, prepared: Any) -> list[Any]:
        factory, parser = self._factory, self._parser
        frames: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for raw in frames_between_stx_etx(prepared):
            try:
                groups = factory(raw.decode("ascii")).to_dict()
                frames.append((groups, parser(groups).to_dict()))
            except Exception as e:  # what Link.frames() and Tic.infinite_update() catch, log and count
                self.last_error = e
        return frames

    def to_dicts(self, outputs: list[Any]) -> list[dict[str, Any]]:
        out = []
        for groups, _parsed in outputs:
            d: dict[str, Any] = {}
            for label, g in groups.items():
                d[label] = g["data"] if g["data"] or g["datetime"] is None else g["datetime"].isoformat()
            out.append(d)
        return out
