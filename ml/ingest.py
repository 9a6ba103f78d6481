"""Ingest: landing files of one day -> validated, de-duplicated, scrubbed ``interactions`` rows
plus ``quarantined`` rows (reason + raw text).

``ingest_files`` is the vectorized path used by the ``interactions`` asset:

1. JSONL files are cut into ~64 MB byte ranges at line ends; each range (a chunk) goes through
   steps 2, 3 and 5 on its own, in worker processes when the input spans several chunks (one per
   CPU; ``workers=`` overrides), and the results are put back in file/line order. Parquet files
   are turned into one JSON text per row first (DuckDB ``to_json``; a NULL cell is an absent
   field), then treated like JSONL lines whose line number is the row number. A gzip-compressed
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
   path: ``json.loads`` + ``ml.schema.validate_record``. That path decides, so the accept/reject
   set is exactly the pydantic one, and its reasons name the field (``feedback.rating: Input
   should be less than or equal to 5``). In real logs this is the small minority of bad lines.
   A line an importer rejected and wrapped as ``{"import_rejected": {..., "reason": ...}}`` is
   quarantined with the importer's reason (``import rejected (<format> <file>): <reason>``).
4. De-duplication on ``interaction_id`` within the partition (first by file order, then line);
   a later copy with the same record text (whitespace-trimmed) is an exact duplicate and is dropped
   (listed in ``stats["exact_duplicate_rows"]``); a later record with the same id but different text
   is quarantined with reason ``duplicate interaction_id with different content``.
5. PII scrubbing (``ml.pii.scrub_frame``) of every free-text column (``SCRUBBED_COLUMNS``:
   message contents, response, corrected response, comment, correction agent/reason/category,
   channel, model provider/name/version, intent, language, tags) and of every string (keys too)
   and number inside ``retrieval`` (decoded, scrubbed, re-encoded; only rows whose JSON text could
   hold PII are decoded). Not scrubbed: ``interaction_id`` and ``tenant_id`` (keys), the enums
   (roles, thumbs). ``user_message`` = the last user message (scrubbed); ``messages`` = compact
   JSON list of ``{role, content}``; ``session_id`` = hex HMAC-SHA256(hash_key, raw session id).
   Quarantine rows have their ``raw`` text and ``reason`` scrubbed the same way.
6. ``drop_cross_partition_duplicates`` (called by the ``interactions`` asset with the rows other
   partitions of the warehouse hold for the same ids): exact copies are dropped, same id with
   different content is quarantined (``duplicate interaction_id of partition YYYY-MM-DD``).

``naive_ingest`` computes the same result record by record in plain Python (``json.loads``,
``validate_record``, ``scrub_text``): the benchmark's baseline and the tests' oracle.

Both are deterministic: the same files in the same order give the same rows in the same order.
Blank lines (only spaces, tabs, CR) are not records; they are counted in ``stats["blank_lines"]``.
Worker processes are started with ``spawn``: like any ``multiprocessing`` user, a script that
calls ``ingest_files`` on a large input needs the ``if __name__ == "__main__":`` guard (without
it the workers fail at start and the ingest continues in-process: a ``logging`` warning, and
``stats["worker_failures"]`` = 1).
"""

from __future__ import annotations

import collections
import gc
import gzip
import hmac
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import date, timezone
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, Optional, Union

import msgspec
import polars as pl
import pyarrow as pa

from ml.pii import PII_TYPES, json_text_candidates, scrub_frame, scrub_json_value, scrub_text
from ml.schema import (
    INTERACTION_COLUMNS,
    MAX_TEXT,
    QUARANTINE_COLUMNS,
    InteractionRecord,
    RecordError,
    validate_record,
)

CHUNK_BYTES = 64 << 20
DUPLICATE_REASON = "duplicate interaction_id with different content"
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_BLANK = " \t\r"

