"""Thin adapters that drive each decoder under test with the same bytes, in the same chunk sizes.

Every adapter splits its work in three, so that only decoding is timed:

* :meth:`Adapter.load` imports the package (never timed; raises :class:`Unavailable` with a reason to print);
* :meth:`Adapter.prepare` builds whatever stands in for the serial port (untimed: a real port costs nothing to
  the decoder either);
* :meth:`Adapter.run` is the timed part: it decodes the whole stream and returns the decoder's own outputs;
* :meth:`Adapter.to_dicts` turns those outputs into ``{label: value}`` dicts for the sanity checks (untimed).

Adapters never re-implement a peer's parsing: they call the peer's own entry point, and only supply the bytes
(through :mod:`peers.fake_io`) and the loop that a caller of that library would write anyway.
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

__all__ = ["Adapter", "Mode", "Unavailable", "all_adapters"]

Mode = Literal["historique", "standard"]


class Unavailable(Exception):
    """The peer cannot run here (not installed, wrong Python, shadowed package): the message says why."""


class Adapter(ABC):
    """One decoder under test.

    ``modes`` lists the modes the peer really decodes (checked by the benchmark's probe, which also runs the
    other mode on a few frames to show what happens there).  ``drives`` says, in one line, which entry point of
    the peer is called, so the report can say what was measured.
    """

    name: ClassVar[str]
    dist: ClassVar[str | None] = None  # PyPI distribution, None for code of this repository
    modes: ClassVar[tuple[Mode, ...]] = ("historique", "standard")
    drives: ClassVar[str] = ""
    pypi: ClassVar[bool] = True  # counts towards "the fastest PyPI decoder"
    reference: ClassVar[bool] = False  # the decoder the others are compared with
    #: The last exception a peer raised and the adapter swallowed (as a caller of that peer would), kept so the
    #: probe can say *why* a mode yields nothing.  Stored as the object: formatting it would cost time.
    last_error: BaseException | None = None

    @property
    def version(self) -> str:
        """The installed version of :attr:`dist` (or ``"repo"``)."""
        if self.dist is None:
            return "repo"
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    @property
    def label(self) -> str:
        """Name and version, as printed in the tables."""
        return self.name if self.dist is None else f"{self.name} {self.version}"

    @abstractmethod
    def load(self) -> None:
        """Import the peer; raise :class:`Unavailable` if it cannot run here."""

    @abstractmethod
    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        """Everything that must exist before the first byte arrives (untimed)."""

    @abstractmethod
    def run(self, prepared: Any) -> list[Any]:
        """Decode the whole stream (timed); return the peer's own frame objects."""

    def to_dicts(self, outputs: list[Any]) -> list[dict[str, Any]]:
        """The peer's frames as ``{label: value}`` dicts (untimed); most peers already return dicts."""
        return [dict(o) for o in outputs]


def all_adapters() -> list[Adapter]:
    """Every adapter, ours first, in table order."""
    # Imported here because each module subclasses Adapter (defined above).  None of them imports its peer
    # package at import time: that happens in load(), so a missing package only skips its own adapter.
    from peers.line_by_line import LineByLineAdapter
    from peers.ours import OursAdapter, OursNoCacheAdapter
    from peers.pypi_enedis_tic import EnedisTicAdapter
    from peers.pypi_kylin import KylinAdapter
    from peers.pypi_pyteleinfo import PyteleinfoAdapter
    from peers.pypi_python_tic import PythonTicAdapter
    from peers.pypi_pyticcom import PyticcomAdapter
    from peers.pypi_serial_teleinfo import SerialTeleinfoAdapter
    from peers.pypi_teleinfo import TeleinfoAdapter

    return [
        OursAdapter(),
        OursNoCacheAdapter(),
        LineByLineAdapter(),
        EnedisTicAdapter(),
        PyteleinfoAdapter(),
        TeleinfoAdapter(),
        SerialTeleinfoAdapter(),
        KylinAdapter(),
        PythonTicAdapter(),
        PyticcomAdapter(),
    ]
