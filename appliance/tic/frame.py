"""The decoder's contract with the rest of the appliance: an immutable :class:`Frame`, why groups are rejected
(:class:`RejectReason`), the two modes and their line speeds, and the one rule that says a frame verified.

Pure: no I/O, no clock.  A frame is shared by every output thread, so it is frozen: the reader adds the
reception time and the meter it learnt from earlier frames by building a new one (:meth:`Frame.received`).
"""

from __future__ import annotations

import functools
import json
import json.encoder
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal

from appliance.tic.fields import decode_optarif, decode_ppot, decode_profile, decode_relais, decode_stge
from appliance.tic.labels import HISTORIQUE, STANDARD

__all__ = ["BAUDRATES", "MODES", "REJECT_REASONS", "Frame", "Mode", "RejectReason", "Value"]

Mode = Literal["historique", "standard"]
MODES: Final[tuple[Mode, Mode]] = ("historique", "standard")
BAUDRATES: Final[dict[str, int]] = {"historique": 1200, "standard": 9600}
"""Line speed of each mode, 7E1 (Enedis-NOI-CPT_02E §1.3.1.1; Enedis-NOI-CPT_54E §5.3.1)."""
Value = int | str


class RejectReason(StrEnum):
    """Why a group or a frame was not kept; the keys of :attr:`Decoder.rejects` and of the health counters."""

    CHECKSUM = "checksum"  # the group's checksum does not match (the mode's rule)
    MALFORMED = "malformed"  # no valid group structure (separators, CR, too short)
    FORMAT = "format"  # checksum right, but label, horodate or data do not fit the label's specification
    INTERRUPTED = "interrupted"  # the frame was cut: EOT, STX before ETX, bytes between frames
    OVERFLOW = "overflow"  # the frame grew past the assembler's bound
    EMPTY = "empty"  # a frame with no group at all


