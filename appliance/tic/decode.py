"""Decoding TIC frames into typed readings, in either mode, with one checksum rule per mode.

::

    historique  LF label SP data SP chk CR                  chk = (sum(label SP data) & 0x3F) + 0x20
    standard    LF label HT [horodate HT] data HT chk CR    chk = (sum(label ... data HT) & 0x3F) + 0x20

(02E v4 §1.5.2 note; 54E §5.3.6.)  The two rules never accept the same group, and accepting either would double
the rate of undetected errors, so each frame is checked with exactly the rule of its mode (docs/PROTOCOL.md §4, §10.4).
The checksum may be a space (docs/PROTOCOL.md §10.1): nothing here strips a line.  Standard data may contain spaces
(docs/PROTOCOL.md §10.2): standard groups are split on HT only.  A group that passes its checksum must still match its
label's length and charset (``labels.py``); otherwise it is rejected as ``format``, because a bit-6 flip keeps the
checksum valid.

Bad input never raises: every rejected group or frame is counted by reason in :attr:`Decoder.rejects`
(``checksum``, ``malformed``, ``format``, ``interrupted``, ``overflow``, ``empty``) and the rest is kept.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from appliance.tic.fields import (
    decode_optarif,
    decode_ppot,
    decode_profile,
    decode_relais,
    decode_stge,
    parse_horodate,
)
from appliance.tic.framing import DEFAULT_MAX_FRAME, FrameAssembler
from appliance.tic.labels import HISTORIQUE, STANDARD, Kind, LabelSpec

__all__ = ["MODES", "REJECT_REASONS", "Decoder", "Frame", "Mode", "Value", "detect_mode"]

Mode = Literal["historique", "standard"]
MODES: Final = ("historique", "standard")
REJECT_REASONS: Final = ("checksum", "malformed", "format", "interrupted", "overflow", "empty")
Value = int | str

# Every label of both specs starts with a letter and is at most 9 characters (SMAXSN1-1).
_LABEL_OK = re.compile(rb"[A-Z][A-Z0-9+\-]{0,9}")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_NO_VALUE: Final = object()  # DATE: a timestamp and no value
_SKIP: Final = ("",)  # blank line between groups (line-end normalised captures): not a group at all


@dataclass(slots=True)
class Frame:
    """One decoded frame.  Only groups that passed every check are in ``values``/``timestamps``.

    ``received_at`` (POSIX seconds) is set by whoever read the bytes; the decoder itself is clock-free.
    ``invalid`` lists the labels of rejected groups (as read, so possibly garbled).
    """

    mode: Mode
    values: dict[str, Value]
    timestamps: dict[str, str] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    clock_degraded: bool = False
    received_at: float | None = None
    known_meter: str | None = None

    @property
    def meter(self) -> str | None:
        """The meter's address: ADCO (historique) or ADSC (standard) from this frame, else ``known_meter``.

        ``known_meter`` is what the reader learnt from earlier frames of the same stream, so a frame whose
        address group alone was corrupted can still be attributed; the decoder itself never guesses it.
        """
        v = self.values.get("ADSC" if self.mode == "standard" else "ADCO")
        return v if isinstance(v, str) else self.known_meter

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

    def to_json(self) -> dict[str, Any]:
        """The ``teleinfo decode`` object: the contract in the issue, plus decoded structured fields."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "meter": self.meter,
            "values": self.values,
            "timestamps": self.timestamps,
            "invalid": self.invalid,
        }
        table = STANDARD if self.mode == "standard" else HISTORIQUE
        units = {k: s.unit for k in self.values if (s := table.get(k)) is not None and s.unit}
        if units:
            out["units"] = units
        v = self.values
        if isinstance(stge := v.get("STGE"), str):
            out["stge"] = decode_stge(stge)
        if isinstance(relais := v.get("RELAIS"), int):
            out["relais"] = decode_relais(relais)
        profiles = {k: decode_profile(p) for k in ("PJOURF+1", "PPOINTE") if isinstance(p := v.get(k), str)}
        if profiles:
            out["profiles"] = profiles
        if isinstance(optarif := v.get("OPTARIF"), str):
            out["tariff"] = decode_optarif(optarif)
        if isinstance(ppot := v.get("PPOT"), str):
            out["ppot"] = decode_ppot(ppot)
        if self.timestamps:
            out["clock_degraded"] = self.clock_degraded
        return out


