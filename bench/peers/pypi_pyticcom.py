"""pyticcom (PyPI, 1.2): the ``bytes`` / ``async`` sibling of python-tic, ``await Teleinfo.read_frame()``.

``read_frame`` is a coroutine that never awaits anything (its reads are plain ``readline()`` calls), so the
adapter drives it with ``coroutine.send(None)`` instead of an event loop, which would only add overhead that is
not decoding.  Same framing behaviour as python-tic (last group and every other frame lost); historique only.
"""

from __future__ import annotations

import logging
from typing import Any

from peers import Adapter, Mode, Unavailable
from peers.fake_io import FakeSerial

__all__ = ["PyticcomAdapter"]


class PyticcomAdapter(Adapter):
    """pyticcom 1.2: readline(), split(), checksum per group, on bytes; async API."""

    name = "pyticcom"
    dist = "pyticcom"
    modes = ("historique",)
    drives = "pyticcom.Teleinfo(mode).read_frame() coroutine, stepped with send(None), on a fake port"

    def load(self) -> None:
        try:
            import pyticcom.teleinfo as mod
        except ImportError as e:
            raise Unavailable(f"not installed ({e})") from e
        logging.getLogger("pyticcom").setLevel(logging.WARNING)
        self._mod = mod

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
                coroutine = read_frame()
                try:
                    coroutine.send(None)
                except StopIteration as done:
                    frames.append(done.value)
                else:  # pragma: no cover - it never awaits; if a later version does, fail loudly
                    coroutine.close()
                    raise RuntimeError("pyticcom.read_frame awaited something: drive it with an event loop")
        except EOFError:
            pass
        return frames

    def to_dicts(self, outputs: list[Any]) -> list[dict[str, Any]]:
        return [{g.info.name: g.value for g in f.groups if g.info is not None} for f in outputs]
