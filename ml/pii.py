"""PII scrubbing: vectorized over Polars string columns, and the same rules for one string.

Every detector replaces what it finds by a typed placeholder (``[EMAIL]``, ``[PHONE]``,
``[CREDIT_CARD]``, ``[IBAN]``, ``[IP_ADDRESS]``, ``[SSN]``, ``[SECRET]``). Detectors run in a fixed
order (``PII_TYPES``): secrets first (tokens contain digits and ``@``), then e-mails, IBANs, card
numbers, SSNs, IP addresses and, last and most permissive, phone numbers.

Two implementations share one set of rules:

* ``scrub_frame`` (the ingest path) works on whole Polars columns: one union-pattern
  ``str.contains`` picks the rows that can hold anything at all, those rows are scrubbed once per
  distinct text (chat logs repeat system prompts and earlier turns), and per PII type one scan
  picks the texts the type's rules then rewrite with ``str.replace_all`` (Rust ``regex``). The two
  checksum detectors (card numbers: Luhn; IBANs: mod-97) run their Python rule on their candidate
  texts only (digit runs of 13+ characters and IBAN-shaped tokens are rare in chat text).
* ``scrub_text`` / ``find_pii`` run the same patterns with Python ``re``. The patterns use only the
  syntax both engines read the same way (no look-around, no back-references, explicit ``[0-9]``
  instead of ``\\d``), so both give the same output; ``tests/ml/test_pii.py`` checks that.

Out of scope: names of people, postal addresses. Known limits (documented, tested where cheap):
version strings shaped like dotted quads (``1.2.3.4``) are taken for IPv4 addresses; a 10-digit
number written with phone separators (``555-123-4567``) is taken for a phone number, a bare
10-digit run (``5551234567``, typical of order numbers) is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

# ---- patterns (Rust-regex and Python-re compatible) ------------------------------------------

_SECRET_PATTERNS: list[tuple[str, str, str]] = [
    # (pattern, python replacement, polars replacement)
    (r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}", "[SECRET]", "[SECRET]"),
    (r"\bsk-[A-Za-z0-9_-]{20,}", "[SECRET]", "[SECRET]"),
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "[SECRET]", "[SECRET]"),
    (r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}", "[SECRET]", "[SECRET]"),
    (r"\bgithub_pat_[A-Za-z0-9_]{22,}", "[SECRET]", "[SECRET]"),
    (r"\bxox[abposre]-[A-Za-z0-9-]{10,}", "[SECRET]", "[SECRET]"),
    (r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", "[SECRET]", "[SECRET]"),
    (r"(?i)\b(bearer)[ \t]+[A-Za-z0-9._~+/=-]{16,}", r"\1 [SECRET]", "${1} [SECRET]"),
    (
        r"(?i)\b(api[_-]?key|apikey|api[_-]?secret|api[_-]?token|access[_-]?token|auth[_-]?token"
        r"|refresh[_-]?token|client[_-]?secret|secret[_-]?key|private[_-]?key|secret|password"
        r"|passwd|pwd)([\"']?[ \t]*[:=][ \t]*[\"']?)[^ \t\n\r\f\v\"',;\[][^ \t\n\r\f\v\"',;]{3,}",
        r"\1\2[SECRET]",
        "${1}${2}[SECRET]",
    ),
]

_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"

# IBAN candidates: country code, check digits, 11-30 alphanumerics in groups of four (spaces
# optional). Validated with mod-97 in Python; trailing groups are trimmed until it validates.
_IBAN_CAND = r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"

# card candidates: 13-19 digits, single spaces or dashes allowed between digits; Luhn in Python.
_CARD_CAND = r"\b(?:[0-9][ -]?){12,18}[0-9]\b"

# US SSN: area 001-899 except 666, group 01-99, serial 0001-9999; dashes required.
_SSN = (
    r"\b(?:00[1-9]|0[1-9][0-9]|[1-578][0-9]{2}|6[0-57-9][0-9]|66[0-57-9])"
    r"-(?:0[1-9]|[1-9][0-9])-(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})\b"
)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"\b(?:{_OCTET}\.){{3}}{_OCTET}\b"
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = (
    rf"\b(?:{_H}:){{7}}{_H}\b"  # full form
    rf"|\b(?:{_H}:){{2,6}}(?::{_H}){{1,5}}\b"  # compressed, >= 3 groups
    rf"|\b(?:{_H}:){{1,6}}(?::{_H}){{2,5}}\b"
)

_PHONE = (
    # international: +CC then 1-4 digit group (optionally parenthesised) and 2-4 more groups
    r"\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){2,4}\b"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-555-123-4567
    r"|(?:\b1[ .-])?(?:\([2-9][0-9]{2}\)[ .-]?|\b[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}\b"
    # national with trunk 0: 030 12345678, 020 7946 0958, 0151-12345678
    r"|\b0[1-9][0-9]{1,3}[ /-]?[0-9]{3,4}[ -]?[0-9]{3,5}\b"
    # French style: 06 12 34 56 78
    r"|\b0[1-9](?: ?[0-9]{2}){4}\b"
)

PII_TYPES: tuple[str, ...] = (
    "SECRET", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE",
)


def placeholder(pii_type: str) -> str:
    return f"[{pii_type}]"


# ---- checksum rules (shared by both paths) ---------------------------------------------------

_IBAN_LENGTHS = {  # ISO 13616 registry lengths of common countries; others: 15-34
    "AD": 24, "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18,
    "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24,
}


def iban_valid(candidate: str) -> bool:
    """ISO 13616 check: length for the country and the mod-97 remainder 1."""
    s = candidate.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    want = _IBAN_LENGTHS.get(s[:2])
    if want is not None and len(s) != want:
        return False
    if not s.isascii() or not s.isalnum():
        return False
    rearranged = s[4:] + s[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_valid(digits: str) -> bool:
    """13-19 digits, an issuer prefix (2-6: Mastercard 2-series, Amex/Diners/JCB, Visa, MC,
    Discover/UnionPay) and a valid Luhn check digit. Digit runs starting 0, 1, 7, 8, 9 (order
    numbers, phone numbers, timestamps) are left alone."""
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _iban_sub(m: re.Match[str]) -> str:
    text = m.group(0)
    pieces = text.split(" ")
    for k in range(len(pieces), 0, -1):  # longest prefix of space-separated groups first
        head = " ".join(pieces[:k])
        if iban_valid(head):
            rest = text[len(head):]
            return "[IBAN]" + rest
    return text


def _card_sub(m: re.Match[str]) -> str:
    text = m.group(0)
    if m.start() > 0 and m.string[m.start() - 1] == "+":
        return text  # "+4915112345678": an international phone number, not a card
    groups = re.split(r"([ -])", text)  # digits, sep, digits, sep, ...
    digit_groups = groups[0::2]
    seps = groups[1::2]
    n = len(digit_groups)
    # the longest, then leftmost window of whole groups that is a valid card number
    for width in range(n, 0, -1):
        for start in range(0, n - width + 1):
            window = digit_groups[start:start + width]
            digits = "".join(window)
            if card_valid(digits):
                before = "".join(g + s for g, s in zip(digit_groups[:start], seps[:start], strict=True))
                after = "".join(s + g for s, g in zip(seps[start + width - 1:],
                                                       digit_groups[start + width:], strict=True))
                return before + "[CREDIT_CARD]" + after
    return text


# ---- the rule table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    pii_type: str
    pattern: str
    py_repl: str | Callable[[re.Match[str]], str]
    pl_repl: str | None  # None: checksum rule, Python over candidate rows

    @property
    def compiled(self) -> re.Pattern[str]:
        return _COMPILED[self.pattern]

    @property
    def rust(self) -> str:
        return _rust(self.pattern)


def _rust(pattern: str) -> str:
    """The Polars (Rust regex) spelling of a pattern: ASCII word boundaries, as Python's
    ``re.ASCII`` reads ``\\b``. (A Unicode ``\\b`` also stops Rust's fast DFA on non-ASCII text.)"""
    return pattern.replace(r"\b", r"(?-u:\b)")


_RULES: list[_Rule] = (
    [_Rule("SECRET", p, py, plr) for p, py, plr in _SECRET_PATTERNS]
    + [
        _Rule("EMAIL", _EMAIL, "[EMAIL]", "[EMAIL]"),
        _Rule("IBAN", _IBAN_CAND, _iban_sub, None),
        _Rule("CREDIT_CARD", _CARD_CAND, _card_sub, None),
        _Rule("SSN", _SSN, "[SSN]", "[SSN]"),
        _Rule("IP_ADDRESS", _IPV6, "[IP_ADDRESS]", "[IP_ADDRESS]"),
        _Rule("IP_ADDRESS", _IPV4, "[IP_ADDRESS]", "[IP_ADDRESS]"),
        _Rule("PHONE", _PHONE, "[PHONE]", "[PHONE]"),
    ]
)
# Python side: ASCII \b and \s, the same as the Rust spelling above
_COMPILED: dict[str, re.Pattern[str]] = {r.pattern: re.compile(r.pattern, re.ASCII)
                                         for r in _RULES}
# one union pattern: a row that does not match it cannot contain anything any rule replaces
_ANY = "|".join(f"(?:{r.rust})" for r in _RULES)
# the rules grouped by PII type (consecutive in _RULES), with each group's union pattern
_GROUPS: list[tuple[str, list[_Rule], str]] = []
for _r in _RULES:
    if _GROUPS and _GROUPS[-1][0] == _r.pii_type:
        _GROUPS[-1][1].append(_r)
    else:
        _GROUPS.append((_r.pii_type, [_r], ""))
_GROUPS = [(t, rs, "|".join(f"(?:{r.rust})" for r in rs)) for t, rs, _ in _GROUPS]
del _r


# ---- single strings ---------------------------------------------------------------------------


def scrub_text(s: str | None) -> tuple[str | None, list[str]]:
    """Scrub one string; return (scrubbed text, PII types replaced, in ``PII_TYPES`` order)."""
    if s is None:
        return None, []
    found: set[str] = set()
    for rule in _RULES:
        new = rule.compiled.sub(rule.py_repl, s)
        if new != s:
            found.add(rule.pii_type)
            s = new
    return s, [t for t in PII_TYPES if t in found]


def find_pii(s: str | None) -> list[tuple[str, str]]:
    """PII still present in ``s`` (placeholders are not PII): a list of (type, matched text).

    Checksum types report only candidates that validate. The asset check on scrubbed output runs
    this and fails if the list is not empty."""
    if not s:
        return []
    out: list[tuple[str, str]] = []
    for rule in _RULES:  # in scrub order, each rule on the text the earlier rules left
        for m in rule.compiled.finditer(s):
            if rule.pl_repl is None:
                replaced = rule.py_repl(m)  # type: ignore[operator]
                if replaced == m.group(0):
                    continue
            out.append((rule.pii_type, m.group(0)))
        s = rule.compiled.sub(rule.py_repl, s)
    return out


# ---- vectorized -------------------------------------------------------------------------------


def _scatter(base: pl.Series, idx: pl.Series, values: pl.Series) -> pl.Series:
    out = base.clone()
    if idx.len():
        out.scatter(idx, values)
    return out


def _scrub_series(s: pl.Series) -> tuple[pl.Series, dict[str, pl.Series]]:
    """Scrub one String series; return it and, per PII type found, a Boolean 'replaced here'.

    Rows that cannot match (the union prefilter) are left alone; the candidate rows are scrubbed
    once per distinct value (chat logs repeat the same texts: system prompts, earlier turns)."""
    cand = s.str.contains(_ANY).fill_null(False)
    idx = cand.arg_true()
    if idx.len() == 0:
        return s, {}
    sub_all = s.gather(idx)
    distinct = sub_all.unique(maintain_order=True)
    sub = distinct
    sub_flags: dict[str, pl.Series] = {}
    for pii_type, rules, union in _GROUPS:
        # one scan per type over the current texts; the type's rules then run on the hit rows
        # only (a row no rule of the type matches is left unchanged by all of them)
        hit_idx = sub.str.contains(union).fill_null(False).arg_true()
        if hit_idx.len() == 0:
            continue
        part = sub.gather(hit_idx)
        before = part
        for rule in rules:
            if rule.pl_repl is not None:
                part = part.str.replace_all(rule.rust, rule.pl_repl)
            else:
                fn, repl = rule.compiled.sub, rule.py_repl
                part = pl.Series([fn(repl, v) for v in part.to_list()], dtype=pl.String)
        changed_part = (part != before).fill_null(False)
        if changed_part.any():
            changed = _scatter(pl.Series([False] * sub.len(), dtype=pl.Boolean), hit_idx,
                               changed_part)
            prev = sub_flags.get(pii_type)
            sub_flags[pii_type] = changed if prev is None else (prev | changed)
            sub = _scatter(sub, hit_idx, part)
    if sub.len() != sub_all.len():  # back from distinct values to the candidate rows
        pos = pl.DataFrame({"v": sub_all}).join(
            pl.DataFrame({"v": distinct}).with_row_index("k"),
            on="v", how="left", maintain_order="left", nulls_equal=True)["k"]
        sub = sub.gather(pos)
        sub_flags = {t: f.gather(pos) for t, f in sub_flags.items()}
    out = _scatter(s, idx, sub)
    n = s.len()
    flags = {t: _scatter(pl.Series(values=[False], dtype=pl.Boolean).extend_constant(False, n - 1)
                         if n else pl.Series([], dtype=pl.Boolean), idx, f)
             for t, f in sub_flags.items()}
    return out, flags


def _types_column(flags: dict[str, pl.Series], n: int) -> pl.Series:
    if not flags:
        return pl.Series("pii_types", [[]] * n, dtype=pl.List(pl.String))
    frame = pl.DataFrame({t: flags[t] for t in PII_TYPES if t in flags})
    exprs = [pl.when(pl.col(t)).then(pl.lit(t)).otherwise(pl.lit(None, pl.String))
             for t in frame.columns]
    return frame.select(pl.concat_list(exprs).list.drop_nulls().alias("pii_types")).to_series()


def scrub_series(s: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Scrub a String series; return (scrubbed, List[String] of PII types replaced per row)."""
    out, flags = _scrub_series(s.cast(pl.String))
    return out.alias(s.name), _types_column(flags, s.len())


def scrub_frame(df: pl.DataFrame, columns: list[str]) -> tuple[pl.DataFrame, pl.Series]:
    """Scrub ``columns`` of ``df`` (String or List[String] columns).

    Returns the frame with those columns scrubbed and a ``pii_types`` List[String] series: per row,
    the PII types replaced in any of the columns, in ``PII_TYPES`` order."""
    n = df.height
    flags: dict[str, pl.Series] = {}

    def add(t: str, f: pl.Series) -> None:
        flags[t] = f if t not in flags else (flags[t] | f)

    replaced: list[pl.Series] = []
    for col in columns:
        series = df.get_column(col)
        if series.dtype == pl.List(pl.String):
            # scrub the flattened values, then put them back into the same list offsets
            arr = series.to_arrow()
            arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
            arr = arr.cast(pa.large_list(pa.large_string()))
            values = pl.Series(arr.flatten())
            scrubbed, fl = _scrub_series(values)
            if not fl:
                replaced.append(series)
                continue
            # rows of the flattened values: list i owns values offsets[i] .. offsets[i+1]
            lengths = series.list.len().fill_null(0)
            row_of = pl.int_range(0, n, dtype=pl.UInt32, eager=True).repeat_by(
                lengths).explode().drop_nulls()
            offsets = pl.concat([pl.Series([0], dtype=pl.Int64),
                                 lengths.cast(pl.Int64).cum_sum()]).to_arrow()
            rebuilt = pl.from_arrow(pa.LargeListArray.from_arrays(
                offsets, scrubbed.to_arrow().cast(pa.large_string()),
                mask=pa.array(series.is_null().to_list()) if series.null_count() else None))
            replaced.append(rebuilt.alias(col).cast(series.dtype))
            for t, f in fl.items():
                rows = row_of.filter(f).unique()
                flag = pl.Series([False] * n, dtype=pl.Boolean)
                if rows.len():
                    flag.scatter(rows, True)
                add(t, flag)
        else:
            scrubbed, fl = _scrub_series(series.cast(pl.String))
            replaced.append(scrubbed.alias(col))
            for t, f in fl.items():
                add(t, f)
    out = df.with_columns(replaced) if replaced else df
    return out, _types_column(flags, n)


# ---- JSON values ------------------------------------------------------------------------------


def scrub_json_value(value: object, found: set[str]) -> object:
    """Scrub every string of a decoded JSON value (object keys too); a number whose digits are PII
    (a card number written as a JSON integer, ...) becomes its scrubbed text. Adds the PII types
    replaced to ``found``."""
    if isinstance(value, str):
        out, types = scrub_text(value)
        found.update(types)
        return out
    if isinstance(value, dict):
        return {scrub_json_value(k, found): scrub_json_value(v, found) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_json_value(v, found) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out, types = scrub_text(str(value))
        if types:
            found.update(types)
            return out
    return value


_JSON_ESCAPE = r'\\(?:u[0-9A-Fa-f]{4}|["\\/bfnrt])'


def json_text_candidates(s: pl.Series) -> pl.Series:
    """Boolean per JSON text of ``s``: could a string or number inside hold PII? JSON escapes are
    read as a space first (every escaped character is a non-word character, so the word
    boundaries are those of the decoded strings): a superset of the texts ``scrub_json_value``
    changes, used to pick the few rows worth decoding."""
    return s.str.replace_all(_JSON_ESCAPE, " ").str.contains(_ANY).fill_null(False)


# ---- detection in a DuckDB table (the asset check) --------------------------------------------


def _re2(pattern: str) -> str:
    """A rule pattern for DuckDB's RE2: an inline ``(?i)`` prefix becomes a scoped group (RE2's
    ``\\b`` is ASCII, as Python's ``re.ASCII`` reads it)."""
    return f"(?i:{pattern[4:]})" if pattern.startswith("(?i)") else pattern


RE2_ANY = "|".join(f"(?:{_re2(r.pattern)})" for r in _RULES)


def residual_pii_in_table(con, table: str, where: str = "true", params: list | None = None,
                          skip: tuple[str, ...] = ()) -> list[dict]:
    """PII left in the rows of DuckDB ``table`` matching ``where``: every VARCHAR and VARCHAR[]
    column except ``skip``. DuckDB (RE2) picks the values matching any rule's pattern; ``find_pii``
    (Python ``re``, with the checksum rules and placeholders ignored) decides. Independent of
    ``scrub_frame``'s engine (Polars / Rust regex). Returns ``[{column, pii_type, values}]``:
    per column and type, the number of values holding it."""
    cols = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position", [table]).fetchall()
    if not cols:
        raise ValueError(f"residual_pii_in_table: no table {table!r} in the warehouse")
    out: list[dict] = []
    for name, typ in cols:
        if name in skip or typ not in ("VARCHAR", "VARCHAR[]"):
            continue
        value = f'"{name}"' if typ == "VARCHAR" else f'unnest("{name}")'
        rows = con.execute(
            f'SELECT v FROM (SELECT {value} AS v FROM "{table}" WHERE {where}) '
            f"WHERE regexp_matches(v, ?)", [*(params or []), RE2_ANY]).fetchall()
        counts: dict[str, int] = {}
        for (v,) in rows:
            for t in {t for t, _ in find_pii(v)}:
                counts[t] = counts.get(t, 0) + 1
        out.extend({"column": name, "pii_type": t, "values": counts[t]}
                   for t in PII_TYPES if t in counts)
    return out