def _label_text(raw: bytes) -> str:
    """A printable rendering of a (possibly corrupted) label, for the ``invalid`` list."""
    return "".join(chr(c) if 0x20 < c < 0x7F else "?" for c in raw[:16]) or "?"


def _typed(spec: LabelSpec, data: bytes) -> object:
    kind = spec.kind
    if kind is Kind.INT:
        return int(data)
    if kind is Kind.NONE:
        return _NO_VALUE
    text = data.decode("ascii")
    return text.strip(" ") if kind is Kind.TEXT else text


# A parsed line is (label, value, iso_timestamp | None, degraded) or (reason, label) when rejected.
_Parsed = tuple[Any, ...]


def _check_fields(table: dict[str, LabelSpec], label: bytes, horodate: bytes | None, data: bytes) -> _Parsed:
    if _LABEL_OK.fullmatch(label) is None:
        return ("format", _label_text(label))
    name = label.decode("ascii")
    stamp: tuple[str, bool] | None = None
    if horodate is not None:
        stamp = parse_horodate(horodate)
        if stamp is None:
            return ("format", name)
    spec = table.get(name)
    if spec is None:  # unknown label (early "G1 pilote" meters: SINST1, SMAXN...): kept as text
        if _PRINTABLE.fullmatch(data) is None:
            return ("format", name)
        value: object = data.decode("ascii").strip(" ")
    else:
        if spec.horodate != (horodate is not None):
            return ("format", name)
        assert spec.pattern is not None
        if spec.pattern.fullmatch(data) is None:
            return ("format", name)
        value = _typed(spec, data)
    if stamp is None:
        return (name, value, None, False)
    return (name, value, stamp[0], stamp[1])


def _parse_standard(line: bytes) -> _Parsed:
    # line = label HT [horodate HT] data HT chk CR   (the LF was the split point)
    n = len(line)
    if n < 5 or line[n - 1] != 0x0D or line[n - 3] != 0x09:
        return ("malformed", _label_text(line.split(b"\t", 1)[0]))
    parts = line[: n - 3].split(b"\t")
    if (sum(line[: n - 2]) & 0x3F) + 0x20 != line[n - 2]:
        return ("checksum", _label_text(parts[0]))
    if len(parts) == 2:
        return _check_fields(STANDARD, parts[0], None, parts[1])
    if len(parts) == 3:
        return _check_fields(STANDARD, parts[0], parts[1], parts[2])
    return ("malformed", _label_text(parts[0]))


def _parse_historique(line: bytes) -> _Parsed:
    # line = label SP data SP chk CR
    n = len(line)
    if n < 6 or line[n - 1] != 0x0D or line[n - 3] != 0x20:
        return ("malformed", _label_text(line.split(b" ", 1)[0]))
    zone = line[: n - 3]
    label, sep, data = zone.partition(b" ")
    if (sum(zone) & 0x3F) + 0x20 != line[n - 2]:
        return ("checksum", _label_text(label))
    if not sep:
        return ("malformed", _label_text(label))
    return _check_fields(HISTORIQUE, label, None, data)


_PARSERS = {"standard": _parse_standard, "historique": _parse_historique}


def detect_mode(body: bytes) -> Mode:
    """The mode of a frame body: standard groups hold at least two HT each, historique groups none.

    A majority rule rather than ``b"\\t" in body``, so a single bit flip ('I' 0x49 -> HT 0x09) in a
    historique frame does not send every group of it to the wrong checksum rule.
    """
    return "standard" if body.count(b"\t") > body.count(b"\n") else "historique"