_PL_TYPES: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(), "INTEGER": pl.Int32(), "BIGINT": pl.Int64(), "DOUBLE": pl.Float64(),
    "BOOLEAN": pl.Boolean(), "TIMESTAMP": pl.Datetime("us"), "DATE": pl.Date(),
    "VARCHAR[]": pl.List(pl.String),
}
INTERACTION_SCHEMA: dict[str, pl.DataType] = {c: _PL_TYPES[t] for c, t in
                                               INTERACTION_COLUMNS.items()}
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {c: _PL_TYPES[t] for c, t in
                                              QUARANTINE_COLUMNS.items()}

# the intermediate (pre-scrub) layout both paths produce per accepted record
_STAGE_SCHEMA: dict[str, pl.DataType] = {
    "line_no": pl.Int64(),
    "interaction_id": pl.String(), "tenant_id": pl.String(), "session_raw": pl.String(),
    "turn_index": pl.Int32(), "ts": pl.Datetime("us"), "channel": pl.String(),
    "model_provider": pl.String(), "model_name": pl.String(), "model_version": pl.String(),
    "msg_roles": pl.List(pl.String), "msg_contents": pl.List(pl.String),
    "response": pl.String(), "latency_ms": pl.Float64(), "tokens_prompt": pl.Int64(),
    "tokens_completion": pl.Int64(), "retrieval": pl.String(), "feedback_rating": pl.Int32(),
    "feedback_thumbs": pl.String(), "feedback_comment": pl.String(),
    "user_continued": pl.Boolean(), "completed_action": pl.Boolean(),
    "requested_human": pl.Boolean(), "abandoned": pl.Boolean(), "accepted": pl.Boolean(),
    "modified": pl.Boolean(), "time_to_first_use_s": pl.Float64(),
    "correction_agent_id": pl.String(), "corrected_response": pl.String(),
    "correction_reason": pl.String(), "correction_category": pl.String(),
    "intent": pl.String(), "language": pl.String(), "tags": pl.List(pl.String),
}
# every free-text column is scrubbed; the keys (interaction_id, tenant_id), the hashed session id
# and the validated enums (roles, thumbs) are not; ``retrieval`` (JSON) is scrubbed value by value
SCRUBBED_COLUMNS = ["msg_contents", "response", "corrected_response", "feedback_comment",
                    "correction_reason", "correction_category", "correction_agent_id", "channel",
                    "model_provider", "model_name", "model_version", "intent", "language", "tags"]
# scrubbed once per distinct value (few distinct values per chunk)
_LOW_CARDINALITY = ("correction_category", "correction_agent_id", "channel", "model_provider",
                    "model_name", "model_version", "intent", "language")
QUARANTINE_SCRUBBED = ["reason", "raw"]
UNREADABLE_LINE_NO = None  # a quarantine row for a whole unreadable file has no line number
log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    interactions: pl.DataFrame  # exactly INTERACTION_COLUMNS, in file/line order
    quarantined: pl.DataFrame  # exactly QUARANTINE_COLUMNS, in file/line order
    stats: dict[str, Any] = field(default_factory=dict)
    # per row of ``interactions``: index of its file in the input list and its line number
    positions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(
        schema={"file_idx": pl.Int32, "line_no": pl.Int64}))


