"""What both ingest paths share: the schemas, the result type, reading and decoding the lines of
a landing file (plain, gzip-compressed or Parquet), quarantine rows and the stats.

A file that cannot be read as a whole (not Parquet, a corrupt gzip stream, no permission, ...)
raises ``UnreadableFile``; its reason becomes one quarantine row (``line_no`` and ``raw`` NULL,
reason ``unreadable Parquet: ...``, ``unreadable gzip-compressed JSONL: ...`` or ``unreadable
file: ...``). Parquet files are turned into one JSON text per row (DuckDB ``to_json``; a NULL cell
is an absent field), then treated like JSONL lines whose line number is the row number.
"""

from __future__ import annotations

import gzip
import hmac
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from ml.ingest.quarantine import with_quarantine_keys
from ml.landing import FAR_FROM_LANDING_DAYS, FUTURE_TOLERANCE
from ml.pii import scrub_cut_tail, scrub_frame
from ml.schema import unknown_fields
from ml.tables import INTERACTION_COLUMNS, QUARANTINE_COLUMNS

CHUNK_BYTES = 64 << 20  # JSONL files are cut into byte ranges of about this size
DUPLICATE_REASON = "duplicate interaction_id (same tenant_id) with different content"
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
    "conversation_rating": pl.Int32(), "extra": pl.String(), "ingest_notes": pl.List(pl.String),
}
# every free-text column is scrubbed; the keys (interaction_id, tenant_id), the hashed session id
# and the validated enums (roles, thumbs) are not; ``retrieval`` (JSON) is scrubbed value by value
SCRUBBED_COLUMNS = ["msg_contents", "response", "corrected_response", "feedback_comment",
                    "correction_reason", "correction_category", "correction_agent_id", "channel",
                    "model_provider", "model_name", "model_version", "intent", "language", "tags"]
QUARANTINE_SCRUBBED = ["reason", "raw"]
UNREADABLE_LINE_NO = None  # a quarantine row for a whole unreadable file has no line number


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


# ---- helpers ----------------------------------------------------------------------------------


def hash_session(hash_key: bytes, session_id: str) -> str:
    """Hex HMAC-SHA256 of the session id (``hmac.digest``: OpenSSL's one-shot HMAC)."""
    return hmac.digest(hash_key, session_id.encode("utf-8"), "sha256").hex()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def extra_json(obj: dict, dropped_correction: dict | None) -> str | None:
    """The ``extra`` column of a record: its fields outside the contract by path
    (``ml.schema.unknown_fields``) and, under ``human_correction``, a correction dropped for an
    empty ``corrected_response``; NULL when there is neither."""
    extra = unknown_fields(obj)
    if dropped_correction is not None:
        extra["human_correction"] = dropped_correction
    return _dumps(extra) if extra else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


# ---- reading the lines of a landing file ------------------------------------------------------


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


# ---- quarantine rows and stats ----------------------------------------------------------------


def _unreadable_row(file_idx: int | None, src: str, reason: str) -> dict:
    row = dict(source_file=src, line_no=UNREADABLE_LINE_NO, interaction_id=None, reason=reason,
               raw=None)
    if file_idx is not None:
        row["file_idx"] = file_idx
    return row


def _empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def scrub_quarantine(quarantined: pl.DataFrame) -> pl.DataFrame:
    """Quarantine rows with their identity ``quarantine_key`` (``ml.ingest.quarantine``: a digest
    of the unscrubbed reason and raw text) and their ``raw`` text and ``reason`` PII-scrubbed (a
    reason may quote a value); the rest as it is. A raw line is often one whose write was cut
    short: a card number's cut-off start at its end is masked too (``ml.pii.scrub_cut_tail``; a
    whole JSON object line ends in ``}``, so only lines that stop early are read this way)."""
    if quarantined.height == 0:
        return quarantined
    out = scrub_frame(with_quarantine_keys(quarantined), QUARANTINE_SCRUBBED)[0]
    return out.with_columns(scrub_cut_tail(out.get_column("raw")))


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


_STAGES = ("read", "validate", "scrub", "messages", "hash", "dedup")


