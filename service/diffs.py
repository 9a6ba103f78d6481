"""Word-level diff of a proposed correction against the original reply, rendered as safe HTML."""

from __future__ import annotations

import difflib
import re
from html import escape

from markupsafe import Markup

_TOKENS = re.compile(r"\s+|[^\s]+")


def tokens(text: str) -> list[str]:
    return _TOKENS.findall(text or "")


def diff_ops(original: str, proposed: str) -> list[tuple[str, str]]:
    """``[(op, text)]`` with op ``equal | delete | insert`` (a replace is a delete then an insert)."""
    a, b = tokens(original), tokens(proposed)
    raw: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            raw.append(("equal", "".join(a[i1:i2])))
        if tag in ("delete", "replace"):
            raw.append(("delete", "".join(a[i1:i2])))
        if tag in ("insert", "replace"):
            raw.append(("insert", "".join(b[j1:j2])))
    return merge_changes(raw)


def merge_changes(ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Readable hunks: whitespace kept between two changes joins them, and each run of changes
    becomes one deletion followed by one insertion."""
    out: list[tuple[str, str]] = []
    dele, ins = [], []

    def flush() -> None:
        if dele:
            out.append(("delete", "".join(dele)))
        if ins:
            out.append(("insert", "".join(ins)))
        dele.clear()
        ins.clear()

    for k, (op, text) in enumerate(ops):
        if op == "equal":
            between = (dele or ins) and k + 1 < len(ops) and ops[k + 1][0] != "equal"
            if between and text.isspace():
                dele.append(text)
                ins.append(text)
                continue
            flush()
            out.append((op, text))
        elif op == "delete":
            dele.append(text)
        else:
            ins.append(text)
    flush()
    return out


def diff_html(original: str | None, proposed: str | None) -> Markup:
    parts = []
    for op, text in diff_ops(original or "", proposed or ""):
        t = escape(text)
        if op == "equal":
            parts.append(t)
        elif op == "delete":
            parts.append(f'<del class="d-del">{t}</del>')
        else:
            parts.append(f'<ins class="d-ins">{t}</ins>')
    return Markup("".join(parts))


def unified_diff(original: str | None, proposed: str | None) -> str:
    return "".join(difflib.unified_diff((original or "").splitlines(keepends=True),
                                        (proposed or "").splitlines(keepends=True),
                                        fromfile="original", tofile="proposed"))
