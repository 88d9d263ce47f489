"""Put one generated section into BENCHMARKS.md without touching the rest of the file.

Each benchmark script owns the text between its own pair of HTML-comment markers; the file
is rewritten atomically, so an interrupted run leaves the previous version.
"""

from __future__ import annotations

from pathlib import Path


def put_section(path: Path, start: str, end: str, section: str, before: str | None = None) -> None:
    """Replace the text from ``start`` to ``end`` in ``path`` by ``section`` (which holds both markers).

    Without the markers the section goes in front of ``before`` when that text is in the
    file, else at the end; a missing file is started with a title.
    """
    from ghostmap.atomic import write_text

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    i, j = text.find(start), text.find(end)
    if i != -1 and j > i:
        text = text[:i] + section.rstrip("\n") + text[j + len(end):]
    elif before is not None and before in text:
        at = text.index(before)
        text = text[:at] + section.rstrip("\n") + "\n\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text(path, text if text.endswith("\n") else text + "\n")
