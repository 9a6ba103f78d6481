"""Ingest: landing files of one day -> validated, de-duplicated, scrubbed ``interactions`` rows
plus ``quarantined`` rows (reason + raw text).

* ``vectorized``: ``ingest_files``, the fast path used by the ``interactions`` asset (msgspec
  decoding, Polars columns, chunks, scrubbing and hashing, de-duplication within the partition),
  and ``drop_cross_partition_duplicates`` (ids other partitions of the warehouse already hold).
* ``reference``: ``naive_ingest``, the same result computed record by record in plain Python
  (``json.loads``, ``validate_record``, ``scrub_text``): the benchmark's baseline and the tests'
  oracle; its per-record validation also decides every line the fast path cannot.
* ``quarantine``: the identity of a quarantine row (``quarantine_key``) and
  ``drop_quarantine_copies`` (rejected records already quarantined, this day or another).
* ``workers``: the worker processes the fast path runs the chunks of a large JSONL input in.
* ``common``: what both paths share: schemas, ``IngestResult``, reading the lines of plain,
  gzip-compressed and Parquet files, quarantine rows, stats.

Both paths are deterministic: the same files in the same order give the same rows in the same
order. Blank lines (only spaces, tabs, CR) are not records; they are counted in
``stats["blank_lines"]``.
"""

from ml.ingest.common import (
    CHUNK_BYTES,
    DUPLICATE_REASON,
    INT32_MAX,
    INT64_MAX,
    INTERACTION_SCHEMA,
    QUARANTINE_SCHEMA,
    QUARANTINE_SCRUBBED,
    SCRUBBED_COLUMNS,
    UNREADABLE_LINE_NO,
    IngestResult,
    UnreadableFile,
    hash_session,
    scrub_quarantine,
)
from ml.ingest.quarantine import QUARANTINE_KEY, drop_quarantine_copies, quarantine_key
from ml.ingest.reference import naive_ingest
from ml.ingest.vectorized import (
    CONTENT_COLUMNS,
    CROSS_PARTITION_REASON,
    drop_cross_partition_duplicates,
    ingest_files,
)

__all__ = [
    "CHUNK_BYTES",
    "CONTENT_COLUMNS",
    "CROSS_PARTITION_REASON",
    "DUPLICATE_REASON",
    "INT32_MAX",
    "INT64_MAX",
    "INTERACTION_SCHEMA",
    "QUARANTINE_KEY",
    "QUARANTINE_SCHEMA",
    "QUARANTINE_SCRUBBED",
    "SCRUBBED_COLUMNS",
    "UNREADABLE_LINE_NO",
    "IngestResult",
    "UnreadableFile",
    "drop_cross_partition_duplicates",
    "drop_quarantine_copies",
    "hash_session",
    "ingest_files",
    "naive_ingest",
    "quarantine_key",
    "scrub_quarantine",
]
