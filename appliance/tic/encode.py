"""Building TIC groups and frames, byte for byte as a meter sends them (used by the simulator and tests).

Group layout (docs/PROTOCOL.md §3-§4)::

    historique  LF label SP data SP chk CR              chk over  label SP data
    standard    LF label HT [horodate HT] data HT chk CR  chk over  label ... data HT

``chk = (sum & 0x3F) + 0x20``; a space is a legal checksum.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CR", "EOT", "ETX", "LF", "STX", "checksum", "encode_frame", "encode_group"]

STX, ETX, EOT = b"\x02", b"\x03", b"\x04"
LF, CR = b"\n", b"\r"


def checksum(zone: bytes) -> int:
    """The TIC checksum character of ``zone`` (the bytes the mode's rule sums)."""
    return (sum(zone) & 0x3F) + 0x20


def encode_group(mode: str, label: str, data: str = "", horodate: str | None = None) -> bytes:
    """One information group, LF to CR.

    >>> encode_group("historique", "PTEC", "HP..")
    b'\\nPTEC HP..  \\r'
    >>> encode_group("standard", "DATE", "", "E240924225642")
    b'\\nDATE\\tE240924225642\\t\\tH\\r'
    """
    if mode == "historique":
        if horodate is not None:
            raise ValueError("historique groups carry no horodate")
        zone = f"{label} {data}".encode("ascii")
        return LF + zone + b" " + bytes((checksum(zone),)) + CR
    if mode != "standard":
        raise ValueError(f"unknown TIC mode {mode!r}")
    parts = [label] if horodate is None else [label, horodate]
    zone = ("\t".join([*parts, data]) + "\t").encode("ascii")
    return LF + zone + bytes((checksum(zone),)) + CR


def encode_frame(groups: Iterable[bytes]) -> bytes:
    """STX, the groups, ETX."""
    return STX + b"".join(groups) + ETX
