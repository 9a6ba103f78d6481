"""Warehouse tables of the audit and teaching stages, and the two ways they are written.

* ``replace_table``: the whole table is the current state (``audit_candidates``,
  ``preference_pairs``); rewritten in one transaction.
* ``upsert_rows``: rows keyed by columns (``audited_errors`` on interaction_id, auditor,
  prompt_version); a re-audit replaces its rows, never duplicates them.
"""

from __future__ import annotations

from typing import Sequence

import duckdb
import polars as pl

from ml import warehouse
from ml.audit.candidates import CANDIDATE_COLUMNS
from ml.audit.taxonomy import AUDITED_COLUMNS

PREFERENCE_COLUMNS: dict[str, str] = {
    "sample_item_id": "BIGINT",
    "error_item_id": "BIGINT",
    "interaction_id": "VARCHAR",
    "tenant_id": "VARCHAR",
    "prompt": "VARCHAR",  # the last user message
    "messages": "VARCHAR",  # JSON list of {role, content}: the context of the reply
    "chosen": "VARCHAR",  # the approved / edited reply
    "rejected": "VARCHAR",  # the assistant's original reply
    "source": "VARCHAR",  # who proposed the chosen reply: human_agent | retrieval | llm:<p>
    "status": "VARCHAR",  # approved | edited
    "category": "VARCHAR",
    "decided_by": "VARCHAR",
    "decided_at": "TIMESTAMP",
}

AUDIT_TABLES: dict[str, dict[str, str]] = {
    "audit_candidates": CANDIDATE_COLUMNS,
    "audited_errors": AUDITED_COLUMNS,
    "preference_pairs": PREFERENCE_COLUMNS,
}


def ensure(con: duckdb.DuckDBPyConnection, name: str) -> None:
    warehouse.ensure_table(con, name, AUDIT_TABLES[name])


def replace_table(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> int:
    """Make ``frame`` the whole content of table ``name`` (atomically)."""
    return warehouse.replace_table(con, name, frame, AUDIT_TABLES[name])


def upsert_rows(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame,
                keys: Sequence[str]) -> int:
    """Replace the rows of ``name`` whose ``keys`` match a row of ``frame``, then insert ``frame``."""
    return warehouse.upsert_rows(con, name, frame, tuple(keys), AUDIT_TABLES[name])


table_exists = warehouse.table_exists
query = warehouse.query
