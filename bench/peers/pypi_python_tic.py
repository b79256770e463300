"""python-tic (PyPI, 1.1.1, import name ``ticpy``): ``Teleinfo.read_frame()`` on a fake port.

``Teleinfo(mode=...)`` does not open anything until ``open()``; ``read_frame()`` only needs
``self.reader.readline()``, so the adapter sets ``reader`` to a :class:`~peers.fake_io.FakeSerial`.  The module
calls ``logging.basicConfig(stream=sys.stdout, level=INFO)`` at import; the benchmark configures logging first,
so that call does nothing, and sets this library's logger to WARNING.

Historique only: in standard mode ``read_frame()`` raises (``raise NotImplemented()``, a TypeError).  Like kylin,
it loses the last group of each frame and every other frame (the ``CR ETX STX LF`` line ends the frame and is
also the STX it then waits for), and labels outside its 12-label enum come back nameless.
"""

from __future__ import annotations

import logging
from typing import Any

from peers import Adapter, Mode, Unavailable
from peers.fake_io import FakeSerial

__all__ = ["PythonTicAdapter"]


class PythonTicAdapter(Adapter):
    """python-tic 1.1.1: readline(), split(), checksum per group, Frame of Group(enum label, value)."""

    name = "python-tic"
    dist = "python-tic"
    modes = ("historique",)
    drives = "ticpy.Teleinfo(mode).read_frame() per frame (readline + split + validate_checksum) on a fake port"

    def load(self) -> None:
        try:
            import ticpy
        except ImportError as e:
            raise Unavailable(f"not installed ({e})") from e
        logging.getLogger("ticpy").setLevel(logging.WARNING)
        self._mod = ticpy

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        tic_mode = self._mod.Mode.HISTORY if mode == "historique" else self._mod.Mode.STANDARD
        reader = self._mod.Teleinfo(port="fake", mode=tic_mode)
        reader.reader = FakeSerial(chunks)
        return reader

    def run(self, prepared: Any) -> list[Any]:
        read_frame = prepared.read_frame
        frames: list[Any] = []
        try:
            while True:
                frames.append(read_frame())
        except EOFError:
            pass
        return frames

    def to_dicts(self, outputs: list[Any]) -> list[dict[str, Any]]:
        return [{g.info.name: g.value for g in f.groups if g.info is not None} for f in outputs]
