"""The framer: STX/ETX, EOT, restarts, garbage, 7-bit masking, bounded memory."""

from __future__ import annotations

from appliance.tic import Decoder, FrameAssembler, encode_frame, encode_group

GROUP1 = encode_group("historique", "PAPP", "00750")
GROUP2 = encode_group("historique", "IINST", "003")
FRAME = encode_frame([GROUP1, GROUP2])


def test_frame_split_byte_by_byte_and_concatenated() -> None:
    fa = FrameAssembler()
    out = [body for b in FRAME * 3 for body in fa.feed(bytes([b]))]
    assert out == [GROUP1 + GROUP2] * 3
    assert FrameAssembler().feed(FRAME * 3) == [GROUP1 + GROUP2] * 3


def test_garbage_before_first_stx_is_skipped_and_counted() -> None:
    fa = FrameAssembler()
    assert fa.feed(b"\x00\xffgarbage\r\n" + FRAME) == [GROUP1 + GROUP2]
    assert fa.stats.skipped_bytes == 11


def test_eot_drops_the_frame_in_progress() -> None:
    d = Decoder()
    frames = d.feed(b"\x02" + GROUP1 + b"\x04" + FRAME)
    assert [f.values for f in frames] == [{"PAPP": 750, "IINST": 3}]
    assert d.rejects == {"interrupted": 1}


def test_eot_inside_a_group_drops_the_frame() -> None:
    d = Decoder()
    assert d.feed(b"\x02" + GROUP1[:5] + b"\x04" + GROUP1[5:] + b"\x03") == []
    assert d.rejects == {"interrupted": 1}


def test_new_stx_before_etx_restarts_the_frame() -> None:
    d = Decoder()
    frames = d.feed(b"\x02" + GROUP1 + GROUP2[:4] + FRAME)
    assert [f.values for f in frames] == [{"PAPP": 750, "IINST": 3}]
    assert d.rejects == {"interrupted": 1}


def test_bit7_set_bytes_are_masked_as_7e1_read_as_8n1() -> None:
    # 7E1 read as 8N1 puts the even-parity bit in bit 7.
    def with_parity(b: int) -> int:
        return b | (0x80 if bin(b).count("1") % 2 else 0)

    noisy = bytes(with_parity(b) for b in FRAME)
    assert noisy != FRAME
    frames = Decoder().feed(noisy)
    assert [f.values for f in frames] == [{"PAPP": 750, "IINST": 3}]


def test_endless_stream_without_etx_is_bounded_and_counted() -> None:
    fa = FrameAssembler(max_frame=1024)
    for _ in range(1000):
        fa.feed(b"\x02" + b"\n" * 100 if _ == 0 else b"\n" * 4096)
        assert fa.pending <= 1024
    assert fa.stats.overflow == 1
    # It resynchronises on the next frame.
    assert fa.feed(FRAME) == [GROUP1 + GROUP2]


def test_lf_flood_inside_frames_is_bounded() -> None:
    d = Decoder(max_frame=2048)
    for _ in range(200):
        d.feed(b"\x02" + b"\n" * 5000 + b"\x03")
        assert d.assembler.pending <= 2048
    assert d.rejects["overflow"] == 200


def test_tri_phase_standard_frame_fits() -> None:
    # docs/PROTOCOL.md §10.9: a three-phase standard frame is over 1300 bytes; ESPHome's 1024-byte buffer overflowed.
    groups = [encode_group("standard", f"EASF{i:02d}", "000000000") for i in range(1, 11)] * 8
    frame = encode_frame(groups)
    assert len(frame) > 1300
    d = Decoder()
    assert len(d.feed(frame)) == 1 and not d.rejects


def test_empty_frame_is_counted_not_emitted() -> None:
    d = Decoder()
    assert d.feed(b"\x02\x03\x02\r\n\x03") == []
    assert d.rejects == {"empty": 2}


def test_reset_forgets_a_partial_frame() -> None:
    d = Decoder()
    d.feed(b"\x02" + GROUP1)
    d.reset()
    assert d.feed(GROUP2 + b"\x03" + FRAME)[0].values == {"PAPP": 750, "IINST": 3}
    assert d.rejects == {"interrupted": 1}


def test_bytes_between_frames_count_as_an_interrupted_frame() -> None:
    # A bit-6 flip turns the 'C' of CCASN into ETX: the frame ends cleanly after the previous group, and its
    # tail lands between two frames, where a meter never sends anything.
    good = encode_frame(
        [encode_group("standard", "EAST", "000000001"), encode_group("standard", "CCASN-1", "00001", "H240115180000")]
    )
    bad = bytearray(good)
    bad[bad.index(b"CCASN-1")] ^= 0x40
    d = Decoder("standard")
    frames = d.feed(bytes(bad) + good)
    assert [f.values for f in frames] == [{"EAST": 1}, {"EAST": 1, "CCASN-1": 1}]
    assert d.rejects == {"interrupted": 1}


def test_garbage_before_the_first_frame_is_not_an_interruption() -> None:
    d = Decoder()
    d.feed(b"tail of a frame\r\x03" + FRAME + FRAME)
    assert d.rejects == {} and d.assembler.stats.skipped_bytes == 17
