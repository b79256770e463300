"""Every real capture under tests/data/tic decodes to the values its bytes hold.

Two independent readings of each capture are compared with the decoder:

* its expected-output file (``tests/captures.py`` says the format), checked here group by group against the raw
  bytes with the spec's checksum rule and nothing of the decoder (:func:`_spec_groups`);
* the hand-written expectations below, written by reading each capture's bytes against the Enedis specs (02E for
  historique, 54E for standard), not by copying the decoder's output: indexes as integers in Wh, ids with their
  leading zeros, text with its padding removed, horodates with +01:00 for H and +02:00 for E.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from appliance.tic import Decoder, Frame

from .captures import DATA, Capture, all_captures, capture, observed

CAPTURES = all_captures()

ENEDIS_STD = {
    "ADSC": "031664001115",
    "VTIC": "02",
    "NGTF": "H PLEINE/CREUSE",
    "LTARF": "INDEX INACTIF 2",
    "EAST": 0,
    **{f"EASF{i:02d}": 0 for i in range(1, 11)},
    **{f"EASD{i:02d}": 0 for i in range(1, 5)},
    "IRMS1": 0,
    "URMS1": 230,
    "PREF": 3,
    "PCOUP": 2,
    "SINSTS": 0,
    "SMAXSN": 0,
    "SMAXSN-1": 0,
    "CCASN": 0,
    "CCASN-1": 0,
    "UMOY1": 230,
    "STGE": "000A4411",
    "MSG1": "PAS DE          MESSAGE",
    "PRM": "00000000000000",
    "RELAIS": 0,
    "NTARF": 2,
    "NJOURF": 0,
    "NJOURF+1": 0,
    "PJOURF+1": "00008002 0100C001 06008002 1230C001 15308002 NONUTILE NONUTILE NONUTILE NONUTILE NONUTILE NONUTILE",
}
ENEDIS_STD_STAMPS = {
    "DATE": "2017-09-15T10:16:01+02:00",
    "SMAXSN": "2017-09-15T10:09:26+02:00",
    "SMAXSN-1": "2017-09-13T00:00:00+02:00",
    "CCASN": "2017-09-13T11:30:00+02:00",
    "CCASN-1": "2017-09-13T11:00:00+02:00",
    "UMOY1": "2017-09-15T10:15:00+02:00",
}


def _decode(name: str) -> tuple[list[Frame], Decoder]:
    return capture(name).decode()


def test_historique_mono_base_enedis() -> None:
    frames, d = _decode("historique/mono_base__enedis_tic2websocket_ticFrameHistoric")
    assert len(frames) == 1 and not d.rejects
    f = frames[0]
    assert f.mode == "historique" and f.meter == "812164417227"
    assert f.values == {
        "ADCO": "812164417227",
        "OPTARIF": "BASE",
        "ISOUSC": 15,
        "BASE": 104,
        "PTEC": "TH..",
        "IINST": 0,
        "IMAX": 0,
        "PAPP": 0,
        "MOTDETAT": "000000",
    }
    assert f.timestamps == {} and f.invalid == []
    assert f.to_json()["tariff"] == {"contract": "BASE"}


def test_historique_tri_base_midstream_start() -> None:
    frames, d = _decode("historique/tri_base__ticdecodecpp_continuous_linky_3P_historical_TIC_sample")
    # 6 complete frames; the capture starts with "MOTDE" mid-frame and ends inside a 7th frame.
    assert len(frames) == 6 and not d.rejects
    assert d.assembler.stats.skipped_bytes == 5
    fixed = {
        "ADCO": "056234673197",
        "OPTARIF": "BASE",
        "ISOUSC": 20,
        "PTEC": "TH..",
        "IINST1": 0,
        "IINST2": 2,
        "IINST3": 0,
        "IMAX1": 60,
        "IMAX2": 60,
        "IMAX3": 60,
        "PMAX": 2680,
        "HHPHC": "A",
        "MOTDETAT": "000000",
        "PPOT": "00",
    }
    base = [10151175, 10151175, 10151176, 10151176, 10151177, 10151184]
    papp = [740, 740, 740, 750, 750, 750]
    for f, b, p in zip(frames, base, papp, strict=True):
        assert f.values == {**fixed, "BASE": b, "PAPP": p}
        assert f.to_json()["ppot"] == {"phase1_present": True, "phase2_present": True, "phase3_present": True}


def test_standard_mono_enedis() -> None:
    frames, d = _decode("standard/mono__enedis_tic2websocket_ticFrameStandard")
    assert len(frames) == 1 and not d.rejects
    f = frames[0]
    assert f.values == ENEDIS_STD
    assert f.timestamps == ENEDIS_STD_STAMPS
    assert f.invalid == [] and f.clock_degraded is False
    j = f.to_json()
    # STGE 000A4411: bit 0 dry contact open, bit 4 cover open, bit 10 -> supplier index 2 (= NTARF 02),
    # bit 14 -> distributor index 2, bit 17 standard, bit 19 Euridis enabled without security.
    assert j["stge"]["supplier_index"] == 2 == f.values["NTARF"]
    assert j["stge"]["dry_contact_open"] is True and j["stge"]["terminal_cover_open"] is True
    assert j["stge"]["distributor_index"] == 2 and j["stge"]["tic_mode"] == "standard"
    assert j["stge"]["euridis"] == "enabled_unsecured"
    assert j["relais"] == [False] * 8
    slots = j["profiles"]["PJOURF+1"]
    assert [s and (s["start"], s["supplier_index"], s["dry_contact"]) for s in slots[:5]] == [
        ("00:00", 2, 2),
        ("01:00", 1, 3),
        ("06:00", 2, 2),
        ("12:30", 1, 3),
        ("15:30", 2, 2),
    ]
    assert slots[5:] == [None] * 6


def test_standard_pcoup_invalid_rejected_rest_kept() -> None:
    frames, d = _decode("standard/mono__enedis_tic2websocket_ticFrameStandard_PCOUP_Invalid")
    assert len(frames) == 1
    f = frames[0]
    assert f.invalid == ["PCOUP"]
    assert d.rejects == {"checksum": 1}
    assert f.values == {k: v for k, v in ENEDIS_STD.items() if k != "PCOUP"}
    assert f.timestamps == ENEDIS_STD_STAMPS


def test_standard_mono_continuous() -> None:
    frames, d = _decode("standard/mono_base__ticdecodecpp_continuous_linky_1P_standard_TIC_sample")
    assert len(frames) == 12 and not d.rejects
    seconds = [34, 35, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44]
    east = [11887649] * 6 + [11887650] * 6
    urms = [230, 230, 230, 231, 231, 231, 231, 231, 231, 231, 231, 232]
    sinsts = [240, 240, 240, 241, 241, 242, 242, 242, 242, 242, 242, 245]
    for f, s, e, u, p in zip(frames, seconds, east, urms, sinsts, strict=True):
        assert f.meter == "064468368739"
        assert f.timestamps["DATE"] == f"2023-03-01T09:18:{s:02d}+01:00"
        assert f.values["EAST"] == e == f.values["EASF01"] == f.values["EASD01"]
        assert f.values["URMS1"] == u and f.values["SINSTS"] == p
        assert f.values["NGTF"] == "BASE" and f.values["LTARF"] == "BASE"
        assert f.values["PRM"] == "31051967533895"
        assert (f.values["PREF"], f.values["PCOUP"], f.values["STGE"], f.values["NTARF"]) == (4, 4, "003A0001", 1)
        assert f.timestamps["SMAXSN"] == "2023-03-01T06:52:53+01:00" and f.values["SMAXSN"] == 1024
        assert f.values["CCASN"] == 170 and f.values["CCASN-1"] == 162 and f.values["UMOY1"] == 229
        assert f.values["PJOURF+1"].startswith("00008001 NONUTILE")
        assert "DATE" not in f.values  # DATE has no value, only its timestamp


def test_standard_tri_tempo() -> None:
    frames, d = _decode("standard/tri_tempo__teleinfo-nom_message_standard")  # a body: wrapped in STX/ETX
    assert len(frames) == 1 and not d.rejects
    f = frames[0]
    v = f.values
    assert f.meter == "041776199277" and v["PRM"] == "07361794479930"
    assert v["NGTF"] == "TEMPO" and v["LTARF"] == "HC  BLANC"
    assert [v[f"EASF{i:02d}"] for i in range(1, 11)] == [
        4855593, 14090959, 487131, 1481464, 227596, 706363, 0, 0, 0, 0,
    ]  # fmt: skip
    assert v["EAST"] == 21849106 == v["EASD01"]
    assert [v[f"IRMS{i}"] for i in (1, 2, 3)] == [3, 6, 3]
    assert [v[f"URMS{i}"] for i in (1, 2, 3)] == [237, 238, 235]
    assert [v["SINSTS"], v["SINSTS1"], v["SINSTS2"], v["SINSTS3"]] == [2700, 664, 1373, 664]
    assert [v["SMAXSN"], v["SMAXSN1"], v["SMAXSN2"], v["SMAXSN3"]] == [10802, 3411, 3899, 3512]
    assert [v["SMAXSN-1"], v["SMAXSN1-1"], v["SMAXSN2-1"], v["SMAXSN3-1"]] == [9562, 3129, 3366, 3191]
    assert (v["PREF"], v["PCOUP"], v["RELAIS"], v["NTARF"]) == (30, 30, 1, 3)
    assert (v["DPM1"], v["FPM1"]) == (0, 0)
    # The DPM/FPM horodates have a space season: local time, no offset.
    assert f.timestamps["DPM1"] == "2020-02-14T06:00:00" and f.timestamps["FPM1"] == "2020-02-15T06:00:00"
    assert f.timestamps["DATE"] == "2020-02-14T23:08:04+01:00"
    assert f.timestamps["SMAXSN2-1"] == "2020-02-13T10:11:42+01:00"
    j = f.to_json()
    stge = j["stge"]  # 463A0800 (docs/PROTOCOL.md §8): NTARF 03, day white, tomorrow blue, PM1 in progress
    assert stge["supplier_index"] == 3 == v["NTARF"]
    assert (stge["tempo_today"], stge["tempo_tomorrow"]) == ("white", "blue")
    assert stge["mobile_peak"] == 1 and stge["mobile_peak_notice"] == 0
    assert j["relais"] == [True] + [False] * 7


def test_historique_hc_console_dump() -> None:
    """hallard's README excerpt is a console dump: no STX/ETX/CR; trailing spaces are space checksums."""
    c = capture("historique/mono_hc__hallard_teleinfo-test_README_excerpt")
    text = c.path.read_bytes()
    lines = [ln for ln in text.split(b"\n") if ln]
    raw = b"\x02" + b"".join(b"\n" + ln + b"\r" for ln in lines) + b"\x03"
    assert c.stream() == raw  # what every other test of this capture feeds
    frames = Decoder("historique").feed(raw)
    assert len(frames) == 1
    f = frames[0]
    assert f.invalid == []
    assert f.values["ADCO"] == "021528603314" and f.values["OPTARIF"] == "HC.."
    assert f.values["HCHC"] == 723392 and f.values["HCHP"] == 1742238
    assert f.values["PTEC"] == "HP.." and f.values["IINST"] == 1 and f.values["PAPP"] == 180
    assert f.values["ISOUSC"] == 15 and f.values["IMAX"] == 2 and f.values["HHPHC"] == "A"


