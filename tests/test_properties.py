"""Property-based tests of the decoder (Hypothesis): no input crashes it, grows it, or fools it."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.tic import HISTORIQUE, STANDARD, Decoder, Kind

from .captures import all_captures

MAX_FRAME = 2048
CACHE = 256

# Fields whose decoded value must never change under a single corrupted byte: numbers and closed sets.
CHECKED_KINDS = {Kind.INT, Kind.ID, Kind.ENUM, Kind.HEX, Kind.OPTARIF, Kind.PROFILE}


def _corpus() -> bytes:
    """Real frames from every committed binary capture (bodies wrapped in STX/ETX)."""
    return b"".join(c.stream() for c in all_captures() if c.kind != "console")


CORPUS = _corpus()


def _frames(data: bytes) -> list[bytes]:
    """Complete STX..ETX frames of the corpus, each as bytes including STX and ETX."""
    out = []
    for chunk in data.split(b"\x02")[1:]:
        end = chunk.find(b"\x03")
        if end >= 0:
            out.append(b"\x02" + chunk[: end + 1])
    return out


FRAMES = _frames(CORPUS)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_any_bytes_never_raise_and_memory_stays_bounded(chunks: list[bytes]) -> None:
    d = Decoder(max_frame=MAX_FRAME, cache_size=CACHE)
    for chunk in chunks:
        d.feed(chunk)
        assert d.assembler.pending <= MAX_FRAME
        assert all(len(c) <= CACHE for c in d._caches.values())


@settings(max_examples=200)
@given(st.lists(st.sampled_from(b"\x02\x03\x04\n\r\t ABC0123456789.-+"), min_size=1, max_size=20000))
def test_control_heavy_streams_are_bounded(stream: list[int]) -> None:
    d = Decoder(max_frame=MAX_FRAME, cache_size=CACHE)
    d.feed(bytes(stream))
    assert d.assembler.pending <= MAX_FRAME


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_chunking_gives_the_same_frames(data: st.DataObject) -> None:
    garbage = data.draw(st.binary(max_size=64))
    stream = garbage + CORPUS
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=60)))
    whole = Decoder()
    expected = [f.to_json() for f in whole.feed(stream)]
    pieces = Decoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(f.to_json() for f in pieces.feed(stream[a:b]))
    assert got == expected
    assert pieces.rejects == whole.rejects


def _checked(frame_values: dict, mode: str) -> dict:
    table = STANDARD if mode == "standard" else HISTORIQUE
    return {k: v for k, v in frame_values.items() if (s := table.get(k)) is not None and s.kind in CHECKED_KINDS}


@settings(
    max_examples=int(os.environ.get("TI_HYPOTHESIS_EXAMPLES", "1500")), suppress_health_check=[HealthCheck.too_slow]
)
@given(st.data())
def test_single_corrupted_byte_never_changes_a_checked_value(data: st.DataObject) -> None:
    frame = data.draw(st.sampled_from(FRAMES))
    (clean,) = Decoder().feed(frame)
    pos = data.draw(st.integers(0, len(frame) - 1))
    # Bit-6 flips (delta 64) are what the 6-bit checksum cannot see, so they are drawn often.
    new = data.draw(st.one_of(st.just(frame[pos] ^ 0x40), st.integers(0, 255)))
    corrupted = frame[:pos] + bytes([new]) + frame[pos + 1 :] + frame  # and the next frame must still decode
    d = Decoder()
    frames = d.feed(corrupted)
    assert frames, "the following clean frame must decode"
    assert frames[-1].values == clean.values
    before = _checked(clean.values, clean.mode)
    if len(frames) == 1:  # the corrupted frame gave nothing at all: its loss must show in the counters
        assert sum(d.rejects.values()) or d.assembler.stats.skipped_bytes, "a lost frame must be accounted for"
    for f in frames[:-1]:
        after = _checked(f.values, f.mode)
        for label, value in after.items():
            assert label in before, f"corruption invented {label}={value!r}"
            assert value == before[label], f"{label}: {before[label]!r} became {value!r}"
        if after != before:  # (free text such as NGTF can change undetectably: ' ' ^ 0x40 is '`')
            # Either a group of it was rejected, or the frame was cut (a byte became STX, EOT, or ETX with its
            # tail left between two frames): counted as interrupted.
            assert f.invalid or d.rejects["interrupted"], "a lost value must be accounted for"
