"""The vectorized ingest path: ``ingest_files``, used by the ``interactions`` asset, and
``drop_cross_partition_duplicates``.

1. JSONL files are cut into ~64 MB byte ranges at line ends; each range (a chunk) goes through
   steps 2, 3 and 5 on its own, in worker processes when the input spans several chunks (one per
   CPU; ``workers=`` overrides; ``ml.ingest.workers``), and the results are put back in
   file/line order. Parquet files are turned into one JSON text per row first (DuckDB
   ``to_json``; a NULL cell is an absent field), then treated like JSONL lines whose line number
   is the row number. A gzip-compressed
   ``.jsonl`` (by its magic bytes) is decompressed whole and processed in-process. A file that
   cannot be read as a whole (not Parquet, a corrupt gzip stream, no permission, ...) becomes
   one quarantine row (``line_no`` and ``raw`` NULL, reason ``unreadable Parquet: ...``,
   ``unreadable gzip-compressed JSONL: ...`` or ``unreadable file: ...``); the other files go on.
   Lines that are not UTF-8 are quarantined one by one (``invalid UTF-8``).
2. Every line is decoded and validated by msgspec (C) into typed Structs that spell the rules of
   ``ml.schema.InteractionRecord`` *strictly* (a JSON int for an int, a JSON bool for a bool,
   lengths, ranges, roles, ...); the timestamp and the "messages or response" rule are checked
   vectorized after. A line that passes is certainly one pydantic accepts, with the same values
   (msgspec and ``json.loads`` agree on duplicate keys: the last wins). The decoded records are
   turned into columns (Polars) without a per-field DuckDB/JSON pass.
3. Every other line (invalid JSON, a wrong type, a value pydantic would coerce such as ``"3"``
   for an int, a numeric timestamp, a lone surrogate escape, ...) goes to the per-record Python
   path (``ml.ingest.reference._python_record``): ``json.loads`` + ``ml.schema.validate_record``.
   That path decides, so the accept/reject set is exactly the pydantic one, and its reasons name
   the field (``feedback.rating: Input should be less than or equal to 5``). In real logs this is
   the small minority of bad lines.
   A line an importer rejected and wrapped as ``{"import_rejected": {..., "reason": ...}}`` is
   quarantined with the importer's reason (``import rejected (<format> <file>): <reason>``).
4. De-duplication on ``(tenant_id, interaction_id)`` within the partition (first by file order,
   then line; ids are per tenant, so two tenants' records with the same id are both kept); a
   later copy with the same record text (whitespace-trimmed) is an exact duplicate and is dropped
   (listed in ``stats["exact_duplicate_rows"]``); a later record of the same tenant with the same
   id but different text is quarantined (``DUPLICATE_REASON``).
   Fields outside the contract are kept by path in ``extra`` (JSON): a line refused by the
   closed Structs for an unknown key only is decoded with the open ones and its unknown fields
   are collected in Python. An empty ``human_correction.corrected_response`` drops the
   correction (into ``extra``, with a note in ``ingest_notes``), not the record.
5. PII scrubbing (``ml.pii.scrub_frame``) of every free-text column (``SCRUBBED_COLUMNS``:
   message contents, response, corrected response, comment, correction agent/reason/category,
   channel, model provider/name/version, intent, language, tags) and of every string (keys too)
   and number inside ``retrieval`` (decoded, scrubbed, re-encoded; only rows whose JSON text could
   hold PII are decoded). Not scrubbed: ``interaction_id`` and ``tenant_id`` (keys), the enums
   (roles, thumbs). ``user_message`` = the last user message (scrubbed); ``messages`` = compact
   JSON list of ``{role, content}``; ``session_id`` = hex HMAC-SHA256(hash_key, raw session id).
   Quarantine rows have their ``raw`` text and ``reason`` scrubbed the same way.
6. ``drop_cross_partition_duplicates`` (called by the ``interactions`` asset with the rows other
   partitions of the warehouse hold for the same tenant and id): exact copies are dropped, same id with
   different content is quarantined (``duplicate interaction_id of partition YYYY-MM-DD``).

``ml.ingest.reference.naive_ingest`` computes the same result record by record: the benchmark's
baseline and the tests' oracle.
"""

from __future__ import annotations

import collections
import gc
import hmac
import itertools
import json
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import polars as pl
import pyarrow as pa

from ml.ingest.common import (
    _BLANK,
    _STAGE_SCHEMA,
    CHUNK_BYTES,
    DUPLICATE_REASON,
    INT32_MAX,
    INT64_MAX,
    INTERACTION_SCHEMA,
    QUARANTINE_SCHEMA,
    SCRUBBED_COLUMNS,
    IngestResult,
    UnreadableFile,
    _decode_lines,
    _dumps,
    _empty_quarantine,
    _gunzip,
    _is_gzip,
    _Laps,
    _one_line,
    _parquet_lines,
    _read_lines,
    _stats,
    _unreadable_row,
    apply_timestamp_rules,
    extra_json,
    scrub_quarantine,
)
from ml.ingest.reference import _python_record
from ml.ingest.workers import _ChunkPool, _worker_count
from ml.pii import PII_TYPES, json_text_candidates, scrub_frame, scrub_json_value
from ml.schema import BLANK_PATTERN, EMPTY_CORRECTION_NOTE, MAX_TEXT
from ml.tables import INTERACTION_COLUMNS

_LOW_CARDINALITY = ("correction_category", "correction_agent_id", "channel", "model_provider",
                    "model_name", "model_version", "intent", "language")
log = logging.getLogger(__name__)