# --- the corpus: one parametrised test over every committed capture ----------------------------------------------


def test_the_corpus_is_complete() -> None:
    """Seven captures from four public projects, each with its expected output and its origin written down."""
    assert len(CAPTURES) == 7
    assert {c.mode for c in CAPTURES} == {"historique", "standard"}
    readme = (DATA / "README.md").read_text()
    expected = {c.expected_path for c in CAPTURES}
    assert set(DATA.glob("*/*.expected.jsonl")) == expected  # no expected file without its capture
    for c in CAPTURES:
        assert c.expected_path.is_file(), c.name
        assert f"`{c.path.relative_to(DATA)}`" in readme, f"{c.name}: origin and licence missing from the README"


@pytest.mark.parametrize("c", CAPTURES, ids=lambda c: c.name)
def test_capture_decodes_to_its_expected_output(c: Capture) -> None:
    frames, decoder = c.decode()
    want_frames, summary = c.expected()
    assert summary["frames"] == len(want_frames) > 0
    assert [f.to_json() for f in frames] == want_frames
    assert dict(decoder.rejects) == summary["rejects"]
    assert decoder.assembler.stats.skipped_bytes == summary["skipped_bytes"]
    assert observed(c) == c.expected_path.read_text().splitlines()  # byte for byte what --write would store


