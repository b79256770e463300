"""Records: everything that travels the fan-out to the outputs, besides the meter's frames.

One path for every record (Telegraf: self-checks are inputs whose results reach the same outputs): the reader
hands :class:`~appliance.tic.Frame` objects to :class:`~appliance.outputs.base.Fanout`, the self-check scheduler
hands :class:`CheckRun` objects, the health sampler :class:`HealthSample` objects, and a later producer (a
tariff engine...) its own record type.  Every record has a ``kind``; an output declares the kinds it takes
(:class:`~appliance.outputs.base.RecordOutput`) and serialises them itself, so adding a record kind touches the
producer and the outputs that want it, nothing in between.

Frames are the only records that are spooled to disk and replayed in order.  Every other kind goes into a
small bounded lane per output that is sent before the frames, so a check result never waits behind an hour of
spooled frames (docs/DATA_FORMAT.md sections 5 and 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from appliance.checks.results import CheckResult
from appliance.stats import StatsSnapshot

if TYPE_CHECKING:
    from appliance.tariff.engine import TariffEngine

__all__ = [
    "CHECK",
    "FRAME",
    "HEALTH",
    "TARIFF",
    "UPDATE",
    "CheckRun",
    "HealthSample",
    "Record",
    "TariffRecord",
    "UpdateState",
]

FRAME: Final = "frame"
CHECK: Final = "check"
HEALTH: Final = "health"
TARIFF: Final = "tariff"
UPDATE: Final = "update"


class Record(Protocol):
    """Anything the fan-out carries: it says what kind it is."""

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CheckRun:
    """The results of one run of one self-check (``check`` is its registered name), and its worst status."""

    kind: ClassVar[str] = CHECK

    check: str
    status: str
    at: float
    results: tuple[CheckResult, ...]

    def to_json(self) -> dict[str, Any]:
        """``{status, at, results}``: the health socket's ``checks.last.<check>`` and the retained MQTT message."""
        return {"status": self.status, "at": self.at, "results": [r.to_dict() for r in self.results]}


@dataclass(frozen=True, slots=True)
class HealthSample:
    """The appliance's own counters at ``at``: a :meth:`Stats.snapshot` of the machine ``host``."""

    kind: ClassVar[str] = HEALTH

    at: float
    host: str
    snapshot: StatsSnapshot


@dataclass(frozen=True, slots=True)
class TariffRecord:
    """The tariff engine's record at ``at`` (POSIX seconds): :meth:`TariffEngine.snapshot` (docs/TARIFF.md
    section 5), with the meter and TIC mode it was counted from (None before the first frame that named them).

    MQTT publishes :meth:`to_json` retained with Home Assistant entities, InfluxDB writes it as
    ``teleinfo_tariff`` and ``teleinfo_tariff_period`` points (docs/DATA_FORMAT.md section 7).
    """

    kind: ClassVar[str] = TARIFF

    at: float
    meter: str | None
    mode: str | None
    snapshot: Mapping[str, Any]

    @classmethod
    def from_engine(cls, engine: TariffEngine, at: datetime) -> TariffRecord:
        """The record of ``engine`` at the aware instant ``at``."""
        return cls(at.timestamp(), engine.meter, engine.mode, engine.snapshot(at))

    def to_json(self) -> dict[str, Any]:
        """The snapshot, as published on MQTT and served to the live page."""
        return dict(self.snapshot)


@dataclass(frozen=True, slots=True)
class UpdateState:
    """What runs and what is pending (docs/UPDATES.md): the running ``version``, the ``release`` directory,
    ``last_update`` (phase, target, reason, end) and pending reboots, as :class:`appliance.update.reboot.
    UpdateReporter` sees them; published at start and whenever one of them changes.  MQTT retains it on
    ``<base>/bridge/<client id>/update``."""

    kind: ClassVar[str] = UPDATE

    at: float
    version: str
    section: Mapping[str, Any]  # the update section of /status

    def to_json(self) -> dict[str, Any]:
        """``{version, release, last_update, reboot_required, reboot_reasons, at}``."""
        return {"version": self.version, **self.section, "at": self.at}
