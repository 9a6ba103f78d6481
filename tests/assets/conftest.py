"""Shared set-up of the asset tests."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from assets.ingest import ingest_interactions, raw_interactions
from assets.quality import interaction_quality
from ml.demo.generate import generate
from tests.stores import resources_for, warehouse_connect


def land_and_ingest(home: Path, n: int = 60, seed: int = 9) -> str:
    """Generate ``n`` demo records of one day into ``home``'s landing zone and materialize ingest
    and quality for that day; return the day."""
    summary = generate(home / "landing", n, seed=seed, days=1)
    day = sorted(summary["days"])[0]
    with dg.instance_for_test() as instance:
        assert dg.materialize([raw_interactions, ingest_interactions, interaction_quality],
                              partition_key=day, instance=instance,
                              resources=resources_for(home)
                              ).success
    return day


def warehouse_rows(home: Path, sql: str) -> list[tuple]:
    """The rows of ``sql`` run read-only against ``home``'s warehouse."""
    con = warehouse_connect(home, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