def _spec_groups(body: bytes, mode: str) -> list[tuple[str, str | None, str, bool]]:
    """Every group of a frame body as (label, horodate, data, checksum ok), read with the spec's rule alone.

    Historique (02E §1.5.2): LF label SP data SP chk CR, the sum runs from the label to the end of the data.
    Standard (54E §5.3.6): LF label HT [horodate HT] data HT chk CR, the sum includes the HT before the checksum.
    chk = (sum & 0x3F) + 0x20, so it may be a space: nothing is stripped.
    """
    sep = b"\t" if mode == "standard" else b" "
    out = []
    for line in body.split(b"\n"):
        if line in (b"", b"\r"):  # line ends normalised by a capture tool: an empty line between groups
            continue
        assert line.endswith(b"\r") and line[-3:-2] == sep, line
        group = line[:-1]
        summed = group[:-1] if mode == "standard" else group[:-2]
        ok = (sum(summed) & 0x3F) + 0x20 == group[-1]
        fields = group[:-2].split(b"\t") if mode == "standard" else group[:-2].split(b" ", 1)
        label, *rest = (f.decode("ascii") for f in fields)
        horodate, data = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        out.append((label, horodate, data, ok))
    return out


def _iso(horodate: str) -> str:
    """54E §6.2.1.1: SAAMMJJhhmmss, season H/h = +01:00, E/e = +02:00, a space = no offset (local time)."""
    s, d = horodate[0], horodate[1:]
    offset = {"H": "+01:00", "h": "+01:00", "E": "+02:00", "e": "+02:00", " ": ""}[s]
    return f"20{d[0:2]}-{d[2:4]}-{d[4:6]}T{d[6:8]}:{d[8:10]}:{d[10:12]}{offset}"