# ---- decoding and validating lines ------------------------------------------------------------
#
# The fast path decodes and validates each line with msgspec (C): typed Structs whose rules are
# those of ``ml.schema.InteractionRecord`` made *strict* (a JSON int for an int, a JSON bool for a
# bool, no coercion of "3" or 3.0), so a line msgspec accepts is one pydantic accepts with the same
# values. msgspec and ``json.loads`` agree on what they share: the last of duplicate keys wins,
# unknown keys are ignored, and msgspec rejects what ``_python_record`` would quarantine or
# treats specially (lone surrogate escapes, raw control characters, NaN/Infinity, trailing
# commas, a BOM). Everything msgspec rejects goes to the per-record Python path, which decides.

_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
_OptText = _Text | None
_NonNegFloat = Annotated[float, msgspec.Meta(ge=0)] | None


class _MMessage(msgspec.Struct, gc=False):
    role: Literal["system", "user", "assistant", "tool"]
    content: _Text


class _MModel(msgspec.Struct, gc=False):
    provider: str | None = None
    name: str | None = None
    version: str | None = None


class _MTokens(msgspec.Struct, gc=False):
    prompt: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] | None = None
    completion: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] | None = None


class _MFeedback(msgspec.Struct, gc=False):
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None
    thumbs: Literal["up", "down"] | None = None
    comment: _OptText = None
    conversation_rating: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None


class _MSignals(msgspec.Struct, gc=False):
    user_continued: bool | None = None
    completed_action: bool | None = None
    requested_human: bool | None = None
    abandoned: bool | None = None
    accepted: bool | None = None
    modified: bool | None = None
    time_to_first_use_s: _NonNegFloat = None


class _MCorrection(msgspec.Struct, gc=False):
    corrected_response: _Text  # an empty one is dropped after decoding (``_drop_empty``)
    agent_id: str | None = None
    reason: str | None = None
    category: str | None = None


class _MMetadata(msgspec.Struct, gc=False):
    intent: str | None = None
    language: str | None = None
    tags: list[str] = []


class _MRecord(msgspec.Struct, gc=False):
    interaction_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    timestamp: str  # parsed below (vectorized); an unusual format takes the Python path
    tenant_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "default"
    turn_index: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)] | None = None
    channel: str | None = None
    model: _MModel | None = None
    messages: list[_MMessage] = []
    response: _OptText = None
    latency_ms: _NonNegFloat = None
    tokens: _MTokens | None = None
    retrieval: list[dict | str] | None = None
    feedback: _MFeedback | None = None
    signals: _MSignals | None = None
    human_correction: _MCorrection | None = None
    metadata: _MMetadata | None = None


# The same Structs refusing unknown keys: a line that decodes with them has no field outside the
# contract (the common case, one decode). A line refused for an unknown key only is decoded with
# the Structs above and its unknown fields are collected in Python (``_extras``).
def _closed(cls: type) -> type:
    """``cls`` refusing unknown keys (a subclass with ``forbid_unknown_fields``)."""
    return types.new_class(cls.__name__.replace("_M", "_S", 1), (cls,),
                           {"forbid_unknown_fields": True})


_SMessage, _SModel, _STokens, _SFeedback, _SSignals, _SCorrection, _SMetadata = map(
    _closed, (_MMessage, _MModel, _MTokens, _MFeedback, _MSignals, _MCorrection, _MMetadata))


class _SRecord(_MRecord, forbid_unknown_fields=True):
    model: _SModel | None = None
    messages: list[_SMessage] = []
    tokens: _STokens | None = None
    feedback: _SFeedback | None = None
    signals: _SSignals | None = None
    human_correction: _SCorrection | None = None
    metadata: _SMetadata | None = None


_DECODE = msgspec.json.Decoder(_MRecord).decode
_DECODE_CLOSED = msgspec.json.Decoder(_SRecord).decode
# all-None stand-ins for an absent sub-object when transposing
_EMPTY: dict[type, Any] = {
    _MRecord: None, _MMessage: None, _MModel: _MModel(), _MTokens: _MTokens(),
    _MFeedback: _MFeedback(), _MSignals: _MSignals(), _MMetadata: _MMetadata(),
    _MCorrection: _MCorrection(corrected_response=None),  # type: ignore[arg-type]
}
_ENCODE = msgspec.json.Encoder().encode
_MSGSPEC_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)
# the ISO-8601 shapes parsed vectorized (pydantic reads these the same way); others: Python path
_TS_RE = (r"^((?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2})[T ]((?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9])"
          r"(?:\.([0-9]{1,6}))?(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$")
# msgspec writes floats like Python's json.dumps except where Python uses an exponent
# (1e-05, 1e+16): retrieval JSON with a digit before e/E or a 0.0000 run is re-serialized in Python
_RETRIEVAL_RISKY = r"[0-9][eE]|0\.0000"
_BOOLS = ("user_continued", "completed_action", "requested_human", "abandoned", "accepted",
          "modified")


def _parse_ts(ts: pl.Expr) -> pl.Expr:
    """UTC naive datetime of the accepted ISO-8601 shapes; NULL for anything else."""
    parts = ts.str.extract_groups(_TS_RE)
    base = pl.concat_str(parts.struct.field("1"), pl.lit("T"), parts.struct.field("2")) \
        .str.to_datetime("%Y-%m-%dT%H:%M:%S", time_unit="us", strict=False)
    frac = parts.struct.field("3").str.pad_end(6, "0").cast(pl.Int64).fill_null(0)
    off = parts.struct.field("4")
    off_min = (pl.when(off.is_null() | (off == "Z")).then(0)
               .otherwise(off.str.slice(1, 2).cast(pl.Int64) * 60
                          + off.str.slice(4, 2).cast(pl.Int64))
               * pl.when(off.str.starts_with("-")).then(-1).otherwise(1))
    return base + pl.duration(microseconds=frac) - pl.duration(minutes=off_min)


_astuple = msgspec.structs.astuple


