"""The live terminal view of ``teleinfo run``: the latest readings, the counters and the last log lines.

Only used when standard output is a terminal and the service is not under systemd.  It redraws at most twice
a second whatever the frame rate, and log records are shown inside the view instead of scrolling it away.
"""

from __future__ import annotations

import collections
import logging
import socket
import time
from typing import TextIO

from appliance.redaction import RedactingFilter
from appliance.stats import Stats
from appliance.tic import Frame

__all__ = ["LiveView"]


class _ViewHandler(logging.Handler):
    def __init__(self, lines: collections.deque[str]) -> None:
        super().__init__()
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record).splitlines()[0])


def _page_line(web: object) -> list[str]:
    """Where the live page is (the demo's address to open), while its server is up."""
    if not isinstance(web, dict) or web.get("state") != "up":
        return []
    host, _, port = str(web.get("address", "")).rpartition(":")
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a bind address, not a peer
        return [f"live page  http://{socket.gethostname()}:{port}/ (every interface)"]
    return [f"live page  http://{f'[{host}]' if ':' in host else host}:{port}/  (open it in a browser)"]


class LiveView:
    """A self-refreshing screen of the latest frame."""

    def __init__(self, stats: Stats, out: TextIO, interval: float = 0.5) -> None:
        self._stats = stats
        self._out = out
        self._interval = interval
        self._frame: Frame | None = None
        self._last_draw = 0.0
        self.log_lines: collections.deque[str] = collections.deque(maxlen=6)
        self.handler = _ViewHandler(self.log_lines)
        self._out.write("\x1b[?25l")  # hide the cursor while redrawing

    def update(self, frame: Frame) -> None:
        self._frame = frame
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self._out.write("\x1b[H\x1b[J" + self.render())
            self._out.flush()

    def render(self) -> str:
        import shutil  # only when a terminal view draws: the service under systemd never imports it

        cols, rows = shutil.get_terminal_size((100, 40))
        s = self._stats.snapshot()
        src = s.source
        rejected = sum(s.rejects.values())
        age = s.last_frame_age_s
        head = [
            f"teleinfo  source {src.state} {src.detail}  mode {src.mode or '?'}  frames {s.frames}"
            f"  rejected {rejected}  last frame {'-' if age is None else f'{age:.1f} s ago'}",
            "outputs  "
            + (
                "  ".join(
                    f"{name} {o.state} (sent {o.sent}, failed {o.failed}, dropped {o.dropped})"
                    for name, o in s.outputs.items()
                )
                or "none"
            ),
            *_page_line(s.sections.get("web")),
            "",
        ]
        body: list[str] = []
        f = self._frame
        if f is None:
            body.append("waiting for the first frame...")
        else:
            body.append(
                f"{f.mode} meter {f.meter or '?'}" + (f"  rejected groups: {', '.join(f.invalid)}" if f.invalid else "")
            )
            for label, value in f.values.items():
                unit = f.unit(label) or ""
                stamp = f.timestamps.get(label, "")
                body.append(f"  {label:<10} {value!s:>20} {unit:<5} {stamp}")
            if "DATE" in f.timestamps:
                body.append(f"  {'DATE':<10} {f.timestamps['DATE']:>26}")
        logs = ["", "log:", *(f"  {line}" for line in self.log_lines)] if self.log_lines else []
        room = max(3, rows - len(head) - len(logs) - 1)
        if len(body) > room:
            body = [*body[: room - 1], f"  ... {len(body) - room + 1} more"]
        return "\n".join(line[:cols] for line in (*head, *body, *logs)) + "\n"

    def close(self) -> None:
        self._out.write("\x1b[?25h")
        self._out.flush()
