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
from typing import Final

from appliance.tic.fields import parse_horodate
from appliance.tic.frame import MODES, Frame, Mode, RejectReason, Value, decoded_frame
from appliance.tic.framing import DEFAULT_MAX_FRAME, FrameAssembler
from appliance.tic.labels import HISTORIQUE, STANDARD, Kind, LabelSpec

__all__ = ["Decoder", "detect_mode"]

# Every label of both specs starts with a letter and is at most 9 characters (SMAXSN1-1).
_LABEL_OK = re.compile(rb"[A-Z][A-Z0-9+\-]{0,9}")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_NO_VALUE: Final = object()  # DATE: a timestamp and no value


# What parsing one line gives, as plain tuples (a named tuple costs 60 times as much to build, on a path that
# runs for every new line): a group that passed every check, or why one was rejected.  The length tells them
# apart, and mypy narrows on it.
_Group = tuple[str, object, str | None, bool]
"""label, typed value (or ``_NO_VALUE``), ISO horodate or None, the meter's clock degraded."""
_Rejected = tuple[RejectReason, str]
"""reason, the label as read (printable)."""
_Parsed = _Group | _Rejected
_NO_STAMPS: Final[dict[str, str]] = {}
_NO_INVALID: Final[list[str]] = []
_SKIP: Final[_Rejected] = (RejectReason.EMPTY, "")  # blank line between groups (line-end normalised captures)


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


def _digits(spec: LabelSpec) -> int:
    """The data length of a label whose data is exactly that many decimal digits (its default pattern), else -1:
    ``len(data) == n and data.isdigit()`` checks it without a regular expression."""
    if (
        spec.kind in (Kind.INT, Kind.ID)
        and spec.pattern is not None
        and spec.pattern.pattern == rb"[0-9]{%d}" % spec.length
    ):
        return spec.length
    return -1


# Each known label by its bytes: (spec, name, digits-only length or -1).  A known label is a valid label, so only
# unknown ones need _LABEL_OK, and most data fields are checked by length and isdigit() rather than a regex.
_KNOWN: Final[dict[str, dict[bytes, tuple[LabelSpec, str, int]]]] = {
    mode: {name.encode("ascii"): (spec, name, _digits(spec)) for name, spec in table.items()}
    for mode, table in (("historique", HISTORIQUE), ("standard", STANDARD))
}


def _check_fields(
    known: dict[bytes, tuple[LabelSpec, str, int]], label: bytes, horodate: bytes | None, data: bytes
) -> _Parsed:
    entry = known.get(label)
    if entry is None:
        if _LABEL_OK.fullmatch(label) is None:
            return (RejectReason.FORMAT, _label_text(label))
        name = label.decode("ascii")
    else:
        name = entry[1]
    stamp: tuple[str, bool] | None = None
    if horodate is not None:
        stamp = parse_horodate(horodate)
        if stamp is None:
            return (RejectReason.FORMAT, name)
    if entry is None:  # unknown label (early "G1 pilote" meters: SINST1, SMAXN...): kept as text
        if _PRINTABLE.fullmatch(data) is None:
            return (RejectReason.FORMAT, name)
        value: object = data.decode("ascii").strip(" ")
    else:
        spec, _, digits = entry
        if spec.horodate != (horodate is not None):
            return (RejectReason.FORMAT, name)
        if digits >= 0:
            if len(data) != digits or not data.isdigit():
                return (RejectReason.FORMAT, name)
            value = int(data) if spec.kind is Kind.INT else data.decode("ascii")
        else:
            assert spec.pattern is not None
            if spec.pattern.fullmatch(data) is None:
                return (RejectReason.FORMAT, name)
            value = _typed(spec, data)
    if stamp is None:
        return (name, value, None, False)
    return (name, value, stamp[0], stamp[1])


_KNOWN_STANDARD: Final = _KNOWN["standard"]
_KNOWN_HISTORIQUE: Final = _KNOWN["historique"]


def _parse_standard(line: bytes) -> _Parsed:
    # line = label HT [horodate HT] data HT chk CR   (the LF was the split point)
    n = len(line)
    if n < 5 or line[n - 1] != 0x0D or line[n - 3] != 0x09:
        return (RejectReason.MALFORMED, _label_text(line.split(b"\t", 1)[0]))
    parts = line[: n - 3].split(b"\t")
    if (sum(line[: n - 2]) & 0x3F) + 0x20 != line[n - 2]:
        return (RejectReason.CHECKSUM, _label_text(parts[0]))
    if len(parts) == 2:
        return _check_fields(_KNOWN_STANDARD, parts[0], None, parts[1])
    if len(parts) == 3:
        return _check_fields(_KNOWN_STANDARD, parts[0], parts[1], parts[2])
    return (RejectReason.MALFORMED, _label_text(parts[0]))


