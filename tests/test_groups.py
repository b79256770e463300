"""Group parsing and validation: per-mode checksum rules, space checksums, spaces in data, formats."""

from __future__ import annotations

import pytest

from appliance.tic import HISTORIQUE, STANDARD, Decoder, Kind, checksum, encode_frame, encode_group


def decode_one(group: bytes, mode: str = "auto") -> tuple[dict, dict, list, dict]:
    d = Decoder(mode)
    (f,) = d.feed(encode_frame([group]))
    return f.values, f.timestamps, f.invalid, dict(d.rejects)


@pytest.mark.parametrize(
    ("raw", "label", "value"),
    [
        # Worked examples of docs/PROTOCOL.md §4 (from the captures).
        (b"\nADCO 021861348497 L\r", "ADCO", "021861348497"),
        (b"\nPTEC HP..  \r", "PTEC", "HP.."),  # space checksum
        (b"\nEAST\t099765794\tG\r", "EAST", 99765794),
    ],
)
def test_worked_examples(raw: bytes, label: str, value: object) -> None:
    values, _, invalid, rejects = decode_one(raw)
    assert values == {label: value} and invalid == [] and rejects == {}


def test_space_checksums_in_standard() -> None:
    values, stamps, invalid, _ = decode_one(b"\nDPM1\t 250123060000\t00\t \r")
    assert values == {"DPM1": 0} and stamps == {"DPM1": "2025-01-23T06:00:00"} and invalid == []


def test_date_has_a_timestamp_and_no_value() -> None:
    values, stamps, _, _ = decode_one(b"\nDATE\tE240924225642\t\tH\r")
    assert values == {} and stamps == {"DATE": "2024-09-24T22:56:42+02:00"}


def test_each_mode_uses_only_its_own_rule() -> None:
    # Historique with the standard rule (final separator included) must fail, and vice versa.
    zone = b"ADCO 021861348497 "
    wrong_hist = b"\n" + zone + bytes([checksum(zone)]) + b"\r"
    assert decode_one(wrong_hist)[3] == {"checksum": 1}
    zone = b"EAST\t099765794"
    wrong_std = b"\n" + zone + b"\t" + bytes([checksum(zone)]) + b"\r"
    assert decode_one(wrong_std)[3] == {"checksum": 1}


def test_forced_mode_rejects_the_other_mode() -> None:
    g = encode_group("standard", "EAST", "099765794")
    assert decode_one(g, "historique")[3] == {"malformed": 1}
    assert decode_one(encode_group("historique", "BASE", "000000104"), "standard")[3] == {"malformed": 1}


def test_standard_data_with_spaces_is_split_on_ht_only() -> None:
    values, _, _, _ = decode_one(encode_group("standard", "LTARF", "   HC  BLANC    "))
    assert values == {"LTARF": "HC  BLANC"}
    values, _, _, _ = decode_one(encode_group("standard", "MSG1", "PAS DE          MESSAGE         "))
    assert values == {"MSG1": "PAS DE          MESSAGE"}


@pytest.mark.parametrize(
    ("mode", "label", "data", "horodate"),
    [
        ("historique", "PAPP", "p0750", None),  # bit-6 flip of '0': checksum still valid, charset is not
        ("historique", "PAPP", "0750", None),  # wrong length
        ("historique", "PTEC", "HPn.", None),  # not in the closed set
        ("historique", "OPTARIF", "BBRh", None),  # BBRx: x must have bit 6 clear (02E §2.3)
        ("historique", "DEMAIN", "BLUE", None),
        ("standard", "EAST", "0997657940", None),
        ("standard", "STGE", "003a0001", None),  # hex is uppercase
        ("standard", "SMAXSN", "01024", None),  # horodate missing
        ("standard", "EAST", "099765794", "H230301091834"),  # unexpected horodate
        ("standard", "SMAXSN", "01024", "H231301091834"),  # month 13
        ("standard", "SMAXSN", "01024", "X230301091834"),  # unknown season
        ("standard", "RELAIS", "256", None),
        ("standard", "PJOURF+1", "00008001 NONUTILE", None),
        ("standard", "sinsts", "00240", None),  # lowercase label (bit-5 flips never pass the checksum)
    ],
)
def test_format_violations_are_rejected(mode: str, label: str, data: str, horodate: str | None) -> None:
    values, _, invalid, rejects = decode_one(encode_group(mode, label, data, horodate), mode)
    assert values == {} and invalid == [label] and rejects == {"format": 1}


def test_unknown_labels_are_kept_as_text() -> None:
    # Early "G1 pilote" meters (docs/PROTOCOL.md §10.12) send SINST1 and SMAXN instead of SINSTS / SMAXSN.
    values, stamps, invalid, _ = decode_one(encode_group("standard", "SINST1", "00240"))
    assert values == {"SINST1": "00240"} and invalid == []
    values, stamps, _, _ = decode_one(encode_group("standard", "SMAXN", "01024", "E230301065253"))
    assert values == {"SMAXN": "01024"} and stamps == {"SMAXN": "2023-03-01T06:52:53+02:00"}


def test_degraded_clock_lowercase_season() -> None:
    d = Decoder()
    (f,) = d.feed(encode_frame([encode_group("standard", "DATE", "", "e240924225642")]))
    assert f.timestamps == {"DATE": "2024-09-24T22:56:42+02:00"} and f.clock_degraded is True


def test_optarif_tempo_programs() -> None:
    d = Decoder()
    (f,) = d.feed(encode_frame([encode_group("historique", "OPTARIF", "BBR(")]))
    assert f.to_json()["tariff"] == {"contract": "TEMPO", "circuit1_program": "A", "circuit2_program": "P0"}


def test_short_frame_tri_historique() -> None:
    groups = [
        encode_group("historique", k, v)
        for k, v in [
            ("ADIR1", "036"),
            ("ADCO", "056234673197"),
            ("IINST1", "036"),
            ("IINST2", "002"),
            ("IINST3", "000"),
        ]
    ]
    d = Decoder()
    (f,) = d.feed(encode_frame(groups))
    assert f.values == {"ADIR1": 36, "ADCO": "056234673197", "IINST1": 36, "IINST2": 2, "IINST3": 0}


def test_label_table_is_complete_and_documented() -> None:
    assert len(STANDARD) == 71
    for table in (HISTORIQUE, STANDARD):
        for spec in table.values():
            assert spec.meaning and spec.label.isascii()
            if spec.kind in (Kind.INT,) and spec.label not in ("RELAIS", "NTARF", "NJOURF", "NJOURF+1"):
                assert spec.unit is not None or spec.label.startswith(("DPM", "FPM")), spec.label
    for label in ("ADIR1", "ADIR2", "ADIR3", "PPOT", "PMAX", "IINST1", "IMAX3"):
        assert HISTORIQUE[label].tri_only
    for label in ("EAIT", "ERQ1", "SINSTI", "SMAXIN", "CCAIN-1"):
        assert STANDARD[label].producer_only