class UnreadableFile(Exception):
    """A landing file that cannot be read as a whole; ``reason`` goes to the quarantine."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---- shared helpers ---------------------------------------------------------------------------


def hash_session(hash_key: bytes, session_id: str) -> str:
    """Hex HMAC-SHA256 of the session id (``hmac.digest``: OpenSSL's one-shot HMAC)."""
    return hmac.digest(hash_key, session_id.encode("utf-8"), "sha256").hex()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_SURROGATE_ESC = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _python_record(line: str) -> tuple[dict | None, str | None, str | None]:
    """Decode and validate one line: (stage row, None, id) or (None, reason, id or None)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}", None
    rejected = _import_rejected_reason(obj)
    if rejected is not None:
        return None, rejected, None
    if _SURROGATE_ESC.search(line):
        try:
            _dumps(obj).encode("utf-8")
        except UnicodeEncodeError:
            iid = obj.get("interaction_id") if isinstance(obj, dict) else None
            return None, "invalid JSON: unpaired surrogate escape in a string", (
                iid if isinstance(iid, str) else None)
    try:
        rec = validate_record(obj)
    except RecordError as exc:
        return None, exc.reason, exc.interaction_id
    problems = _range_problems(rec)
    if problems:
        return None, "; ".join(problems), rec.interaction_id
    return _stage_row(rec), None, rec.interaction_id


def _import_rejected_reason(obj: Any) -> str | None:
    """The reason of a line an importer rejected and wrapped as ``{"import_rejected": {format,
    source, line_no, reason, raw}}`` (``ml.importers``); None for anything else."""
    if not (isinstance(obj, dict) and len(obj) == 1 and isinstance(obj.get("import_rejected"),
                                                                    dict)):
        return None
    env = obj["import_rejected"]
    reason = env.get("reason")
    if not isinstance(reason, str) or not reason:
        return None
    where = " ".join(str(env[k]) for k in ("format", "source") if isinstance(env.get(k), str))
    return f"import rejected ({where}): {reason}" if where else f"import rejected: {reason}"


def _range_problems(rec: InteractionRecord) -> list[str]:
    """Values pydantic accepts but the warehouse column types cannot hold."""
    out = []
    if rec.turn_index is not None and rec.turn_index > INT32_MAX:
        out.append(f"turn_index: {rec.turn_index} exceeds the INTEGER range")
    if rec.tokens is not None:
        for name in ("prompt", "completion"):
            v = getattr(rec.tokens, name)
            if v is not None and v > INT64_MAX:
                out.append(f"tokens.{name}: {v} exceeds the BIGINT range")
    return out


def _stage_row(rec: InteractionRecord) -> dict:
    m, t, f, s, h, md = (rec.model, rec.tokens, rec.feedback, rec.signals, rec.human_correction,
                         rec.metadata)
    return {
        "interaction_id": rec.interaction_id,
        "tenant_id": rec.tenant_id,
        "session_raw": rec.session_id,
        "turn_index": rec.turn_index,
        "ts": rec.timestamp.astimezone(timezone.utc).replace(tzinfo=None),
        "channel": rec.channel,
        "model_provider": m.provider if m else None,
        "model_name": m.name if m else None,
        "model_version": m.version if m else None,
        "msg_roles": [x.role for x in rec.messages],
        "msg_contents": [x.content for x in rec.messages],
        "response": rec.response,
        "latency_ms": rec.latency_ms,
        "tokens_prompt": t.prompt if t else None,
        "tokens_completion": t.completion if t else None,
        "retrieval": _dumps(rec.retrieval) if rec.retrieval is not None else None,
        "feedback_rating": f.rating if f else None,
        "feedback_thumbs": f.thumbs if f else None,
        "feedback_comment": f.comment if f else None,
        "user_continued": s.user_continued if s else None,
        "completed_action": s.completed_action if s else None,
        "requested_human": s.requested_human if s else None,
        "abandoned": s.abandoned if s else None,
        "accepted": s.accepted if s else None,
        "modified": s.modified if s else None,
        "time_to_first_use_s": s.time_to_first_use_s if s else None,
        "correction_agent_id": h.agent_id if h else None,
        "corrected_response": h.corrected_response if h else None,
        "correction_reason": h.reason if h else None,
        "correction_category": h.category if h else None,
        "intent": md.intent if md else None,
        "language": md.language if md else None,
        "tags": list(md.tags) if md else [],
    }


def _is_blank(line: str) -> bool:
    return line.strip(_BLANK) == ""


def _parquet_lines(path: Path) -> list[str]:
    """One JSON object text per Parquet row; NULL cells are left out (an absent field).
    Raises ``UnreadableFile`` when DuckDB cannot read the file."""
    import duckdb  # noqa: PLC0415 - only Parquet landing files need it
    try:
        return _parquet_lines_duckdb(duckdb, path)
    except duckdb.Error as exc:
        raise UnreadableFile(f"unreadable Parquet: {_one_line(exc)}") from None
    except OSError as exc:
        raise UnreadableFile(f"unreadable file: {exc}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def _is_gzip(path: Path) -> bool:
    """Whether a JSONL landing file is gzip-compressed (by its magic bytes). Raises
    ``UnreadableFile`` when it cannot be opened."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise UnreadableFile(f"unreadable file: {exc}") from None


def _gunzip(path: Path) -> bytes:
    """The decompressed bytes of a gzip JSONL file; ``UnreadableFile`` when it is corrupt."""
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableFile(f"unreadable gzip-compressed JSONL: {_one_line(exc)}") from None


def _unreadable_row(file_idx: int | None, src: str, reason: str) -> dict:
    row = dict(source_file=src, line_no=UNREADABLE_LINE_NO, interaction_id=None, reason=reason,
               raw=None)
    if file_idx is not None:
        row["file_idx"] = file_idx
    return row


def _parquet_lines_duckdb(duckdb: Any, path: Path) -> list[str]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        cols = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
        ts_types = ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS",
                    "TIMESTAMP_S", "DATE")
        repl = [f'strftime("{name}"::TIMESTAMP, \'%Y-%m-%dT%H:%M:%S.%fZ\') AS "{name}"'
                for name, typ, *_ in cols if typ in ts_types]
        star = f"* REPLACE ({', '.join(repl)})" if repl else "*"
        rows = con.execute(
            f"SELECT json_merge_patch('{{}}', to_json(t))::VARCHAR FROM "
            f"(SELECT {star} FROM read_parquet(?)) t", [str(path)]
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def _decode_lines(data: bytes) -> Iterator[tuple[str | None, str]]:
    """Per-line strict UTF-8 decoding: (text or None if undecodable, text for display)."""
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    for raw in pieces:
        try:
            yield raw.decode("utf-8"), ""
        except UnicodeDecodeError:
            yield None, raw.decode("utf-8", errors="replace")


def _empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


# ---- the naive per-record path ----------------------------------------------------------------


def _file_lines_python(path: Path) -> list[tuple[int, str | None, str]]:
    """(line_no, text or None when not UTF-8, display text) for every line of a landing file.
    Raises ``UnreadableFile`` when the file cannot be read as a whole."""
    if path.suffix == ".parquet":
        return [(i, text, text) for i, text in enumerate(_parquet_lines(path), 1)]
    if _is_gzip(path):
        data = _gunzip(path)
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UnreadableFile(f"unreadable file: {exc}") from None
    return [(i, text, shown if text is None else text)
            for i, (text, shown) in enumerate(_decode_lines(data), 1)]


def naive_ingest(paths: list[Path], partition_date: str, hash_key: bytes) -> IngestResult:
    """The same result as ``ingest_files``, computed one record at a time in plain Python."""
    day = date.fromisoformat(partition_date)
    rows: list[dict] = []
    quarantine: list[dict] = []
    first_raw: dict[str, str] = {}
    exact_dups: list[dict] = []
    positions: list[tuple[int, int]] = []
    blank = lines = 0
    for file_idx, path in enumerate(paths):
        path = Path(path)
        src = str(path)
        try:
            file_lines = _file_lines_python(path)
        except UnreadableFile as exc:
            quarantine.append(dict(_unreadable_row(None, src, exc.reason), partition_date=day))
            continue
        for line_no, text, shown in file_lines:
            lines += 1
            if text is None:
                quarantine.append(dict(source_file=src, line_no=line_no, partition_date=day,
                                       interaction_id=None, reason="invalid UTF-8", raw=shown))
                continue
            if _is_blank(text):
                blank += 1
                continue
            row, reason, iid = _python_record(text)
            if row is None:
                quarantine.append(dict(source_file=src, line_no=line_no, partition_date=day,
                                       interaction_id=iid, reason=reason, raw=text))
                continue
            key = text.strip(_BLANK)
            prev = first_raw.get(row["interaction_id"])
            if prev is not None:
                if prev == key:
                    exact_dups.append(dict(interaction_id=row["interaction_id"], source_file=src,
                                           line_no=line_no))
                else:
                    quarantine.append(dict(source_file=src, line_no=line_no, partition_date=day,
                                           interaction_id=row["interaction_id"],
                                           reason=DUPLICATE_REASON, raw=text))
                continue
            first_raw[row["interaction_id"]] = key
            rows.append(_finish_row_python(row, hash_key, src, day))
            positions.append((file_idx, line_no))
    interactions = pl.DataFrame(rows, schema=INTERACTION_SCHEMA) if rows else \
        pl.DataFrame(schema=INTERACTION_SCHEMA)
    quarantined = scrub_quarantine(pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA)) \
        if quarantine else _empty_quarantine()
    stats = _stats(len(paths), lines, blank, interactions, quarantined, exact_dups, None)
    pos = pl.DataFrame(positions, schema={"file_idx": pl.Int32, "line_no": pl.Int64},
                       orient="row")
    return IngestResult(interactions, quarantined, stats, pos)


