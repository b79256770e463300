"""Text from the network made safe to print: nothing a peer sends may drive a terminal.

A terminal acts on control characters: ESC starts sequences that move the cursor, clear the screen, set the
window title or (in some terminals) write files and answer back; C1 controls (U+0080-U+009F, e.g. U+009B, a
one-character CSI) do the same in UTF-8 terminals; Unicode format characters (bidi overrides U+202E...) reorder
what is shown; and a lone surrogate (valid in JSON, ``"\\ud800"``) cannot even be encoded to UTF-8, so printing it
raises.  Every string that came from the network goes through :func:`printable` (or :func:`json_line` for JSON)
before it reaches standard output, a log line or a status document.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Final

__all__ = ["json_line", "printable"]

#: C0 controls but tab, DEL, C1 controls, lone surrogates, and the format characters (Cf) that reorder text.
_UNSAFE: Final = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)

#: In JSON text, C0 controls only appear escaped (inside strings) or as the indentation's newlines: the rest.
_UNSAFE_IN_JSON: Final = re.compile(
    "[\x7f-\x9f\ud800-\udfff\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\u2028\u2029]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int | None = None) -> str:
    r"""``text`` with every character that could drive a terminal written as an escape (``\x1b``, ``\u202e``),
    cut to ``limit`` characters (an ellipsis says so).

    >>> printable("ok \x1b[2J\ud800 \u202eevil")
    'ok \\x1b[2J\\ud800 \\u202eevil'
    """
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    safe = _UNSAFE.sub(_escape, text)
    if safe.isprintable():
        return safe
    # Rarer characters a terminal may mishandle (line separators, unassigned or private code points): escaped
    # too; tabs and spaces of every width are kept.
    return "".join(c if c.isprintable() or c == "\t" or unicodedata.category(c) == "Zs" else _hex(c) for c in safe)


def _hex(c: str) -> str:
    return f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"


def json_line(obj: Any, indent: int | None = None) -> str:
    r"""``obj`` as compact JSON on one line, non-ASCII letters kept, anything a terminal would act on escaped
    (JSON's own ``\uXXXX``, so the line stays valid JSON with the same value).

    >>> json_line({"m": "caf\u00e9\x1b[0m\u009b\ud800"})
    '{"m":"café\\u001b[0m\\u009b\\ud800"}'
    """
    text = json.dumps(obj, ensure_ascii=False, indent=indent, separators=None if indent else (",", ":"))
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