def _parse_historique(line: bytes) -> _Parsed:
    # line = label SP data SP chk CR
    n = len(line)
    if n < 6 or line[n - 1] != 0x0D or line[n - 3] != 0x20:
        return (RejectReason.MALFORMED, _label_text(line.split(b" ", 1)[0]))
    zone = line[: n - 3]
    label, sep, data = zone.partition(b" ")
    if (sum(zone) & 0x3F) + 0x20 != line[n - 2]:
        return (RejectReason.CHECKSUM, _label_text(label))
    if not sep:
        return (RejectReason.MALFORMED, _label_text(label))
    return _check_fields(_KNOWN_HISTORIQUE, label, None, data)


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
        self._rejects: Counter[RejectReason] = Counter()
        # Identical lines always decode identically (the function is pure), and most groups repeat from
        # frame to frame (ids, tariff names, slowly moving indexes), so decoded lines are memoised per mode.
        self._cache_size = cache_size
        self._caches: dict[str, dict[bytes, _Parsed]] = {m: {} for m in MODES}
        # The same, for the valid groups with a value and no horodate only (most of them): (label, value).
        self._plain: dict[str, dict[bytes, tuple[str, Value]]] = {m: {} for m in MODES}

    @property
    def rejects(self) -> Counter[RejectReason]:
        """Rejections by reason: group-level from decoding, frame-level from framing."""
        c = Counter(self._rejects)
        st = self.assembler.stats
        if st.interrupted:
            c[RejectReason.INTERRUPTED] += st.interrupted
        if st.overflow:
            c[RejectReason.OVERFLOW] += st.overflow
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

    def feed(self, data: bytes, received_at: float | None = None) -> list[Frame]:
        """Decode every frame that ``data`` completes; ``received_at`` (the caller's clock: the decoder has none)
        is stamped on each as it is built, so the reader never copies a frame to add it."""
        out = []
        decode = self.decode_body
        for body in self.assembler.feed(data):
            frame = decode(body, None, received_at)
            if frame is not None:
                out.append(frame)
        return out

    def decode_body(self, body: bytes, mode: Mode | None = None, received_at: float | None = None) -> Frame | None:
        """Decode the bytes between STX and ETX; None if they hold no group at all."""
        mode = mode or self.forced or detect_mode(body)
        self.mode = mode
        cache = self._caches[mode]
        values: dict[str, Value] = {}
        # Historique has no horodate and most frames no rejected group: a frame without them shares these empty
        # containers (a frame and its containers are never modified once built), the others get their own.
        stamps: dict[str, str] = {} if mode == "standard" else _NO_STAMPS
        invalid: list[str] = _NO_INVALID
        degraded = False
        missed = 0  # lines that are no valid group (blank separators, rejected groups): rare, so counted
        lines = body.split(b"\n")
        rest = iter(lines)
        first = next(rest)
        # Every group starts with LF, so bytes between STX and the first LF are never a group: a corrupted
        # byte that became STX mid-frame leaves the tail of a group there, which must not be parsed.
        if first not in (b"", b"\r"):
            self._rejects[RejectReason.MALFORMED] += 1
            invalid = [_label_text(first.split(b"\t" if mode == "standard" else b" ", 1)[0])]
        plain = self._plain[mode]
        for line in rest:
            kv = plain.get(line)
            if kv is not None:  # the common case: a valid group seen before, with a value and no horodate
                values[kv[0]] = kv[1]
                continue
            r = cache.get(line)
            if r is None:
                r = _SKIP if line in (b"", b"\r") else _PARSERS[mode](line)
                if len(cache) >= self._cache_size:
                    cache.clear()
                    plain.clear()
                cache[line] = r
                if len(r) == 4 and r[2] is None and r[1] is not _NO_VALUE:
                    value: Value = r[1]  # type: ignore[assignment]  # int | str once not _NO_VALUE
                    plain[line] = (r[0], value)
                    values[r[0]] = value
                    continue
            if len(r) == 4:
                name, typed, stamp, deg = r
                if typed is not _NO_VALUE:
                    values[name] = typed  # type: ignore[assignment]  # int | str once not _NO_VALUE
                if stamp is not None:
                    stamps[name] = stamp
                    degraded = degraded or deg
                continue
            missed += 1
            if r is not _SKIP:
                reason, label = r
                self._rejects[reason] += 1
                if invalid is _NO_INVALID:
                    invalid = []
                invalid.append(label)
        ok = len(lines) - 1 - missed
        if not ok and not invalid:
            self._rejects[RejectReason.EMPTY] += 1
            return None
        self.groups += ok
        self.frames += 1
        return decoded_frame(mode, values, stamps, invalid, degraded, received_at)