def _finish_row_python(row: dict, hash_key: bytes, src: str, day: date) -> dict:
    found: set[str] = set()
    contents = []
    for c in row["msg_contents"]:
        sc, types = scrub_text(c)
        contents.append(sc)
        found.update(types)
    out_texts = {}
    for col in SCRUBBED_COLUMNS:
        if col in ("msg_contents", "tags"):
            continue
        sc, types = scrub_text(row[col])
        out_texts[col] = sc
        found.update(types)
    tags = []
    for t in row["tags"]:
        sc, types = scrub_text(t)
        tags.append(sc)
        found.update(types)
    retrieval = row["retrieval"]
    if retrieval is not None:
        retrieval = _dumps(scrub_json_value(json.loads(retrieval), found))
    user_msgs = [c for r, c in zip(row["msg_roles"], contents) if r == "user"]
    return {
        "interaction_id": row["interaction_id"],
        "tenant_id": row["tenant_id"],
        "session_id": hash_session(hash_key, row["session_raw"]),
        "turn_index": row["turn_index"],
        "ts": row["ts"],
        "channel": out_texts["channel"],
        "model_provider": out_texts["model_provider"],
        "model_name": out_texts["model_name"],
        "model_version": out_texts["model_version"],
        "messages": _dumps([{"role": r, "content": c}
                            for r, c in zip(row["msg_roles"], contents)]),
        "user_message": user_msgs[-1] if user_msgs else None,
        "response": out_texts["response"],
        "latency_ms": row["latency_ms"],
        "tokens_prompt": row["tokens_prompt"],
        "tokens_completion": row["tokens_completion"],
        "retrieval": retrieval,
        "feedback_rating": row["feedback_rating"],
        "feedback_thumbs": row["feedback_thumbs"],
        "feedback_comment": out_texts["feedback_comment"],
        "user_continued": row["user_continued"],
        "completed_action": row["completed_action"],
        "requested_human": row["requested_human"],
        "abandoned": row["abandoned"],
        "accepted": row["accepted"],
        "modified": row["modified"],
        "time_to_first_use_s": row["time_to_first_use_s"],
        "correction_agent_id": out_texts["correction_agent_id"],
        "corrected_response": out_texts["corrected_response"],
        "correction_reason": out_texts["correction_reason"],
        "correction_category": out_texts["correction_category"],
        "intent": out_texts["intent"],
        "language": out_texts["language"],
        "tags": tags,
        "pii_types": [t for t in PII_TYPES if t in found],
        "source_file": src,
        "partition_date": day,
    }


