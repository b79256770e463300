"""enedis-tic as a whole process, the peer of ``teleinfo decode FILE``: every frame of a raw capture as a JSON line.

``python bench/peers/enedis_tic_process.py FILE > out.jsonl``: frames are cut between STX and ETX (as
:mod:`peers.pypi_enedis_tic` does), decoded by ``FrameFactory`` and ``FrameParser`` as ``Tic`` does, and printed
with ``json.dumps`` (datetimes as ISO text).  A frame that raises is skipped, as enedis-tic's ``Link`` skips it.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any


def _default(obj: Any) -> str:
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise TypeError(type(obj).__name__)


def main() -> int:
    from enedis_tic.application_layer import FrameParser
    from enedis_tic.link_layer import FrameFactory

    with open(sys.argv[1], "rb") as f:
        data = f.read()
    out = sys.stdout
    start = data.find(b"\x02")
    while start >= 0:
        end = data.find(b"\x03", start)
        if end < 0:
            break
        raw = data[data.rfind(b"\x02", start, end) : end + 1]
        try:
            out.write(json.dumps(FrameParser(FrameFactory(raw.decode("ascii")).to_dict()).to_dict(), default=_default))
            out.write("\n")
        except Exception as e:  # what enedis-tic's Link does: log, count, next frame
            print(f"frame skipped: {type(e).__name__}", file=sys.stderr)
        start = data.find(b"\x02", end + 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
