"""Damage the way a noisy line or a busy meter does it: bit flips, EOT interruptions, truncated frames.

Seeded (:class:`random.Random`), so a test or a demo run gives the same damage every time; each damaged frame
comes with an :class:`Injection` saying what was done and to which part of which group.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Final, Literal

from appliance.tic.encode import EOT

__all__ = ["INJECTION_KINDS", "ErrorInjector", "Injection"]

InjectionKind = Literal["bitflip", "eot", "truncate"]
INJECTION_KINDS: Final = ("bitflip", "eot", "truncate")


@dataclass(frozen=True, slots=True)
class Injection:
    """What :class:`ErrorInjector` did to one frame.

    ``offset`` is the byte flipped (bitflip) or where the frame was cut (eot, truncate: bytes from there on were
    not sent).  ``field`` says what the flipped byte was: ``stx``, ``etx``, ``lf``, ``cr``, ``label``,
    ``separator``, ``horodate``, ``data`` or ``checksum``; ``label`` names the group it belonged to, if any.
    """

    kind: InjectionKind
    offset: int
    bit: int | None = None
    field: str | None = None
    label: str | None = None


class ErrorInjector:
    """Corrupts frames the way a noisy line or a busy meter does, with probability ``rate`` per frame.

    * ``bitflip``: one of bits 0-6 of one byte between STX and ETX inclusive.  A bit-6 flip changes a byte by
      64 and leaves the 6-bit checksum valid, so only the label table's length and charset checks catch it
      (and nothing can catch it inside free text, where ``' '`` becoming ``'`'`` is still printable text).
    * ``eot``: the meter interrupts the frame and sends EOT (02E §1.5.2); the next frame starts with STX.
    * ``truncate``: the frame stops mid-way (a reconnect); the next frame starts with STX.

    Bit 7 is never flipped: it is the parity bit the receiver masks away, so flipping it would change nothing.
    ``counts`` holds how many frames got each kind of damage.

    >>> inj = ErrorInjector(1.0, seed=3)
    >>> data, what = inj.inject(b"\\x02\\nPTEC HP..  \\r\\x03")
    >>> what.kind in INJECTION_KINDS and data != b"\\x02\\nPTEC HP..  \\r\\x03"
    True
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate must be between 0 and 1, not {rate}")
        self.rate = rate
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)  # noqa: S311 - test noise, not cryptography

    def inject(self, data: bytes) -> tuple[bytes, Injection | None]:
        """``data`` (one frame, STX to ETX, possibly after an EOT) corrupted or not, and what was done."""
        rng = self._rng
        if rng.random() >= self.rate:
            return data, None
        stx = data.find(b"\x02")
        last = len(data) - 1
        kind: InjectionKind = rng.choices(INJECTION_KINDS, weights=(6, 2, 2))[0]
        self.counts[kind] += 1
        if kind == "bitflip":
            offset = rng.randint(stx, last)
            bit = rng.randint(0, 6)
            corrupted = bytearray(data)
            corrupted[offset] ^= 1 << bit
            where, label = _locate(data, offset)
            return bytes(corrupted), Injection(kind, offset, bit, where, label)
        offset = rng.randint(stx + 1, last)  # cut after STX and before ETX
        return data[:offset] + (EOT if kind == "eot" else b""), Injection(kind, offset)


def _locate(data: bytes, offset: int) -> tuple[str, str | None]:
    """Which part of which group byte ``offset`` of a frame is."""
    byte = data[offset]
    if offset == data.find(b"\x02"):
        return "stx", None
    if offset == len(data) - 1:
        return "etx", None
    if byte == 0x0A:
        return "lf", None
    start = data.rfind(b"\n", 0, offset) + 1
    end = data.find(b"\r", offset)
    group = data[start:end]
    sep = b"\t" if b"\t" in group else b" "
    label = group.split(sep, 1)[0].decode("ascii")
    pos = offset - start
    if offset == end:
        return "cr", label
    if pos == len(group) - 1:
        return "checksum", label
    seps = [i for i, c in enumerate(group[:-1]) if c == sep[0]]
    if sep == b" ":  # historique: label SP data SP chk (data never holds a space)
        seps = [seps[0], len(group) - 2]
    if pos in seps:
        return "separator", label
    if pos < seps[0]:
        return "label", label
    if len(seps) == 3 and pos < seps[1]:
        return "horodate", label
    return "data", label