def _stats(files: int, lines: int, blank: int, good: pl.DataFrame, bad: pl.DataFrame,
           exact_dups: list[dict], fast_rows: int | None) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "files": files,
        "lines": lines,
        "blank_lines": blank,
        "accepted": good.height,
        "quarantined": bad.height,
        "exact_duplicates": len(exact_dups),
        "exact_duplicate_rows": exact_dups,
        "duplicate_conflicts": int((bad["reason"] == DUPLICATE_REASON).sum()) if bad.height else 0,
        "pii_rows": int((good["pii_types"].list.len() > 0).sum()) if good.height else 0,
    }
    if fast_rows is not None:
        stats["fast_path_rows"] = fast_rows
        stats["python_path_rows"] = (lines - blank) - fast_rows
    return stats


# ---- the vectorized path ----------------------------------------------------------------------
#
# The fast path decodes and validates each line with msgspec (C): typed Structs whose rules are
# those of ``ml.schema.InteractionRecord`` made *strict* (a JSON int for an int, a JSON bool for a
# bool, no coercion of "3" or 3.0), so a line msgspec accepts is one pydantic accepts with the same
# values. msgspec and ``json.loads`` agree on what they share: the last of duplicate keys wins,
# unknown keys are ignored, and msgspec rejects what ``_python_record`` would quarantine or
# treats specially (lone surrogate escapes, raw control characters, NaN/Infinity, trailing
# commas, a BOM). Everything msgspec rejects goes to the per-record Python path, which decides.

