"""The repository carries its own knowledge: nothing points outside it, and every pointer into ``docs/`` lands.

A clone of the public repository has no team reading room beside it, so no file may point at one (the old protocol
and network notes by their file names, their pitfall codes, or the shared captures); the facts live in
``docs/PROTOCOL.md``, ``docs/NETWORK.md``, ``docs/IMAGE.md`` and ``docs/DESIGN.md``, and the captures in
``tests/data/tic``.  A reference such as ``docs/PROTOCOL.md §10.8`` must name a file that exists and a section
that file has (a numbered heading, or a numbered bold paragraph such as the protocol pitfalls).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_PRUNE = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}

#: Pointers outside the repository.  Written so that this file does not match itself.
OUTSIDE = re.compile(
    r"\.\./(?:shared)|(?:shared)/(?:captures|docs|reference|seed)|/work/(?:shared)"
    r"|(?<![\w/])(?:TIC|NETWORK|STYLE|IMAGE)[.]md|docs/(?:TIC|STYLE)[.]md"
    r"|\bG(?:1[0-5]|[1-9])\b(?! pilote)"  # the old notes' pitfall codes; "G1 pilote" is a Linky generation
)
DOC_REF = re.compile(r"docs/([A-Z_]+)\.md((?:(?:,? and |, |-|/| )?§\d+(?:\.\d+)*)*)")


def repository_files() -> Iterator[tuple[Path, str]]:
    """Every text file of the checkout (tracked or new, not ignored), with its content."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout.decode()
        paths = [REPO / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an unpacked archive): walk it
        paths = []
        for top, dirs, names in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in _PRUNE and not d.endswith(".egg-info")]
            paths += [Path(top) / n for n in names]
    for path in sorted(paths):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("tests/data/tic/") or not path.is_file():
            continue  # byte-exact captures and the decoder's expected output: data, not prose
        data = path.read_bytes()
        if b"\0" in data:
            continue
        yield path, data.decode("utf-8", "replace")


def test_nothing_points_outside_the_repository() -> None:
    hits = []
    n = 0
    for path, text in repository_files():
        n += 1
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert n > 100  # the whole tree was read
    assert not hits, "pointers outside the repository (use docs/ and tests/data/):\n" + "\n".join(hits)


def _sections(doc: Path) -> set[str]:
    """The section numbers of a document: numbered headings (``## 10.``, ``### 2.2``) and bold ``**10.8 ...``."""
    found = set()
    for line in doc.read_text().splitlines():
        m = re.match(r"#+ (\d+(?:\.\d+)*)\.? ", line) or re.match(r"\*\*(\d+(?:\.\d+)*)\.? ", line)
        if m:
            found.add(m.group(1))
    return found


def test_every_docs_reference_lands() -> None:
    docs = REPO / "docs"
    sections = {p.stem: _sections(p) for p in docs.glob("*.md")}
    assert {"PROTOCOL", "NETWORK", "IMAGE", "DESIGN"} <= set(sections)
    bad = []
    refs = 0
    for path, text in repository_files():
        for number, line in enumerate(text.splitlines(), 1):
            for m in DOC_REF.finditer(line):
                refs += 1
                name, tail = m.group(1), m.group(2)
                if name not in sections:
                    bad.append(f"{path.relative_to(REPO)}:{number}: docs/{name}.md does not exist")
                    continue
                missing = [s for s in re.findall(r"§(\d+(?:\.\d+)*)", tail) if s not in sections[name]]
                bad.extend(f"{path.relative_to(REPO)}:{number}: docs/{name}.md has no section {s}" for s in missing)
    assert refs > 50
    assert not bad, "\n".join(bad)