REJECT_REASONS: Final = tuple(r.value for r in RejectReason)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.  Only groups that passed every check are in ``values``/``timestamps``.

    ``received_at`` (POSIX seconds) is given by whoever read the bytes (``Decoder.feed(data, received_at)``,
    or :meth:`received`); the decoder itself is clock-free.  ``invalid`` lists the labels of rejected groups (as
    read, so possibly garbled).  ``values``, ``timestamps`` and ``invalid`` are never modified once the frame is
    built.
    """

    kind: ClassVar[str] = "frame"  # the record kind outputs declare they take (appliance.records)

    mode: Mode
    values: dict[str, Value]
    timestamps: dict[str, str] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    clock_degraded: bool = False
    received_at: float | None = None
    known_meter: str | None = None
    # The frame's JSON (:meth:`json_bytes`), made by whichever thread asks first and shared by all the others.
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def meter(self) -> str | None:
        """The meter's address: ADCO (historique) or ADSC (standard) from this frame, else ``known_meter``.

        ``known_meter`` is what the reader learnt from earlier frames of the same stream, so a frame whose
        address group alone was corrupted can still be attributed; the decoder itself never guesses it.
        """
        v = self.values.get("ADSC" if self.mode == "standard" else "ADCO")
        return v if isinstance(v, str) else self.known_meter

    @property
    def verified(self) -> bool:
        """Whether the frame proves the link works: some valid groups, and at least as many as rejected ones.

        The serial source's speed detection and no-data watchdog, ``teleinfo doctor`` and the GPIO rules all
        use this one rule: a frame at the wrong speed decodes to mostly rejected groups.
        """
        good = len(self.values) + len(self.timestamps)
        return good > 0 and good >= len(self.invalid)

    def received(self, at: float, known_meter: str | None = None) -> Frame:
        """This frame as read at ``at``, attributed to ``known_meter`` if it names no meter itself: a new frame
        (sharing the containers, which are never modified)."""
        return decoded_frame(
            self.mode, self.values, self.timestamps, self.invalid, self.clock_degraded, at, known_meter
        )

    def to_record(self) -> dict[str, Any]:
        """Everything needed to rebuild this frame later (the on-disk spool, the raw journal's replay)."""
        rec: dict[str, Any] = {"mode": self.mode, "values": self.values}
        if self.timestamps:
            rec["timestamps"] = self.timestamps
        if self.invalid:
            rec["invalid"] = self.invalid
        if self.clock_degraded:
            rec["clock_degraded"] = True
        if self.received_at is not None:
            rec["received_at"] = self.received_at
        if self.known_meter is not None:
            rec["known_meter"] = self.known_meter
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Frame:
        """The inverse of :meth:`to_record`; raises ``KeyError``/``ValueError`` on a damaged record."""
        mode = rec["mode"]
        if mode not in MODES or not isinstance(rec["values"], dict):
            raise ValueError(f"not a frame record: {rec!r:.80}")
        return cls(
            mode,
            rec["values"],
            rec.get("timestamps", {}),
            rec.get("invalid", []),
            bool(rec.get("clock_degraded", False)),
            rec.get("received_at"),
            rec.get("known_meter"),
        )

    def unit(self, label: str) -> str | None:
        """The unit of ``label`` in this frame's mode (None for unknown or unitless labels)."""
        spec = (STANDARD if self.mode == "standard" else HISTORIQUE).get(label)
        return spec.unit if spec else None

    def json_bytes(self) -> bytes:
        """:meth:`to_json` as compact UTF-8 JSON, serialised once per frame: ``teleinfo decode``'s line, and what
        the MQTT state message, the multicast JSON datagram and the control socket's watch line carry whenever
        they send the object unchanged.  (Two threads asking at once may both serialise it, to the same bytes.)"""
        body = self._json
        if body is None:
            body = compact_json(self.to_json())
            _set_json(self, body)
        return body

    def to_json(self) -> dict[str, Any]:
        """The ``teleinfo decode`` object (docs/DATA_FORMAT.md section 1), with decoded structured fields."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "meter": self.meter,
            "values": self.values,
            "timestamps": self.timestamps,
            "invalid": self.invalid,
        }
        units = _units(self.mode, tuple(self.values))
        if units:
            out["units"] = dict(units)
        v = self.values
        if isinstance(stge := v.get("STGE"), str):
            out["stge"] = decode_stge(stge)
        if isinstance(relais := v.get("RELAIS"), int):
            out["relais"] = decode_relais(relais)
        profiles = {k: decode_profile(p) for k in ("PJOURF+1", "PPOINTE") if isinstance(p := v.get(k), str)}
        if profiles:
            out["profiles"] = profiles
        if isinstance(optarif := v.get("OPTARIF"), str):
            out["tariff"] = dict(_optarif(optarif))
        if isinstance(ppot := v.get("PPOT"), str):
            out["ppot"] = decode_ppot(ppot)
        if self.timestamps:
            out["clock_degraded"] = self.clock_degraded
        return out


def _not_serialisable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json.dumps(obj, ensure_ascii=False, separators=(",", ":")) builds a JSONEncoder and a C encoder at every call,
# about half of its time on a frame; this C encoder is built once (no circular-reference check: a frame's object
# is a tree).  Same bytes.
_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER: Any = (
    _MAKE_ENCODER(None, _not_serialisable, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    if _MAKE_ENCODER is not None
    else None
)


def compact_json(obj: Any) -> bytes:
    """``json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()``, about twice as fast.

    >>> compact_json({"mode": "standard", "values": {"EAST": 12, "NGTF": "É"}, "invalid": []})
    b'{"mode":"standard","values":{"EAST":12,"NGTF":"\\xc3\\x89"},"invalid":[]}'
    """
    if _C_ENCODER is None:  # pragma: no cover - CPython always has the C encoder
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return "".join(_C_ENCODER(obj, 0)).encode()


@functools.lru_cache(maxsize=64)
def _units(mode: str, labels: tuple[str, ...]) -> dict[str, str]:
    """The ``units`` of a frame with these labels (a meter sends the same labels frame after frame: computed
    once per set; callers get a copy)."""
    table = STANDARD if mode == "standard" else HISTORIQUE
    return {k: s.unit for k in labels if (s := table.get(k)) is not None and s.unit}


@functools.lru_cache(maxsize=64)
def _optarif(text: str) -> dict[str, Any]:
    return decode_optarif(text)


# The decoder builds a frame for every few hundred bytes: a frozen dataclass's __init__ (object.__setattr__ per
# field) would cost it several percent of its throughput, so it fills the slots through their descriptors, once,
# with everything the reader knows then (the reception time included: Decoder.feed(data, received_at)).
_S = [Frame.__dict__[name].__set__ for name in Frame.__slots__]
_set_json = Frame.__dict__["_json"].__set__


def decoded_frame(
    mode: Mode,
    values: dict[str, Value],
    timestamps: dict[str, str],
    invalid: list[str],
    clock_degraded: bool,
    received_at: float | None = None,
    known_meter: str | None = None,
    _new: Any = object.__new__,
    _s0: Any = _S[0],
    _s1: Any = _S[1],
    _s2: Any = _S[2],
    _s3: Any = _S[3],
    _s4: Any = _S[4],
    _s5: Any = _S[5],
    _s6: Any = _S[6],
    _s7: Any = _S[7],
) -> Frame:
    """``Frame(mode, values, timestamps, invalid, clock_degraded, received_at, known_meter)``, built faster (for
    the decoder and :meth:`Frame.received` only; the trailing arguments are the slot setters, bound once)."""
    frame: Frame = _new(Frame)
    _s0(frame, mode)
    _s1(frame, values)
    _s2(frame, timestamps)
    _s3(frame, invalid)
    _s4(frame, clock_degraded)
    _s5(frame, received_at)
    _s6(frame, known_meter)
    _s7(frame, None)
    return frame