def _fields(structs: list, cls: type) -> tuple:
    """Per field of ``cls``, the sequence of its values over ``structs`` (a None in ``structs``
    gives None for every field)."""
    if not structs:
        return tuple(() for _ in cls.__struct_fields__)
    if cls is _MRecord:  # many fields: one transposition of the tuples is cheapest
        return tuple(zip(*map(_astuple, structs), strict=True))
    empty = _EMPTY[cls]
    if empty is not None:
        structs = [s if s is not None else empty for s in structs]
    return tuple(list(map(attrgetter(f), structs)) for f in cls.__struct_fields__)


def _columns(recs: list) -> dict[str, Any]:
    """Column values of the decoded records (stage layout minus ts; messages/tags flattened)."""
    top = dict(zip(_MRecord.__struct_fields__, _fields(recs, _MRecord), strict=True))
    cols: dict[str, Any] = {
        "interaction_id": top["interaction_id"], "tenant_id": top["tenant_id"],
        "session_raw": top["session_id"], "turn_index": top["turn_index"],
        "timestamp": top["timestamp"], "channel": top["channel"], "response": top["response"],
        "latency_ms": top["latency_ms"],
    }
    n = len(recs)
    for prefix, cls in (("model_", _MModel), ("tokens_", _MTokens), ("feedback_", _MFeedback),
                        ("", _MSignals), ("correction_", _MCorrection)):
        name = {_MModel: "model", _MTokens: "tokens", _MFeedback: "feedback",
                _MSignals: "signals", _MCorrection: "human_correction"}[cls]
        subs = top[name]
        present = [i for i, s in enumerate(subs) if s is not None]
        sparse = len(present) < n // 2  # e.g. feedback, corrections: fields of those rows only
        values_per_field = _fields([subs[i] for i in present] if sparse else subs, cls)
        for field_name, values in zip(cls.__struct_fields__, values_per_field, strict=True):
            key = field_name if field_name in ("corrected_response", "conversation_rating") \
                else prefix + field_name
            cols[key] = _Sparse(n, present, values) if sparse else values
    md = dict(zip(_MMetadata.__struct_fields__, _fields(top["metadata"], _MMetadata), strict=True))
    cols["intent"], cols["language"] = md["intent"], md["language"]
    tags = md["tags"]
    cols["tags"] = ([len(t) for t in tags], [x for t in tags for x in t])
    enc = _ENCODE
    cols["retrieval"] = [enc(x) if x is not None else None for x in top["retrieval"]]
    msgs = top["messages"]
    flat = [m for ms in msgs for m in ms]
    roles, contents = _fields(flat, _MMessage) if flat else ((), ())
    cols["messages"] = ([len(m) for m in msgs], roles, contents)
    return cols


@dataclass
class _Sparse:
    """A column given by its values at a few rows (``present``); None elsewhere."""

    n: int
    present: list[int]
    values: Any


def _series(name: str, values: Any, dtype: pl.DataType) -> pl.Series:
    if not isinstance(values, _Sparse):
        return pl.Series(name, values, dtype=dtype)
    out = pl.Series(name, [None], dtype=dtype).extend_constant(None, values.n - 1) \
        if values.n else pl.Series(name, [], dtype=dtype)
    if values.present:
        out.scatter(values.present, pl.Series(values.values, dtype=dtype))
    return out


_COL_TYPES: dict[str, pl.DataType] = {
    **{k: v for k, v in _STAGE_SCHEMA.items() if k not in ("line_no", "ts", "msg_roles",
                                                            "msg_contents")},
    "timestamp": pl.String(), "retrieval": pl.Binary(), "turn_index": pl.Int64(),
    "feedback_rating": pl.Int64(), "conversation_rating": pl.Int64(),
}


def _list_column(name: str, lengths: list[int], values: list[str]) -> pl.Series:
    """A List(String) series from per-row lengths and the flattened values."""
    offsets = pa.array([0, *itertools.accumulate(lengths)], type=pa.int64())
    flat = pl.Series(values, dtype=pl.String).to_arrow()
    arr = pa.LargeListArray.from_arrays(offsets, flat.cast(pa.large_string()))
    return pl.from_arrow(arr).alias(name)


