"""The one table renderer: every table advguard prints or writes (CLI listings, the quickstart,
reports, experiment tables) goes through :func:`render_table`, in one of three formats."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["Format", "render_table"]

Format = Literal["text", "markdown", "html"]


def render_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *,
                 fmt: Format = "text") -> str:
    """``header`` and ``rows`` (cells are turned into strings) as an aligned plain-text table
    (``"text"``: columns padded, a dashed rule under the header), a markdown table or an HTML
    ``<table>`` (cells escaped). Rows must have as many cells as the header."""
    head = [str(c) for c in header]
    body = [[str(c) for c in r] for r in rows]
    for i, r in enumerate(body):
        if len(r) != len(head):
            raise ValueError(f"row {i} has {len(r)} cells, the header {len(head)}")
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    if fmt == "html":
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        tb = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                     for r in body)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{tb}</tbody></table>"
    if fmt != "text":
        raise ValueError(f"unknown table format {fmt!r} (text, markdown, html)")
    cells = [head, *body]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