@pytest.mark.parametrize("c", CAPTURES, ids=lambda c: c.name)
def test_expected_output_is_what_the_bytes_say(c: Capture) -> None:
    """The expected file against the raw bytes, group by group, with no code of the decoder involved."""
    bodies = re.findall(rb"\x02([^\x02\x03\x04]*)\x03", c.stream())  # complete frames only
    want_frames, _ = c.expected()
    assert len(bodies) == len(want_frames) > 0
    for body, want in zip(bodies, want_frames, strict=True):
        assert want["mode"] == c.mode
        values: dict[str, Any] = {}
        stamps: dict[str, str] = {}
        invalid: list[str] = []
        for label, horodate, data, ok in _spec_groups(body, c.mode):
            if not ok:
                invalid.append(label)
                continue
            if horodate is not None:
                stamps[label] = _iso(horodate)
            if data:  # DATE: the horodate only, an empty data field (54E §6.2.3.3)
                values[label] = data
        assert want["invalid"] == invalid
        assert want["timestamps"] == stamps
        assert set(want["values"]) == set(values)
        for label, got in want["values"].items():
            # numbers are the digits read as an integer, text is the data without its padding
            assert got == (int(values[label]) if isinstance(got, int) else values[label].strip(" ")), label
        assert want["meter"] == values["ADSC" if c.mode == "standard" else "ADCO"]