_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
_OptText = Optional[_Text]
_NonNegFloat = Optional[Annotated[float, msgspec.Meta(ge=0)]]


class _MMessage(msgspec.Struct, gc=False):
    role: Literal["system", "user", "assistant", "tool"]
    content: _Text


class _MModel(msgspec.Struct, gc=False):
    provider: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None


class _MTokens(msgspec.Struct, gc=False):
    prompt: Optional[Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]] = None
    completion: Optional[Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]] = None


class _MFeedback(msgspec.Struct, gc=False):
    rating: Optional[Annotated[int, msgspec.Meta(ge=1, le=5)]] = None
    thumbs: Optional[Literal["up", "down"]] = None
    comment: _OptText = None


class _MSignals(msgspec.Struct, gc=False):
    user_continued: Optional[bool] = None
    completed_action: Optional[bool] = None
    requested_human: Optional[bool] = None
    abandoned: Optional[bool] = None
    accepted: Optional[bool] = None
    modified: Optional[bool] = None
    time_to_first_use_s: _NonNegFloat = None


class _MCorrection(msgspec.Struct, gc=False):
    corrected_response: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
    agent_id: Optional[str] = None
    reason: Optional[str] = None
    category: Optional[str] = None


class _MMetadata(msgspec.Struct, gc=False):
    intent: Optional[str] = None
    language: Optional[str] = None
    tags: list[str] = []


class _MRecord(msgspec.Struct, gc=False):
    interaction_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    timestamp: str  # parsed below (vectorized); an unusual format takes the Python path
    tenant_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "default"
    turn_index: Optional[Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]] = None
    channel: Optional[str] = None
    model: Optional[_MModel] = None
    messages: list[_MMessage] = []
    response: _OptText = None
    latency_ms: _NonNegFloat = None
    tokens: Optional[_MTokens] = None
    retrieval: Optional[list[Union[dict, str]]] = None
    feedback: Optional[_MFeedback] = None
    signals: Optional[_MSignals] = None
    human_correction: Optional[_MCorrection] = None
    metadata: Optional[_MMetadata] = None


_DECODE = msgspec.json.Decoder(_MRecord).decode
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
        return tuple(zip(*map(_astuple, structs)))
    empty = _EMPTY[cls]
    if empty is not None:
        structs = [s if s is not None else empty for s in structs]
    return tuple(list(map(attrgetter(f), structs)) for f in cls.__struct_fields__)


