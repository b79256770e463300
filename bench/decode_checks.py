"""Sanity of a decoder's output against what was sent: frames aligned in order, values counted correct whatever
their formatting, and ours checked exactly (types, leading zeros, horodates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from decode_streams import Stream


def _iso(horodate: str) -> str:
    d = horodate[1:]
    offset = {"H": "+01:00", "h": "+01:00", "E": "+02:00", "e": "+02:00"}.get(horodate[0], "")
    return f"20{d[0:2]}-{d[2:4]}-{d[4:6]}T{d[6:8]}:{d[8:10]}:{d[10:12]}{offset}"


def _same(value: Any, sent: tuple[str | None, str]) -> bool:
    """Whether a decoder's value is the sent one, whatever its type and formatting conventions."""
    horodate, data = sent
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return data.isdigit() and int(data) == value
    if not isinstance(value, str):
        return False
    v = value.strip()
    d = data.strip()
    return v in (d, d.rstrip(".")) or (horodate is not None and v in (horodate.strip(), _iso(horodate)))


@dataclass
class Check:
    """What a decoder returned, compared with what was sent."""

    frames: int  # frames returned
    matched: int  # frames aligned with a sent frame
    values_ok: int  # values equal to the sent ones, over the aligned frames

    def values_share(self, stream: Stream) -> float:
        """Correct values over all values sent."""
        return self.values_ok / stream.values if stream.values else 0.0


def check(decoded: list[dict[str, Any]], stream: Stream) -> Check:
    """Align decoded frames with sent ones (in order; a decoder may skip frames) and count correct values.

    Each decoded frame is compared with the next :data:`ALIGN_WINDOW` sent frames and paired with the best one
    (the earliest on a tie), if at least half its values agree.  Consecutive frames often agree on every value
    a decoder returned; pairing with the wrong one of those scores the same, and the window is wide enough for
    the next distinctive frame to bring the alignment back for decoders that skip frames.
    """
    truth = stream.truth
    p = matched = ok = 0
    for frame in decoded:
        if not frame:
            continue
        best, best_j = -1, -1
        for j in range(p, min(p + ALIGN_WINDOW, len(truth))):
            sent = truth[j]
            score = sum(1 for k, v in frame.items() if k in sent and _same(v, sent[k]))
            if score > best:
                best, best_j = score, j
        if best_j >= 0 and best * 2 >= len(frame):
            matched += 1
            ok += best
            p = best_j + 1
    return Check(len(decoded), matched, ok)


#: How many sent frames ahead a decoded frame is looked for (decoders may skip frames, see :func:`check`).
ALIGN_WINDOW = 8

#: A decoder counts for the targets only if it returns at least this share of the sent values, correctly.
SANE_SHARE = 0.9

_KEEP_AS_TEXT = frozenset({"ADCO", "ADSC", "PRM", "VTIC", "MOTDETAT", "PPOT", "STGE"})


def check_ours_exactly(frames: list[Any], stream: Stream) -> list[str]:
    """Every frame of ours against the ground truth: values with their types, horodates, nothing rejected.

    Identifiers and codes must stay text with their leading zeros; other digit strings must be ints; text is
    compared without its space padding; horodates become ISO 8601 with the offset of their season.
    """
    problems: list[str] = []
    if len(frames) != stream.frames:
        problems.append(f"{len(frames)} frames decoded, {stream.frames} sent")
    for i, (frame, sent) in enumerate(zip(frames, stream.truth, strict=False)):
        if frame.invalid:
            problems.append(f"frame {i}: rejected groups {frame.invalid}")
        for label, (horodate, data) in sent.items():
            if label != "DATE":
                want: Any = int(data) if data.isdigit() and label not in _KEEP_AS_TEXT else data.strip(" ")
                got = frame.values.get(label, "<missing>")
                if got != want or type(got) is not type(want):
                    problems.append(f"frame {i}: {label} = {got!r}, sent {data!r}")
            if horodate is not None and frame.timestamps.get(label) != _iso(horodate):
                problems.append(f"frame {i}: {label} stamp {frame.timestamps.get(label)!r}, sent {horodate!r}")
        if len(problems) > 5:
            break
    return problems
