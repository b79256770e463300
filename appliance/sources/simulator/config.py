"""``[source.simulator]``: the built-in meter simulator's settings (``source.kind = "simulator"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.config import opt

__all__ = ["SimulatorConfig"]


@dataclass(frozen=True)
class SimulatorConfig:
    """The built-in meter simulator (used when source.kind = "simulator" or with --simulate)."""

    mode: Literal["historique", "standard"] = opt("historique", "TIC mode the simulated meter speaks.")
    phases: Literal[1, 3] = opt(1, "1 (single-phase) or 3 (three-phase).")
    contract: Literal["BASE", "HCHP", "TEMPO", "EJP"] = opt("BASE", "Tariff contract: BASE, HCHP, TEMPO or EJP.")
    producer: bool = opt(False, "Also inject energy into the grid (standard mode only).")
    errors: float = opt(0.0, "Fraction of frames corrupted on purpose (bit flips, EOT, truncation).", lo=0, hi=1)
    seed: int = opt(1, "Seed of the simulated load curve, so runs are reproducible.")

    def validate(self) -> list[tuple[str, str]]:
        if self.producer and self.mode == "historique":
            return [("producer", "a producer needs standard mode: historique TIC carries no production data")]
        return []
