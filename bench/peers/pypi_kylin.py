"""kylin (PyPI, 0.6.0): ``Kylin.readframe()`` on a fake port.

``Kylin.__init__`` refuses to run unless the port is listed by ``serial.tools.list_ports``, and ``open()``
opens it; ``readframe()`` only needs ``self._teleinfo.readline()``, so the adapter builds the object without
``__init__`` and gives it a :class:`~peers.fake_io.FakeSerial`.  Its per-line ``LOGGER.info`` calls are
silenced by the benchmark (logger level WARNING) so that log records are not what is timed.

Historique only (``line.split()`` then a checksum over ``label SP data``).  Known behaviour, visible in the
sanity columns: the last group of a frame shares its line with ``ETX STX``, so ``readframe()`` never returns it
and then waits for the *next* STX, which skips every other frame.
"""

from __future__ import annotations

import logging
from typing import Any

from peers import Adapter, Mode, Unavailable
from peers.fake_io import FakeSerial

__all__ = ["KylinAdapter"]


class KylinAdapter(Adapter):
    """kylin 0.6.0: readline(), split(), checksum per group, frame = list of name/value/checksum dicts."""

    name = "kylin"
    dist = "kylin"
    modes = ("historique",)
    drives = "Kylin.readframe() per frame (readline + split + frame_is_valid) on a fake port"

    def load(self) -> None:
        try:
            import kylin
        except ImportError as e:
            raise Unavailable(f"not installed ({e})") from e
        logging.getLogger("kylin").setLevel(logging.WARNING)
        self._cls = kylin.Kylin

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        reader = self._cls.__new__(self._cls)  # __init__ insists on a real port
        reader._port = "fake"
        reader._timeout = 1
        reader._verbose = False
        reader._teleinfo = FakeSerial(chunks)
        return reader

    def run(self, prepared: Any) -> list[Any]:
        readframe = prepared.readframe
        frames: list[Any] = []
        try:
            while True:
                frames.append(readframe())
        except EOFError:
            pass
        return frames

    def to_dicts(self, outputs: list[Any]) -> list[dict[str, Any]]:
        return [{g["name"]: g["value"] for g in frame} for frame in outputs]
