"""The reference ingest path: the same result as ``ml.ingest.vectorized.ingest_files``, computed
one record at a time in plain Python.

``naive_ingest`` reads every line (``json.loads``), validates it with the pydantic model
(``ml.schema.validate_record``), de-duplicates on ``(tenant_id, interaction_id)`` and scrubs every free-text
field with ``scrub_text``: the benchmark's baseline and the tests' oracle (the agreement tests
compare both paths on crafted edge cases).

``_python_record`` (decode + validate one line, with reasons that name the field) is also the
vectorized path's fallback: every line msgspec rejects comes here, and this path decides.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from ml.ingest.common import (
    _BLANK,
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
    _parquet_lines,
    _stats,
    _unreadable_row,
    apply_timestamp_rules,
    extra_json,
    hash_session,
    scrub_quarantine,
)
from ml.pii import PII_TYPES, scrub_json_value, scrub_text
from ml.schema import EMPTY_CORRECTION_NOTE, InteractionRecord, RecordError, validate_record

# ---- one record: decode and validate (the vectorized path's fallback too) ---------------------

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
    return _stage_row(rec, obj), None, rec.interaction_id


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


def _stage_row(rec: InteractionRecord, obj: dict) -> dict:
    m, t, f, s, h, md = (rec.model, rec.tokens, rec.feedback, rec.signals, rec.human_correction,
                         rec.metadata)
    dropped = rec.dropped_correction
    return {
        "interaction_id": rec.interaction_id,
        "tenant_id": rec.tenant_id,
        "session_raw": rec.session_id,
        "turn_index": rec.turn_index,
        "ts": rec.timestamp.astimezone(UTC).replace(tzinfo=None),
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
        "conversation_rating": f.conversation_rating if f else None,
        "extra": extra_json(obj, dropped),
        "ingest_notes": [EMPTY_CORRECTION_NOTE] if dropped is not None else [],
    }


# ---- the naive per-record path ----------------------------------------------------------------


def _is_blank(line: str) -> bool:
    return line.strip(_BLANK) == ""


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


def naive_ingest(paths: list[Path], partition_date: str, hash_key: bytes, *,
                 now: datetime | None = None) -> IngestResult:
    """The same result as ``ingest_files``, computed one record at a time in plain Python
    (``now``: the ingest time the timestamp rules compare with, default now)."""
    day = date.fromisoformat(partition_date)
    rows: list[dict] = []
    quarantine: list[dict] = []
    first_raw: dict[tuple[str, str], str] = {}
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
            ident = (row["tenant_id"], row["interaction_id"])
            prev = first_raw.get(ident)
            if prev is not None:
                if prev == key:
                    exact_dups.append(dict(interaction_id=row["interaction_id"], source_file=src,
                                           line_no=line_no))
                else:
                    quarantine.append(dict(source_file=src, line_no=line_no, partition_date=day,
                                           interaction_id=row["interaction_id"],
                                           reason=DUPLICATE_REASON, raw=text))
                continue
            first_raw[ident] = key
            rows.append(_finish_row_python(row, hash_key, src, day))
            positions.append((file_idx, line_no))
    interactions = pl.DataFrame(rows, schema=INTERACTION_SCHEMA) if rows else \
        pl.DataFrame(schema=INTERACTION_SCHEMA)
    quarantined = scrub_quarantine(pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA)) \
        if quarantine else _empty_quarantine()
    stats = _stats(len(paths), lines, blank, interactions, quarantined, exact_dups, None)
    pos = pl.DataFrame(positions, schema={"file_idx": pl.Int32, "line_no": pl.Int64},
                       orient="row")
    return apply_timestamp_rules(IngestResult(interactions, quarantined, stats, pos),
                                 [Path(p) for p in paths], day, now)


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
    retrieval, extra = row["retrieval"], row["extra"]
    if retrieval is not None:
        retrieval = _dumps(scrub_json_value(json.loads(retrieval), found))
    if extra is not None:
        extra = _dumps(scrub_json_value(json.loads(extra), found))
    user_msgs = [c for r, c in zip(row["msg_roles"], contents, strict=True) if r == "user"]
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
                            for r, c in zip(row["msg_roles"], contents, strict=True)]),
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
        "conversation_rating": row["conversation_rating"],
        "extra": extra,
        "ingest_notes": row["ingest_notes"],
    }
