"""serial-teleinfo (PyPI): ``Client.read_value()``, i.e. ``parse_line`` (regex, checksum) + per-label typing.

Its ``Client`` opens ``/dev/ttyUSB0`` in ``__enter__``; everything else only needs ``self._serial.readline()``,
so the adapter builds the client without opening a port and gives it a :class:`~peers.fake_io.FakeSerial`.
The loop is the one of its own ``ValueUpdater._update`` (skip unknown labels and unparsable lines), and a frame
ends where ``parse_line`` reports ``end_of_frame`` (a line ending in ``CR ETX STX LF``).

Historique only: the checksum excludes the final separator, and its label table is the 02E one.
"""

from __future__ import annotations

from typing import Any

from peers import Adapter, Mode, Unavailable
from peers.fake_io import FakeSerial

__all__ = ["SerialTeleinfoAdapter"]


class SerialTeleinfoAdapter(Adapter):
    """serial-teleinfo: line parser with checksum, length checks and int conversion of the 02E labels."""

    name = "serial-teleinfo"
    dist = "serial-teleinfo"
    modes = ("historique",)
    drives = "Client.read_value() per line (parse_line regex + checksum + type_parsers) on a fake port"

    def load(self) -> None:
        try:
            import serial_teleinfo
        except ImportError as e:
            raise Unavailable(f"not installed ({e})") from e
        self._mod = serial_teleinfo

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        client = self._mod.Client.__new__(self._mod.Client)  # __init__ only stores the port name
        client._serial = FakeSerial(chunks)
        return client

    def run(self, prepared: Any) -> list[Any]:
        read_value = prepared.read_value
        unknown = self._mod.UnknownKeyException
        parser_error = self._mod.ParserException
        frames: list[dict[str, Any]] = []
        frame: dict[str, Any] = {}
        while True:
            try:
                value = read_value()
            except unknown:
                continue
            except parser_error as e:
                self.last_error = e
                continue
            except EOFError:
                break
            frame[value.key] = value.value
            if value.end_of_frame:
                frames.append(frame)
                frame = {}
        return frames