def _columns(recs: list) -> dict[str, Any]:
    """Column values of the decoded records (stage layout minus ts; messages/tags flattened)."""
    top = dict(zip(_MRecord.__struct_fields__, _fields(recs, _MRecord)))
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
        for field_name, values in zip(cls.__struct_fields__, values_per_field):
            key = "corrected_response" if field_name == "corrected_response" else \
                prefix + field_name
            cols[key] = _Sparse(n, present, values) if sparse else values
    md = dict(zip(_MMetadata.__struct_fields__, _fields(top["metadata"], _MMetadata)))
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
    "feedback_rating": pl.Int64(),
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
    decode = _DECODE
    recs: list = []
    fast_nos: list[int] = []
    slow_idx: list[int] = []
    add_rec, add_no, add_slow = recs.append, fast_nos.append, slow_idx.append
    # millions of short-lived containers: the cyclic GC would rescan them again and again
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i, text in enumerate(texts):
            try:
                rec = decode(text)
            except _MSGSPEC_ERRORS:
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
    )
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


_STAGES = ("read", "validate", "scrub", "messages", "hash", "dedup")
_ROW_KEYS = ["file_idx", "line_no", "h1", "h2"]  # carried through the chunk job for de-duplication


class _Laps:
    """Wall-clock seconds per stage."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(_STAGES, 0.0)
        self._clock = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._clock
        self._clock = now


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


def _chunk_worker(src: str, file_idx: int, start: int, end: int, hash_key: bytes, day: date,
                  out_path: str) -> tuple[str, list[dict], dict[str, int], dict[str, float]]:
    """``_chunk_job`` on bytes [start, end) of a JSONL file, in a worker process (line numbers
    counted from the start of the range; the caller shifts them). The rows go back as an Arrow
    IPC file at ``out_path`` (in shared memory where there is one: cheaper than pickling)."""
    lap = _Laps()
    data = _read_range(Path(src), start, end)
    lines, bad_utf8, texts = _lines_frame(0, data)
    del data
    rows, quarantine, counts = _chunk_job(src, file_idx, lines, bad_utf8, texts, hash_key, day,
                                          lap)
    rows.write_ipc(out_path)
    lap("hash")
    return out_path, quarantine, counts, lap.seconds


def _exchange_dir() -> str:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="learnloop-ingest-", dir=base)


def _worker_count(paths: list[Path], chunk_bytes: int, workers: int | None) -> int:
    if workers is not None:
        return max(0, workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jsonl = sum(p.stat().st_size for p in paths if p.suffix != ".parquet")
    # worker start-up (~1 s of imports) pays off only on several chunks
    return min(cpus or 1, 4) if cpus and cpus > 1 and jsonl >= 4 * min(chunk_bytes, CHUNK_BYTES) \
        else 0


def ingest_files(paths: list[Path], partition_date: str, hash_key: bytes, *,
                 chunk_bytes: int = CHUNK_BYTES, workers: int | None = None) -> IngestResult:
    """Validate, de-duplicate, scrub and hash the landing files of one partition (vectorized).

    JSONL files are processed in chunks of ``chunk_bytes``; with ``workers`` > 0 (default: one
    per CPU when the input spans several chunks) the chunks run in worker processes, in parallel,
    and are put back in file/line order. ``stats["timings_s"]``: seconds per stage (summed over
    the workers when there are several)."""
    day = date.fromisoformat(partition_date)
    paths = [Path(p) for p in paths]
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

    pool = None
    exchange = None
    if n_workers:
        import multiprocessing  # noqa: PLC0415
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
        # spawn: a forked child would inherit Polars' and DuckDB's thread pools mid-state
        pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
        exchange = _exchange_dir()
    try:
        pending: collections.deque = collections.deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                file_idx, future = pending.popleft()
                out_path, bad, counts, secs = future.result()
                rows = pl.read_ipc(out_path)
                os.unlink(out_path)
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
                    out_path = os.path.join(exchange, f"{file_idx}-{start}.arrow")
                    pending.append((file_idx, pool.submit(_chunk_worker, src, file_idx, start,
                                                          end, hash_key, day, out_path)))
                    drain(2 * n_workers)  # bounded read-ahead: memory stays flat
                else:
                    lines, bad_utf8, texts = _lines_frame(0, _read_range(path, start, end))
                    take(*_chunk_job(src, file_idx, lines, bad_utf8, texts, hash_key, day, lap),
                         file_idx)
        drain(0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if exchange is not None:
            shutil.rmtree(exchange, ignore_errors=True)

    all_rows = pl.concat(parts, how="vertical") if parts else pl.DataFrame(
        schema={**INTERACTION_SCHEMA, "file_idx": pl.Int32, "line_no": pl.Int64,
                "h1": pl.UInt64, "h2": pl.UInt64})
    del parts

    # de-duplicate on interaction_id: first by (file, line) wins
    first = all_rows.select(pl.col("interaction_id").is_first_distinct()).to_series()
    later_rows = all_rows.filter(~first).select(
        "interaction_id", "file_idx", "source_file", "line_no", "h1", "h2")
    # the hashes of the first copy of each repeated id (a small frame: repeats are rare)
    firsts = all_rows.filter(first & pl.col("interaction_id").is_in(
        later_rows.get_column("interaction_id").implode())).select(
        "interaction_id", pl.col("h1").alias("_h1"), pl.col("h2").alias("_h2"))
    later_rows = later_rows.join(firsts, on="interaction_id", how="left", maintain_order="left")
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


def scrub_quarantine(quarantined: pl.DataFrame) -> pl.DataFrame:
    """Quarantine rows with their ``raw`` text and ``reason`` PII-scrubbed (a reason may quote a
    value); the rest as it is."""
    if quarantined.height == 0:
        return quarantined
    return scrub_frame(quarantined, QUARANTINE_SCRUBBED)[0]


def _read_lines(path: Path, wanted: set[int]) -> dict[int, str]:
    """The text of some lines (1-based numbers) of a landing file."""
    if path.suffix == ".parquet":
        texts = _parquet_lines(path)
        return {n: texts[n - 1] for n in wanted}
    if _is_gzip(path):
        texts = _gunzip(path).split(b"\n")
        return {n: texts[n - 1].decode("utf-8") for n in wanted}
    out: dict[int, str] = {}
    last = max(wanted)
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if n in wanted:
                out[n] = raw.rstrip(b"\n").decode("utf-8")
            if n >= last:
                break
    return out


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
    retrieval = scrubbed.get_column("retrieval")
    idx = json_text_candidates(retrieval).arg_true()
    if idx.len():
        texts, row_types = [], []
        for text in retrieval.gather(idx).to_list():
            found: set[str] = set()
            texts.append(_dumps(scrub_json_value(json.loads(text), found)))
            row_types.append(found)
        new = retrieval.clone()
        new.scatter(idx, pl.Series(texts, dtype=pl.String))
        replaced.append(new)
        for t in PII_TYPES:
            hit = [i for i, found in zip(idx.to_list(), row_types) if t in found]
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
    whose ``interaction_id`` is among ``result.interactions`` (when an id is in several, the
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
               .sort("partition_date").unique("interaction_id", keep="first",
                                              maintain_order=True))
    old = earlier.select("interaction_id", pl.col("partition_date").alias("_other"),
                         *[pl.col(c).alias(f"{c}__old") for c in CONTENT_COLUMNS])
    rows = pl.concat([good.with_row_index("_row"), result.positions], how="horizontal")
    hits = rows.join(old, on="interaction_id", how="inner", maintain_order="left")
    if hits.height == 0:
        return IngestResult(good, result.quarantined, stats, result.positions)
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(f"{c}__old"))
                              for c in CONTENT_COLUMNS])
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