class Decoder:
    """Stateful decoder: feed raw bytes, get :class:`Frame` objects.

    ``mode`` is ``"auto"`` (each frame's mode is read from its bytes; :attr:`mode` remembers the last one),
    ``"historique"`` or ``"standard"`` (frames are checked with that rule only).

    >>> from appliance.tic.encode import encode_frame, encode_group
    >>> d = Decoder()
    >>> [f.values for f in d.feed(encode_frame([encode_group("historique", "PAPP", "00750")]))]
    [{'PAPP': 750}]
    """

    def __init__(self, mode: str = "auto", max_frame: int = DEFAULT_MAX_FRAME, cache_size: int = 2048) -> None:
        if mode not in ("auto", *MODES):
            raise ValueError(f"mode must be auto, historique or standard, not {mode!r}")
        self.forced: Mode | None = None if mode == "auto" else mode  # type: ignore[assignment]
        self.mode: Mode | None = self.forced
        self.assembler = FrameAssembler(max_frame)
        self.frames = 0
        self.groups = 0
        self._rejects: Counter[str] = Counter()
        # Identical lines always decode identically (the function is pure), and most groups repeat from
        # frame to frame (ids, tariff names, slowly moving indexes), so decoded lines are memoised per mode.
        self._cache_size = cache_size
        self._caches: dict[str, dict[bytes, _Parsed]] = {m: {} for m in MODES}
        # The same, for the valid groups with a value and no horodate only (most of them): (label, value).
        self._plain: dict[str, dict[bytes, tuple[str, Value]]] = {m: {} for m in MODES}

    @property
    def rejects(self) -> Counter[str]:
        """Rejections by reason: group-level from decoding, frame-level from framing."""
        c = Counter(self._rejects)
        st = self.assembler.stats
        if st.interrupted:
            c["interrupted"] += st.interrupted
        if st.overflow:
            c["overflow"] += st.overflow
        return c

    @property
    def epoch(self) -> tuple[int, int, int]:
        """A value that changes whenever :attr:`rejects` may have: cheap enough to poll after every read.

        Rejections only happen while a frame body is decoded or when the framer drops a frame, so the framer's
        counters say when building the :attr:`rejects` Counter again is worth it (a serial read every few ms).
        """
        st = self.assembler.stats
        return (st.frames, st.interrupted, st.overflow)

    def reset(self) -> None:
        """Drop any partial frame (call after a reconnect); counters are kept."""
        self.assembler.reset()

    def feed(self, data: bytes) -> list[Frame]:
        """Decode every frame that ``data`` completes."""
        out = []
        for body in self.assembler.feed(data):
            frame = self.decode_body(body)
            if frame is not None:
                out.append(frame)
        return out

    def decode_body(self, body: bytes, mode: Mode | None = None) -> Frame | None:
        """Decode the bytes between STX and ETX; None if they hold no group at all."""
        mode = mode or self.forced or detect_mode(body)
        self.mode = mode
        cache = self._caches[mode]
        parse = _PARSERS[mode]
        values: dict[str, Value] = {}
        stamps: dict[str, str] = {}
        invalid: list[str] = []
        degraded = False
        rejects = self._rejects
        ok = 0
        lines = body.split(b"\n")
        # Every group starts with LF, so bytes between STX and the first LF are never a group: a corrupted
        # byte that became STX mid-frame leaves the tail of a group there, which must not be parsed.
        if lines[0] not in (b"", b"\r"):
            rejects["malformed"] += 1
            invalid.append(_label_text(lines[0].split(b"\t" if mode == "standard" else b" ", 1)[0]))
        plain = self._plain[mode]
        for line in lines[1:]:
            kv = plain.get(line)
            if kv is not None:  # the common case: a valid group seen before, with a value and no horodate
                values[kv[0]] = kv[1]
                ok += 1
                continue
            r = cache.get(line)
            if r is None:
                r = _SKIP if line in (b"", b"\r") else parse(line)
                if len(cache) >= self._cache_size:
                    cache.clear()
                    plain.clear()
                cache[line] = r
                if len(r) == 4 and r[2] is None and r[1] is not _NO_VALUE:
                    plain[line] = (r[0], r[1])
                    values[r[0]] = r[1]
                    ok += 1
                    continue
            if len(r) == 4:
                ok += 1
                name, value, stamp, deg = r
                if value is not _NO_VALUE:
                    values[name] = value
                if stamp is not None:
                    stamps[name] = stamp
                    degraded = degraded or deg
            elif r is not _SKIP:
                rejects[r[0]] += 1
                invalid.append(r[1])
        if not ok and not invalid:
            rejects["empty"] += 1
            return None
        self.groups += ok
        self.frames += 1
        return Frame(mode, values, stamps, invalid, degraded)
