"""The identity of a quarantine row, and the copies ingest drops by it.

A quarantine row is identified by ``quarantine_key``: a digest of what was rejected, computed
before the PII scrubber runs (two lines that differ only in an e-mail address stay two rows):

* a line (``raw`` set): SHA-256 of its reason and its raw text;
* a whole unreadable file (``raw`` NULL): SHA-256 of its reason and the file's name (not its
  folder, so the same file found under the landing zone or the archive is one row).

The line's file and line number are *not* part of it: the same malformed line imported twice
(``learnloop import`` lands a new file each time, possibly in another day's folder) is one
rejected record, quarantined once, like an interaction's id is ingested once.
``drop_quarantine_copies`` keeps, within the day, the first row of each key and drops the keys
that another partition of ``quarantined_interactions`` already holds (the partition that was
ingested first keeps the row, as for interactions). Re-ingesting a partition gives the same rows.
"""

from __future__ import annotations

import hashlib
import os

import polars as pl

QUARANTINE_KEY = "quarantine_key"


def quarantine_key(reason: str | None, raw: str | None, source_file: str | None) -> str:
    """The identity of one quarantine row (module docstring), as 32 hex digits."""
    what = raw if raw is not None else "file:" + os.path.basename(source_file or "")
    digest = hashlib.sha256(f"{reason or ''}\x00{what}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def with_quarantine_keys(quarantined: pl.DataFrame) -> pl.DataFrame:
    """``quarantined`` with its ``quarantine_key`` column filled (from the unscrubbed reason and
    raw text: call it before scrubbing). Quarantine rows are few (rejected lines): one hash per
    row in Python costs nothing next to the ingest."""
    keys = [quarantine_key(reason, raw, src) for reason, raw, src in zip(
        quarantined.get_column("reason").to_list(), quarantined.get_column("raw").to_list(),
        quarantined.get_column("source_file").to_list(), strict=True)]
    return quarantined.with_columns(pl.Series(QUARANTINE_KEY, keys, dtype=pl.String))


def drop_quarantine_copies(quarantined: pl.DataFrame, elsewhere: pl.Series | list[str]
                           ) -> tuple[pl.DataFrame, dict[str, int]]:
    """The rows of one day's ``quarantined`` frame that are not copies: the first row of each
    ``quarantine_key`` within the day, minus the keys in ``elsewhere`` (those other partitions
    of ``quarantined_interactions`` hold). Returns (rows, {quarantine_copies_in_day,
    quarantine_copies_elsewhere})."""
    stats = {"quarantine_copies_in_day": 0, "quarantine_copies_elsewhere": 0}
    if quarantined.height == 0:
        return quarantined, stats
    first = quarantined.filter(pl.col(QUARANTINE_KEY).is_first_distinct())
    stats["quarantine_copies_in_day"] = quarantined.height - first.height
    other = pl.Series(QUARANTINE_KEY, elsewhere, dtype=pl.String)
    kept = first.filter(~pl.col(QUARANTINE_KEY).is_in(other.implode()))
    stats["quarantine_copies_elsewhere"] = first.height - kept.height
    return kept, stats