def _chunk_bounds(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of about ``chunk_bytes`` covering a JSONL file, each ending at a
    line end (or the end of the file). Only a little around each cut is read."""
    size = path.stat().st_size
    bounds: list[tuple[int, int]] = []
    start = 0
    step = -(-size // max(1, -(-size // max(1, chunk_bytes))))  # even pieces of <= chunk_bytes
    with open(path, "rb") as fh:
        while start < size:
            end = start + max(1, step)
            if end >= size:
                bounds.append((start, size))
                break
            fh.seek(end)
            while True:  # find the end of the line the cut falls in
                block = fh.read(1 << 16)
                if not block:
                    end = size
                    break
                nl = block.find(b"\n")
                if nl >= 0:
                    end += nl + 1
                    break
                end += len(block)
            bounds.append((start, end))
            start = end
    return bounds


def _flatten(s: pl.Series) -> pa.Array:
    """The values of a List(String) series, in order (empty and null lists contribute none)."""
    arr = s.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr.flatten()


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


def _lines_frame(first_line: int, data: bytes) -> tuple[pl.DataFrame, list[dict], list[str]]:
    """Lines of one chunk: a frame (line_no, line), quarantine rows for non-UTF-8 lines, and the
    texts of the frame's rows as a Python list (what the decoder reads)."""
    bad: list[dict] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        texts = []
        nos = []
        for i, (t, shown) in enumerate(_decode_lines(data), first_line + 1):
            if t is None:
                bad.append(dict(line_no=i, interaction_id=None, reason="invalid UTF-8",
                                raw=shown))
            else:
                texts.append(t)
                nos.append(i)
        frame = pl.DataFrame({"line_no": pl.Series(nos, dtype=pl.Int64),
                              "line": pl.Series(texts, dtype=pl.String)})
        return frame, bad, texts
    if text.endswith("\n"):
        text = text[:-1]
    texts = text.split("\n")
    del text
    frame = pl.DataFrame({"line": pl.Series(texts, dtype=pl.String)}).with_row_index(
        "line_no", offset=first_line + 1).with_columns(pl.col("line_no").cast(pl.Int64))
    return frame, bad, texts


def _process_lines(lines: pl.DataFrame, texts: list[str] | None = None
                   ) -> tuple[pl.DataFrame, list[dict], int]:
    """Validate the non-blank lines of one chunk: (stage rows, quarantine rows, fast-path count).

    ``texts``: ``lines["line"]`` as a list when the caller has it. Columns of ``lines`` other than
    the text (e.g. hashes) are joined onto the stage rows."""
    line_nos = lines.get_column("line_no").to_list()
    if texts is None:
        texts = lines.get_column("line").to_list()
    decode, decode_closed = _DECODE, _DECODE_CLOSED
    recs: list = []
    fast_nos: list[int] = []
    slow_idx: list[int] = []
    open_idx: list[tuple[int, int]] = []  # (position in recs, line index): unknown keys
    add_rec, add_no, add_slow = recs.append, fast_nos.append, slow_idx.append
    # millions of short-lived containers: the cyclic GC would rescan them again and again
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i, text in enumerate(texts):
            try:
                rec = decode_closed(text)
            except msgspec.ValidationError as exc:
                if not str(exc).startswith("Object contains unknown field"):
                    add_slow(i)
                    continue
                try:
                    rec = decode(text)
                except _MSGSPEC_ERRORS:
                    add_slow(i)
                    continue
                open_idx.append((len(recs), i))
            except msgspec.DecodeError:
                add_slow(i)
                continue
            add_rec(rec)
            add_no(line_nos[i])
        cols = _columns(recs)
        del recs
    finally:
        if gc_was_enabled:
            gc.enable()
    tag_lengths, tag_values = cols.pop("tags")
    lengths, roles, contents = cols.pop("messages")
    fast = pl.DataFrame([_series(k, v, _COL_TYPES[k]) for k, v in cols.items()] + [
        pl.Series("line_no", fast_nos, dtype=pl.Int64),
        _list_column("tags", tag_lengths, tag_values),
        _list_column("msg_roles", lengths, roles),
        _list_column("msg_contents", lengths, contents),
    ])
    del cols, roles, contents
    fast = fast.with_columns(
        _parse_ts(pl.col("timestamp")).alias("ts"),
        pl.col("retrieval").cast(pl.String),
        _extras(fast.height, open_idx, texts),
    )
    fast = _drop_empty_corrections(fast)
    # what msgspec cannot express: a parsable timestamp, messages or response present;
    # rows failing these go to the Python path (pydantic decides and words the reason)
    ok = pl.col("ts").is_not_null() & ((pl.col("msg_roles").list.len() > 0)
                                       | pl.col("response").is_not_null())
    fast = fast.with_columns(ok.alias("_ok"))
    if not fast.get_column("_ok").all():
        back = set(fast.filter(~pl.col("_ok")).get_column("line_no").to_list())
        slow_idx.extend(i for i, n in enumerate(line_nos) if n in back)
        slow_idx.sort()
        fast = fast.filter(pl.col("_ok"))
    fast = _fix_retrieval(fast.drop("_ok", "timestamp"))
    n_fast = fast.height
    rows: list[dict] = []
    bad: list[dict] = []
    for i in slow_idx:
        line_no, line = line_nos[i], texts[i]
        row, reason, iid = _python_record(line)
        if row is None:
            bad.append(dict(line_no=line_no, interaction_id=iid, reason=reason, raw=line))
        else:
            row["line_no"] = line_no
            rows.append(row)
    stage = fast.select(list(_STAGE_SCHEMA)).cast(_STAGE_SCHEMA)
    if rows:
        slow = pl.DataFrame(rows, schema=_STAGE_SCHEMA)
        stage = pl.concat([stage, slow]).sort("line_no")
    extra = lines.drop("line")  # per-line columns computed by the caller (the text hashes)
    if extra.width > 1:
        stage = stage.join(extra, on="line_no", how="left", maintain_order="left")
    return stage, bad, n_fast


def _extras(n: int, open_idx: list[tuple[int, int]], texts: list[str]) -> pl.Series:
    """The ``extra`` column of the fast-path rows: JSON of the unknown fields of the rows at
    ``open_idx`` (row, line index), NULL elsewhere (``ml.ingest.common.extra_json``)."""
    out = pl.Series("extra", [None] * n, dtype=pl.String)
    if open_idx:
        rows = [r for r, _ in open_idx]
        out.scatter(rows, pl.Series([extra_json(json.loads(texts[i]), None)
                                     for _, i in open_idx], dtype=pl.String))
    return out


_CORRECTION_FIELDS = ("correction_agent_id", "corrected_response", "correction_reason",
                      "correction_category")


def _drop_empty_corrections(fast: pl.DataFrame) -> pl.DataFrame:
    """A correction whose ``corrected_response`` is empty is dropped from its record, which is
    kept: the correction moves to ``extra`` (under ``human_correction``) and ``ingest_notes``
    says why (the rule of ``ml.schema.InteractionRecord``)."""
    empty = fast.get_column("corrected_response").str.contains(BLANK_PATTERN).fill_null(False)
    idx = empty.arg_true()
    if idx.len() == 0:
        return fast.with_columns(pl.lit([], pl.List(pl.String)).alias("ingest_notes"))
    picked = fast.select(*_CORRECTION_FIELDS, "extra").with_row_index("_i").filter(empty)
    extras = []
    for r in picked.iter_rows(named=True):
        dropped = {k: r[c] for k, c in zip(("agent_id", "corrected_response", "reason",
                                            "category"), _CORRECTION_FIELDS, strict=True)
                   if r[c] is not None}
        extra = json.loads(r["extra"]) if r["extra"] is not None else {}
        extra["human_correction"] = dropped
        extras.append(_dumps(extra))
    extra_col = fast.get_column("extra").clone()
    extra_col.scatter(idx, pl.Series(extras, dtype=pl.String))
    notes = pl.when(empty).then(pl.lit([EMPTY_CORRECTION_NOTE], pl.List(pl.String))) \
        .otherwise(pl.lit([], pl.List(pl.String))).alias("ingest_notes")
    return fast.with_columns(
        extra_col, notes,
        *[pl.when(empty).then(None).otherwise(pl.col(c)).alias(c) for c in _CORRECTION_FIELDS])


def _fix_retrieval(fast: pl.DataFrame) -> pl.DataFrame:
    """Retrieval JSON exactly as ``json.dumps`` writes it: rows where msgspec's float spelling
    may differ (exponents, tiny numbers) are re-serialized in Python (rare)."""
    risky = fast.get_column("retrieval").str.contains(_RETRIEVAL_RISKY).fill_null(False)
    idx = risky.arg_true()
    if idx.len() == 0:
        return fast
    fixed = pl.Series([_dumps(json.loads(v)) for v in
                       fast.get_column("retrieval").gather(idx).to_list()], dtype=pl.String)
    col = fast.get_column("retrieval").clone()
    col.scatter(idx, fixed)
    return fast.with_columns(col)


# ---- the chunk job and the partition ----------------------------------------------------------

_ROW_KEYS = ["file_idx", "line_no", "h1", "h2"]  # carried through the chunk job for de-duplication
_IDENTITY = ["tenant_id", "interaction_id"]  # what identifies a record: ids are per tenant


def _chunk_job(src: str, file_idx: int, lines: pl.DataFrame, bad_utf8: list[dict],
               texts: list[str] | None, hash_key: bytes, day: date, lap: Callable[[str], None]
               ) -> tuple[pl.DataFrame, list[dict], dict[str, int]]:
    """Everything per chunk that does not need the other chunks: blank lines, validation,
    scrubbing, messages JSON, session hashing. Returns the finished rows (INTERACTION_COLUMNS plus
    ``_ROW_KEYS``), the quarantine rows and the counts.

    The cyclic GC is paused meanwhile: the chunk's decoded records hold millions of containers
    (lists, dicts) that full collections would rescan again and again for nothing (there are no
    reference cycles here; everything is freed by reference counting)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _chunk_job_body(src, file_idx, lines, bad_utf8, texts, hash_key, day, lap)
    finally:
        if gc_was_enabled:
            gc.enable()


def _chunk_job_body(src: str, file_idx: int, lines: pl.DataFrame, bad_utf8: list[dict],
                    texts: list[str] | None, hash_key: bytes, day: date,
                    lap: Callable[[str], None]
                    ) -> tuple[pl.DataFrame, list[dict], dict[str, int]]:
    n_lines = lines.height + len(bad_utf8)
    blank_mask = pl.col("line").str.contains(r"^[ \t\r]*$")
    n_blank = lines.select(blank_mask.sum()).item()
    if n_blank:
        lines = lines.filter(~blank_mask)
        texts = None
    # two 64-bit hashes of the trimmed record text stand for it in the duplicate test;
    # the text of a conflicting duplicate is read back from its file at the end
    line = pl.col("line")
    edge = pl.any_horizontal([f(c) for c in _BLANK
                              for f in (line.str.starts_with, line.str.ends_with)])
    lines = lines.with_columns(line.hash(11).alias("h1"), line.hash(97).alias("h2"),
                               edge.alias("_edge"))
    idx = lines.get_column("_edge").arg_true()
    if idx.len():  # rare: hash the trimmed text of those lines
        trimmed = lines.get_column("line").gather(idx).str.strip_chars(_BLANK)
        h1, h2 = lines.get_column("h1").clone(), lines.get_column("h2").clone()
        h1.scatter(idx, trimmed.hash(11))
        h2.scatter(idx, trimmed.hash(97))
        lines = lines.with_columns(h1, h2)
    lines = lines.drop("_edge")
    lap("read")
    stage, bad, n_fast = _process_lines(lines, texts)
    del lines, texts
    lap("validate")
    quarantine = [dict(file_idx=file_idx, source_file=src, **b) for b in bad_utf8 + bad]
    stage = stage.with_columns(pl.lit(file_idx, pl.Int32).alias("file_idx"),
                               pl.lit(src, pl.String).alias("source_file"))
    rows = _finish_frame(stage, hash_key, day, lap, keep=_ROW_KEYS)
    return rows, quarantine, {"lines": n_lines, "blank": n_blank, "fast": n_fast}


def _range_job(src: str, file_idx: int, start: int, end: int, hash_key: bytes, day: date,
               lap: Callable[[str], None]) -> tuple[pl.DataFrame, list[dict], dict[str, int]]:
    """``_chunk_job`` on bytes [start, end) of a JSONL file (line numbers counted from the start
    of the range; the caller shifts them), in-process or in a worker process."""
    lines, bad_utf8, texts = _lines_frame(0, _read_range(Path(src), start, end))
    return _chunk_job(src, file_idx, lines, bad_utf8, texts, hash_key, day, lap)


def ingest_files(paths: list[Path], partition_date: str, hash_key: bytes, *,
                 chunk_bytes: int = CHUNK_BYTES, workers: int | None = None,
                 now: datetime | None = None) -> IngestResult:
    """Validate, de-duplicate, scrub and hash the landing files of one partition (vectorized).

    JSONL files are processed in chunks of ``chunk_bytes``; with ``workers`` > 0 (default: one
    per CPU when the input spans several chunks) the chunks run in worker processes, in parallel,
    and are put back in file/line order. ``stats["timings_s"]``: seconds per stage (summed over
    the workers when there are several). Last, the timestamp rules
    (``ml.ingest.common.apply_timestamp_rules``: future timestamps quarantined, timestamps far
    from the landing day noted) against ``now`` (the ingest time, default now)."""
    day = date.fromisoformat(partition_date)
    paths = [Path(p) for p in paths]
    return apply_timestamp_rules(_ingest_files(paths, day, hash_key, chunk_bytes, workers),
                                 paths, day, now)


def _ingest_files(paths: list[Path], day: date, hash_key: bytes, chunk_bytes: int,
                  workers: int | None) -> IngestResult:
    n_workers = _worker_count(paths, chunk_bytes, workers)
    if n_workers:
        from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415
        try:
            return _ingest(paths, day, hash_key, chunk_bytes, n_workers)
        except BrokenProcessPool as exc:
            # e.g. a script without an `if __name__ == "__main__":` guard, or a worker killed
            # for memory: the in-process path gives the same result, only slower
            log.warning("ingest worker processes failed (%s); continuing in-process", exc)
            result = _ingest(paths, day, hash_key, chunk_bytes, 0)
            result.stats["worker_failures"] = 1
            result.stats["worker_failure"] = _one_line(exc)
            return result
    result = _ingest(paths, day, hash_key, chunk_bytes, 0)
    result.stats["worker_failures"] = 0
    return result


def _ingest(paths: list[Path], day: date, hash_key: bytes, chunk_bytes: int, n_workers: int
            ) -> IngestResult:
    parts: list[pl.DataFrame] = []
    quarantine: list[dict] = []
    totals = {"lines": 0, "blank": 0, "fast": 0}
    lap = _Laps()
    timings = lap.seconds

    file_lines: dict[int, int] = collections.defaultdict(int)  # lines taken so far per file

    def take(rows: pl.DataFrame, bad: list[dict], counts: dict[str, int], file_idx: int) -> None:
        """Results of the next chunk, in file/line order: line numbers shifted to the file's."""
        offset = file_lines[file_idx]
        if offset:
            rows = rows.with_columns(pl.col("line_no") + offset)
            for b in bad:
                b["line_no"] += offset
        file_lines[file_idx] += counts["lines"]
        parts.append(rows)
        quarantine.extend(bad)
        for k in totals:
            totals[k] += counts[k]

    pool = _ChunkPool(n_workers) if n_workers else None
    try:
        def drain(limit: int) -> None:
            if pool is not None:
                for file_idx, rows, bad, counts, secs in pool.results(limit):
                    take(rows, bad, counts, file_idx)
                    for k, v in secs.items():
                        timings[k] += v
            lap("dedup")  # waiting for workers: counted with the merge

        for file_idx, path in enumerate(paths):
            src = str(path)
            try:
                if path.suffix == ".parquet":
                    texts = _parquet_lines(path)
                    lines = pl.DataFrame({"line": texts}, schema={"line": pl.String}
                                         ).with_row_index("line_no", offset=1).with_columns(
                        pl.col("line_no").cast(pl.Int64))
                    bad_utf8: list[dict] = []
                elif _is_gzip(path):  # decompressed whole, processed in-process
                    lines, bad_utf8, texts = _lines_frame(0, _gunzip(path))
                else:
                    bounds = _chunk_bounds(path, chunk_bytes)
                    lines = None
            except UnreadableFile as exc:
                # the file as a whole goes to quarantine; the other files go on
                quarantine.append(_unreadable_row(file_idx, src, exc.reason))
                continue
            if lines is not None:
                lap("read")
                take(*_chunk_job(src, file_idx, lines, bad_utf8, texts, hash_key, day, lap),
                     file_idx)
                continue
            for start, end in bounds:
                if pool is not None:
                    pool.submit(file_idx, _range_job, src, file_idx, start, end, hash_key, day)
                    drain(pool.read_ahead)  # bounded read-ahead: memory stays flat
                else:
                    take(*_range_job(src, file_idx, start, end, hash_key, day, lap), file_idx)
        drain(0)
    finally:
        if pool is not None:
            pool.close()

    all_rows = pl.concat(parts, how="vertical") if parts else pl.DataFrame(
        schema={**INTERACTION_SCHEMA, "file_idx": pl.Int32, "line_no": pl.Int64,
                "h1": pl.UInt64, "h2": pl.UInt64})
    parts.clear()  # the chunks are in all_rows now: let them go

    # de-duplicate on (tenant_id, interaction_id): first by (file, line) wins
    first = all_rows.select(pl.struct(*_IDENTITY).is_first_distinct()).to_series()
    later_rows = all_rows.filter(~first).select(
        *_IDENTITY, "file_idx", "source_file", "line_no", "h1", "h2")
    # the hashes of the first copy of each repeated id (a small frame: repeats are rare)
    firsts = all_rows.filter(first).join(later_rows.select(_IDENTITY).unique(), on=_IDENTITY,
                                         how="semi").select(
        *_IDENTITY, pl.col("h1").alias("_h1"), pl.col("h2").alias("_h2"))
    later_rows = later_rows.join(firsts, on=_IDENTITY, how="left", maintain_order="left")
    same = (pl.col("h1") == pl.col("_h1")) & (pl.col("h2") == pl.col("_h2"))
    exact_dups = later_rows.filter(same).select(
        "interaction_id", "source_file", "line_no").to_dicts()
    conflicts = later_rows.filter(~same).select(
        "file_idx", "source_file", "line_no", "interaction_id")
    wanted: dict[int, set[int]] = {}
    for fi, ln in conflicts.select("file_idx", "line_no").iter_rows():
        wanted.setdefault(fi, set()).add(ln)
    raw_text = {fi: _read_lines(paths[fi], lines) for fi, lines in wanted.items()}
    for r in conflicts.iter_rows(named=True):
        quarantine.append(dict(file_idx=r["file_idx"], source_file=r["source_file"],
                               line_no=r["line_no"], interaction_id=r["interaction_id"],
                               reason=DUPLICATE_REASON,
                               raw=raw_text[r["file_idx"]][r["line_no"]]))
    if later_rows.height:
        all_rows = all_rows.filter(first)
    interactions = all_rows.select(list(INTERACTION_SCHEMA))
    positions = all_rows.select(pl.col("file_idx").cast(pl.Int32), "line_no")
    del all_rows, conflicts, later_rows, first
    if quarantine:
        q = pl.DataFrame(quarantine, schema={"file_idx": pl.Int32, **{
            k: v for k, v in QUARANTINE_SCHEMA.items() if k != "partition_date"}})
        quarantined = scrub_quarantine(q.sort("file_idx", "line_no").with_columns(
            pl.lit(day).alias("partition_date")).select(list(QUARANTINE_SCHEMA)))
    else:
        quarantined = _empty_quarantine()
    stats = _stats(len(paths), totals["lines"], totals["blank"], interactions, quarantined,
                   exact_dups, totals["fast"])
    lap("dedup")
    stats["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    stats["workers"] = n_workers
    return IngestResult(interactions, quarantined, stats, positions)


# ---- scrubbing and finishing the rows ---------------------------------------------------------


def _scrub_stage(kept: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """Scrub every free-text column of the stage rows; return them and ``pii_types``.

    Low-cardinality columns (channel, model, intent, ...) are scrubbed once per distinct value;
    ``retrieval`` (JSON text) is decoded, scrubbed value by value and re-encoded only on the rows
    whose text could hold PII (``json_text_candidates``)."""
    low = [c for c in _LOW_CARDINALITY if c in kept.columns]
    other = [c for c in SCRUBBED_COLUMNS if c not in low]
    scrubbed, pii_types = scrub_frame(kept, other)
    flags: dict[str, pl.Series] = {}

    def add(t: str, flag: pl.Series) -> None:
        flags[t] = flag if t not in flags else (flags[t] | flag)

    replaced = []
    for col in low:
        values = scrubbed.get_column(col)
        distinct = values.drop_nulls().unique()
        clean, types = scrub_frame(pl.DataFrame({col: distinct}), [col])
        changed = types.list.len() > 0
        if not changed.any():
            continue
        mapping = pl.DataFrame({col: distinct, "_clean": clean.get_column(col),
                                "_types": types}).filter(changed)
        joined = pl.DataFrame({col: values}).join(mapping, on=col, how="left",
                                                  maintain_order="left")
        replaced.append(pl.coalesce(joined.get_column("_clean"), values).alias(col))
        for t in PII_TYPES:
            add(t, joined.get_column("_types").list.contains(t).fill_null(False))
    for json_col in ("retrieval", "extra"):
        column = scrubbed.get_column(json_col)
        idx = json_text_candidates(column).arg_true()
        if not idx.len():
            continue
        texts, row_types = [], []
        for text in column.gather(idx).to_list():
            found: set[str] = set()
            texts.append(_dumps(scrub_json_value(json.loads(text), found)))
            row_types.append(found)
        new = column.clone()
        new.scatter(idx, pl.Series(texts, dtype=pl.String))
        replaced.append(new)
        for t in PII_TYPES:
            hit = [i for i, found in zip(idx.to_list(), row_types, strict=True) if t in found]
            if hit:
                flag = pl.Series([False] * kept.height, dtype=pl.Boolean)
                flag.scatter(hit, True)
                add(t, flag)
    if replaced:
        scrubbed = scrubbed.with_columns(replaced)
    if flags:
        merged = pl.DataFrame({t: pii_types.list.contains(t) | flags[t] if t in flags
                               else pii_types.list.contains(t) for t in PII_TYPES})
        pii_types = merged.select(pl.concat_list(
            [pl.when(pl.col(t)).then(pl.lit(t)).otherwise(pl.lit(None, pl.String))
             for t in PII_TYPES]).list.drop_nulls().alias("pii_types")).to_series()
    return scrubbed, pii_types


def _finish_frame(kept: pl.DataFrame, hash_key: bytes, day: date,
                  lap: Callable[[str], None] = lambda stage: None,
                  keep: list[str] = ()) -> pl.DataFrame:  # type: ignore[assignment]
    """Scrub, build messages JSON and user_message, hash session ids: INTERACTION_COLUMNS (then
    the ``keep`` columns of ``kept``)."""
    schema = {**INTERACTION_SCHEMA, **{k: kept.schema[k] for k in keep}}
    if kept.height == 0:
        return pl.DataFrame(schema=schema)
    scrubbed, pii_types = _scrub_stage(kept)
    lap("scrub")
    scrubbed = scrubbed.with_columns(pii_types.alias("pii_types"))
    # messages JSON and the last user message, on the flattened messages (no group-by)
    lengths = scrubbed.get_column("msg_roles").list.len().fill_null(0)
    offsets = pl.concat([pl.Series([0], dtype=pl.Int64),
                         lengths.cast(pl.Int64).cum_sum()]).to_arrow()
    flat = pl.DataFrame({
        "role": pl.Series(_flatten(scrubbed.get_column("msg_roles"))),
        "content": pl.Series(_flatten(scrubbed.get_column("msg_contents"))),
        "_row": pl.int_range(0, scrubbed.height, dtype=pl.UInt32, eager=True)
        .repeat_by(lengths).explode().drop_nulls(),
    })
    encoded = flat.select(pl.struct("role", "content").struct.json_encode()).to_series()
    msgs = pl.from_arrow(pa.LargeListArray.from_arrays(
        offsets, encoded.to_arrow().cast(pa.large_string())))
    users = flat.filter(pl.col("role") == "user")
    last_user = users.filter(pl.col("_row").is_last_distinct())
    user_message = pl.Series("user_message", [None] * scrubbed.height, dtype=pl.String)
    if last_user.height:
        user_message.scatter(last_user.get_column("_row"), last_user.get_column("content"))
    scrubbed = scrubbed.with_columns(msgs.list.join(",").alias("_msgs"), user_message)
    del flat, encoded, msgs, users, last_user
    lap("messages")
    sessions = scrubbed["session_raw"].unique()
    digest = hmac.digest
    hashed = pl.Series([digest(hash_key, s.encode("utf-8"), "sha256").hex()
                        for s in sessions.to_list()], dtype=pl.String)
    out = scrubbed.with_columns(
        pl.concat_str(pl.lit("["), pl.col("_msgs").fill_null(""), pl.lit("]")).alias("messages"),
        pl.col("session_raw").replace_strict(sessions, hashed).alias("session_id"),
        pl.lit(day).alias("partition_date"),
    ).select(list(schema)).cast(schema)
    lap("hash")
    return out


# ---- duplicates across partitions --------------------------------------------------------------

CROSS_PARTITION_REASON = "duplicate interaction_id of partition {day}"
# what makes two ingested copies of a record the same: every column but where and when it landed
CONTENT_COLUMNS = [c for c in INTERACTION_COLUMNS if c not in ("partition_date", "source_file")]


def drop_cross_partition_duplicates(result: IngestResult, earlier: pl.DataFrame,
                                    paths: list[Path]) -> IngestResult:
    """Resolve ids of ``result`` that other partitions already hold.

    ``earlier``: rows (INTERACTION_COLUMNS) of *other* partitions of the ``interactions`` table
    whose ``(tenant_id, interaction_id)`` is among ``result.interactions`` (when one is in several, the
    earliest of those partitions is compared). The copy already in the warehouse wins: the
    partition materialized first keeps the record, whatever the dates (a backfill that runs newest
    day first keeps the newest copy). A row whose content (``CONTENT_COLUMNS``: everything but
    ``partition_date`` and ``source_file``) equals the earlier one is an exact copy and is dropped
    (``stats["cross_partition_duplicates"]``, listed in ``..._rows``); a row with different
    content is quarantined with reason ``duplicate interaction_id of partition YYYY-MM-DD`` and
    its raw line (read back from ``paths``, PII-scrubbed). ``paths``: the files ``result`` was
    ingested from, in the same order."""
    stats = dict(result.stats)
    stats["cross_partition_duplicates"] = 0
    stats["cross_partition_duplicate_rows"] = []
    stats["cross_partition_conflicts"] = 0
    good = result.interactions
    if earlier.height == 0 or good.height == 0:
        return IngestResult(good, result.quarantined, stats, result.positions)
    earlier = (earlier.select(list(INTERACTION_SCHEMA)).cast(INTERACTION_SCHEMA)
               .sort("partition_date").unique(_IDENTITY, keep="first", maintain_order=True))
    old = earlier.select(*_IDENTITY, pl.col("partition_date").alias("_other"),
                         *[pl.col(c).alias(f"{c}__old") for c in CONTENT_COLUMNS
                           if c not in _IDENTITY])
    rows = pl.concat([good.with_row_index("_row"), result.positions], how="horizontal")
    hits = rows.join(old, on=_IDENTITY, how="inner", maintain_order="left")
    if hits.height == 0:
        return IngestResult(good, result.quarantined, stats, result.positions)
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(f"{c}__old"))
                              for c in CONTENT_COLUMNS if c not in _IDENTITY])
    hits = hits.with_columns(same.alias("_same"))
    exact = hits.filter(pl.col("_same"))
    conflicts = hits.filter(~pl.col("_same"))
    wanted: dict[int, set[int]] = {}
    for fi, ln in conflicts.select("file_idx", "line_no").iter_rows():
        wanted.setdefault(fi, set()).add(ln)
    raw_text = {fi: _read_lines(Path(paths[fi]), lines) for fi, lines in wanted.items()}
    new_bad = pl.DataFrame([
        dict(source_file=r["source_file"], line_no=r["line_no"],
             partition_date=r["partition_date"], interaction_id=r["interaction_id"],
             reason=CROSS_PARTITION_REASON.format(day=r["_other"].isoformat()),
             raw=raw_text[r["file_idx"]][r["line_no"]])
        for r in conflicts.iter_rows(named=True)], schema=QUARANTINE_SCHEMA)
    new_bad = scrub_quarantine(new_bad)
    keep = ~rows.get_column("_row").is_in(hits.get_column("_row").implode())
    interactions = good.filter(keep)
    positions = result.positions.filter(keep)
    quarantined = pl.concat([result.quarantined, new_bad]) if new_bad.height else \
        result.quarantined
    stats["cross_partition_duplicates"] = exact.height
    stats["cross_partition_duplicate_rows"] = exact.select(
        "interaction_id", "source_file", "line_no",
        pl.col("_other").dt.to_string("%Y-%m-%d").alias("partition")).to_dicts()
    stats["cross_partition_conflicts"] = new_bad.height
    stats["accepted"] = interactions.height
    stats["quarantined"] = quarantined.height
    stats["pii_rows"] = int((interactions["pii_types"].list.len() > 0).sum()) \
        if interactions.height else 0
    return IngestResult(interactions, quarantined, stats, positions)