class _Laps:
    """Wall-clock seconds per stage."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(_STAGES, 0.0)
        self._clock = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._clock
        self._clock = now


# ---- timestamps against the clock and the landing day -----------------------------------------

FUTURE_REASON = ("timestamp {ts} (UTC) is in the future: more than {tol} after the ingest time; "
                 "fix the writer's clock and land the record again")


def _tolerance_text() -> str:
    minutes = int(FUTURE_TOLERANCE.total_seconds() // 60)
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def apply_timestamp_rules(result: IngestResult, paths: list[Path], day: date,
                          now: datetime | None = None) -> IngestResult:
    """The timestamp rules both ingest paths apply last (so they agree by construction).

    * A record timestamped more than ``ml.landing.FUTURE_TOLERANCE`` after ``now`` (the ingest
      time, default: now, UTC) is quarantined (``FUTURE_REASON``, with its raw line read back from
      ``paths``): a clock gone wrong must not put data on days that have not happened.
    * A record whose timestamp's UTC day is more than ``ml.landing.FAR_FROM_LANDING_DAYS`` days
      from its landing day ``day`` is kept with a note in ``ingest_notes`` (``timestamp day
      YYYY-MM-DD is N day(s) before/after the landing day YYYY-MM-DD``).

    ``stats`` gains ``future_timestamps`` and ``far_from_landing_day``."""
    now = now or datetime.now(UTC)
    cutoff = (now.astimezone(UTC) if now.tzinfo else now).replace(tzinfo=None) + FUTURE_TOLERANCE
    good, positions = result.interactions, result.positions
    stats = dict(result.stats)
    future = good.get_column("ts") > cutoff
    n_future = int(future.sum()) if good.height else 0
    quarantined = result.quarantined
    if n_future:
        hits = pl.concat([good.select("interaction_id", "source_file", "ts"), positions],
                         how="horizontal").filter(future)
        wanted: dict[int, set[int]] = {}
        for fi, ln in hits.select("file_idx", "line_no").iter_rows():
            wanted.setdefault(fi, set()).add(ln)
        raw_text = {fi: _read_lines(Path(paths[fi]), lines) for fi, lines in wanted.items()}
        tol = _tolerance_text()
        new_bad = scrub_quarantine(pl.DataFrame([
            dict(source_file=r["source_file"], line_no=r["line_no"], partition_date=day,
                 interaction_id=r["interaction_id"],
                 reason=FUTURE_REASON.format(ts=r["ts"].isoformat(), tol=tol),
                 raw=raw_text[r["file_idx"]][r["line_no"]])
            for r in hits.iter_rows(named=True)], schema=QUARANTINE_SCHEMA))
        order = {str(Path(p)): i for i, p in reversed(list(enumerate(paths)))}
        quarantined = (pl.concat([quarantined, new_bad])
                       .with_columns(pl.col("source_file").replace_strict(
                           order, default=None, return_dtype=pl.Int64).alias("_file"))
                       .sort("_file", "line_no", nulls_last=False, maintain_order=True)
                       .drop("_file"))
        good, positions = good.filter(~future), positions.filter(~future)
    far_days = (pl.col("ts").dt.date() - pl.lit(day)).dt.total_days()
    far = far_days.abs() > FAR_FROM_LANDING_DAYS
    n_far = int(good.select(far.sum()).item() or 0) if good.height else 0
    if n_far:
        note = pl.concat_str(
            pl.lit("timestamp day "), pl.col("ts").dt.date().dt.to_string("%Y-%m-%d"),
            pl.lit(" is "), far_days.abs().cast(pl.String), pl.lit(" day(s) "),
            pl.when(far_days < 0).then(pl.lit("before")).otherwise(pl.lit("after")),
            pl.lit(f" the landing day {day.isoformat()}"))
        good = good.with_columns(pl.when(far).then(pl.concat_list(pl.col("ingest_notes"), note))
                                 .otherwise(pl.col("ingest_notes")).alias("ingest_notes"))
    stats["future_timestamps"] = n_future
    stats["far_from_landing_day"] = n_far
    if n_future:
        stats["accepted"] = good.height
        stats["quarantined"] = quarantined.height
        stats["pii_rows"] = int((good["pii_types"].list.len() > 0).sum()) if good.height else 0
    return IngestResult(good, quarantined, stats, positions)
