"""The real TIC captures committed under ``tests/data/tic``, and how each one reaches a decoder.

A capture is stored exactly as its publisher released it (``tests/data/tic/README.md`` says where from and under
which licence); its file name says how it was recorded:

* ``<mode>/<name>.bin``: bytes as the serial port delivered them (STX/ETX framing, possibly mid-frame at both ends);
* ``<mode>/<name>.body.bin``: one frame body, groups only, without STX/ETX;
* ``<mode>/<name>.console.txt``: a console dump: one group per line, without LF/CR/STX/ETX (a space at the end of a
  line is a space checksum).

Beside each one, ``<name>.expected.jsonl`` holds what decoding it must give: one line per decoded frame
(:meth:`appliance.tic.Frame.to_json`), then one summary line ``{"frames": N, "rejects": {...}, "skipped_bytes": N}``.
Those files were checked against the bytes by hand and are checked again by ``tests/test_captures.py``, which reads
every group with the checksum rule of the spec, independently of the decoder.

Regenerate them after a deliberate change of the decoder's output with ``python -m tests.captures --write``, then
review the diff line by line: the expectations are the specification's reading of the bytes, not the decoder's.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.tic import Decoder, Frame

DATA = Path(__file__).resolve().parent / "data" / "tic"
_KINDS = {".console.txt": "console", ".body.bin": "body", ".bin": "stream"}


@dataclass(frozen=True)
class Capture:
    """One committed capture file."""

    path: Path

    @property
    def mode(self) -> str:
        """``historique`` or ``standard``: the directory it is filed under."""
        return self.path.parent.name

    @property
    def kind(self) -> str:
        """How it was recorded: ``stream``, ``body`` or ``console`` (see the module docstring)."""
        return next(kind for suffix, kind in _KINDS.items() if self.path.name.endswith(suffix))

    @property
    def name(self) -> str:
        """``<mode>/<name>``: the file without its recording suffix, as test ids show it."""
        suffix = next(s for s in _KINDS if self.path.name.endswith(s))
        return f"{self.mode}/{self.path.name.removesuffix(suffix)}"

    @property
    def expected_path(self) -> Path:
        """The expected-output file beside the capture."""
        return self.path.parent / (self.name.split("/", 1)[1] + ".expected.jsonl")

    def stream(self) -> bytes:
        """The bytes a serial port would have delivered: bodies get STX/ETX, console lines become groups."""
        data = self.path.read_bytes()
        if self.kind == "body":
            return b"\x02" + data + b"\x03"
        if self.kind == "console":
            lines = [line for line in data.split(b"\n") if line]
            return b"\x02" + b"".join(b"\n" + line + b"\r" for line in lines) + b"\x03"
        return data

    def decode(self) -> tuple[list[Frame], Decoder]:
        """Decode the whole capture in one feed, with the mode detected per frame as the service does."""
        decoder = Decoder("auto")
        return decoder.feed(self.stream()), decoder

    def expected(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The expected frames (``to_json`` objects) and the summary line."""
        lines = [json.loads(line) for line in self.expected_path.read_text().splitlines() if line]
        return lines[:-1], lines[-1]


def all_captures() -> list[Capture]:
    """Every committed capture, sorted by name."""
    found = (p for p in DATA.glob("*/*") if p.name.endswith(tuple(_KINDS)))
    return sorted((Capture(p) for p in found), key=lambda c: c.name)


def capture(name: str) -> Capture:
    """The capture called ``<mode>/<name>``."""
    for c in all_captures():
        if c.name == name:
            return c
    raise KeyError(name)


def observed(c: Capture) -> list[str]:
    """What decoding ``c`` gives today, as the lines of an expected-output file."""
    frames, decoder = c.decode()
    summary = {
        "frames": len(frames),
        "rejects": dict(sorted(decoder.rejects.items())),
        "skipped_bytes": decoder.assembler.stats.skipped_bytes,
    }
    return [json.dumps(f.to_json(), sort_keys=True, ensure_ascii=True) for f in frames] + [
        json.dumps(summary, sort_keys=True)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or with ``--write``, store) the expected-output files of every capture."""
    ap = argparse.ArgumentParser(description="expected outputs of the committed TIC captures")
    ap.add_argument("--write", action="store_true", help="overwrite every <name>.expected.jsonl (review the diff!)")
    args = ap.parse_args(argv)
    for c in all_captures():
        text = "\n".join(observed(c)) + "\n"
        if args.write:
            c.expected_path.write_text(text)
            print(f"wrote {c.expected_path.relative_to(DATA.parent.parent.parent)}")
        else:
            print(f"# {c.name}\n{text}", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
