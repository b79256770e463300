"""Hand-made meter frames whose every value the test chooses: a historique meter on the BASE or HC/HP contract.

The simulator (appliance.simulator) makes realistic streams; these make exact ones, so a test knows the energy
each index moved by and the power each frame shows, whatever the reception times the service gives them.
"""

from __future__ import annotations

from appliance.tic import encode_frame, encode_group

__all__ = ["METER", "historique_frame"]

METER = "021861348497"


def historique_frame(
    indexes: dict[str, int], papp: int, ptec: str = "TH..", *, meter: str = METER, isousc: int = 30
) -> bytes:
    """One historique frame: ``indexes`` (``{"BASE": 1000}``, ``{"HCHC": ..., "HCHP": ...}``) in Wh, ``papp`` in VA."""
    optarif = "BASE" if "BASE" in indexes else "HC.."
    groups = [
        ("ADCO", meter),
        ("OPTARIF", optarif),
        ("ISOUSC", f"{isousc:02d}"),
        *((label, f"{wh:09d}") for label, wh in indexes.items()),
        ("PTEC", ptec),
        ("IINST", f"{max(0, round(papp / 230)):03d}"),
        ("IMAX", "090"),
        ("PAPP", f"{papp:05d}"),
        ("HHPHC", "A"),
        ("MOTDETAT", "000000"),
    ]
    return encode_frame(encode_group("historique", label, value) for label, value in groups)
