"""Strict decoding of JSON request bodies, and finding what in a value cannot be stored.

Python's ``json`` accepts things that must not reach the landing zone or an answer: ``NaN`` and
``Infinity`` (not JSON), numbers that overflow to ``inf``, lone surrogates (``"\\ud800"`` decodes to
a ``str`` that cannot be encoded as UTF-8), integers over 4,300 digits (``ValueError``) and nesting
deeper than the interpreter's recursion limit (``RecursionError``). ``decode`` turns the last into
a ``BodyError`` about the whole body and keeps the numbers as ``Unstorable`` markers, so that
``first_problem`` can name the record and field they sit in (the rest of a batch can still go in).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64  # nesting of one record (objects and arrays); a real record needs about 5


class BodyError(ValueError):
    """The request body as a whole cannot be decoded (not JSON, nested too deeply, ...)."""


class Unstorable:
    """A number in the body that cannot be kept (``why`` says what it was)."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why

    def __repr__(self) -> str:
        return f"Unstorable({self.why!r})"


def _parse_int(s: str) -> int | Unstorable:
    digits = len(s) - s.startswith("-")
    if digits > 4300:  # Python's int-from-string limit (sys.get_int_max_str_digits)
        return Unstorable(f"an integer of {digits:,} digits is out of range")
    return int(s)


def _parse_float(s: str) -> float | Unstorable:
    f = float(s)
    if not math.isfinite(f):
        return Unstorable(f"the number {s[:24]}{'...' if len(s) > 24 else ''} is out of range")
    return f


def _parse_constant(name: str) -> Unstorable:
    return Unstorable(f"{name} is not a JSON number")


def decode(raw: bytes) -> Any:
    """Decode a JSON body; raise ``BodyError`` when the body as a whole cannot be decoded."""
    try:
        value = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_parse_constant)
    except RecursionError:
        raise BodyError("body is nested too deeply to decode (objects/arrays nested "
                        f"deeper than about 1,000 levels; a record may nest {MAX_DEPTH})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    if isinstance(value, Unstorable):
        raise BodyError(f"body is not valid: {value.why}")
    return value


def encodable(s: str) -> bool:
    """True when ``s`` can be encoded as UTF-8 (it holds no lone surrogate)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


SURROGATE = "contains a lone surrogate (U+D800-U+DFFF), which is not valid Unicode text"


def first_problem(value: Any, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first thing in a decoded value that cannot be stored: ``(field path, message)``, the
    path written like pydantic's (``messages.0.content``; ``record`` for the value itself), the
    message never quoting the offending text (a non-finite float, which ``decode`` never
    produces but another parser may, is reported too). ``None`` when everything can be stored."""
    stack: list[tuple[Any, tuple, int]] = [(value, (), 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            if not encodable(v):
                return _path(path), SURROGATE
        elif isinstance(v, Unstorable):
            return _path(path), v.why
        elif isinstance(v, float) and not math.isfinite(v):
            return _path(path), "is not a finite number"
        elif isinstance(v, dict | list):
            if depth >= max_depth:
                return _path(path), f"nested deeper than {max_depth} levels"
            if isinstance(v, dict):
                for k, item in reversed(v.items()):
                    if not encodable(k):
                        return _path(path), f"a key {SURROGATE}"
                    stack.append((item, (*path, k), depth + 1))
            else:
                stack.extend((item, (*path, i), depth + 1) for i, item in reversed(
                    list(enumerate(v))))
    return None


def _path(path: tuple) -> str:
    return ".".join(map(str, path)) or "record"
