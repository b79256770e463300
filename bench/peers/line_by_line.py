"""A line-by-line TIC reader in the style of the classic Raspberry Pi script, as the baseline "simple" decoder.

The style is that of SebastienReuiller/teleinfo-linky-with-raspberry ``teleinfo.py`` and its many forks, written
afresh here (none of its code is used):

* ``readline()`` on the port, one group per line, the line decoded to ``str``;
* split on the separator (SP in historique, extended here to HT for standard), label first, data second;
* the checksum is read by position from the end of the line (``[-3:-2]`` once the ``ETX STX`` that glue the
  last group of a frame to the next frame are removed), which is how that script copes with a space checksum;
* the checksum is summed over ``label SP data`` (historique) or everything up to the last HT (standard);
* a fixed list of numeric labels is turned into ``int``; everything else stays a string;
* a frame is the dict built since the previous ADCO/ADSC: seeing the meter address again closes it.

What it does *not* do, unlike :mod:`appliance.tic`: no STX/ETX/EOT framing (an interrupted frame merges with the
next one), no check of field lengths or charsets (a bit-6 flip that keeps the checksum goes through), no
horodate parsing, data with spaces in historique is cut at the first space, and the first partial frame is
emitted as if it were complete.  That is the point of the comparison: it does much less per byte.
"""

from __future__ import annotations

from typing import Any

from peers import Adapter, Mode
from peers.fake_io import FakeSerial

__all__ = ["LineByLineAdapter", "read_frames"]

# The numbers worth an int, as such scripts list them by hand.
_NUMERIC_HISTORIQUE = frozenset(
    "ISOUSC BASE HCHC HCHP EJPHN EJPHPM BBRHCJB BBRHPJB BBRHCJW BBRHPJW BBRHCJR BBRHPJR PEJP IINST IINST1 IINST2 "
    "IINST3 ADPS ADIR1 ADIR2 ADIR3 IMAX IMAX1 IMAX2 IMAX3 PMAX PAPP".split()
)
_NUMERIC_STANDARD = frozenset(
    "EAST EASF01 EASF02 EASF03 EASF04 EASF05 EASF06 EASF07 EASF08 EASF09 EASF10 EASD01 EASD02 EASD03 EASD04 EAIT "
    "ERQ1 ERQ2 ERQ3 ERQ4 IRMS1 IRMS2 IRMS3 URMS1 URMS2 URMS3 PREF PCOUP SINSTS SINSTS1 SINSTS2 SINSTS3 SMAXSN "
    "SMAXSN1 SMAXSN2 SMAXSN3 SMAXSN-1 SMAXSN1-1 SMAXSN2-1 SMAXSN3-1 SINSTI SMAXIN SMAXIN-1 CCASN CCASN-1 CCAIN "
    "CCAIN-1 UMOY1 UMOY2 UMOY3 RELAIS NTARF NJOURF NJOURF+1".split()
)


def _control_char(text: str) -> str:
    """The TIC check character of ``text``: low 6 bits of the byte sum, plus 0x20."""
    total = 0
    for c in text:
        total += ord(c)
    return chr((total & 0x3F) + 0x20)


def read_frames(port: Any, mode: Mode) -> list[dict[str, Any]]:
    """Read ``port`` line by line until EOFError; return one dict per frame, as the script would publish them."""
    if mode == "historique":
        sep, first, numeric = " ", "ADCO", _NUMERIC_HISTORIQUE
    else:
        sep, first, numeric = "\t", "ADSC", _NUMERIC_STANDARD
    frames: list[dict[str, Any]] = []
    frame: dict[str, Any] = {}
    readline = port.readline
    try:
        while True:
            line = readline().decode("ascii", "replace")
            fields = line.split(sep)
            if len(fields) < 3:  # STX alone on its line, or a group cut by the start of the capture
                continue
            key = fields[0].lstrip("\x02\n")
            control = line.replace("\x03\x02", "")[-3:-2]  # ... chk CR LF: the checksum, even if it is a space
            if sep == " ":
                value = fields[1]
                summed = f"{key} {value}"
            else:  # standard: label HT [horodate HT] data HT chk; the last HT is part of the sum
                value = fields[-2]
                summed = line[: line.rindex("\t") + 1].lstrip("\x02\n")
            if control != _control_char(summed):
                continue
            if key == first and frame:
                frames.append(frame)
                frame = {}
            if key in numeric:
                try:
                    frame[key] = int(value)
                except ValueError:
                    continue
            elif key == "DATE":
                frame[key] = fields[1]  # the value is the horodate
            else:
                frame[key] = value
    except EOFError:
        if frame:
            frames.append(frame)
    return frames


class LineByLineAdapter(Adapter):
    """:func:`read_frames` on a fake serial port that serves the stream in benchmark-sized chunks."""

    name = "line-by-line (Pi script style)"
    pypi = False
    drives = "readline() + split(SP|HT) + [-3:-2] checksum + int() on known labels, frame = ADCO..ADCO"

    def load(self) -> None:
        return None

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        return FakeSerial(chunks), mode

    def run(self, prepared: Any) -> list[Any]:
        port, mode = prepared
        return read_frames(port, mode)
