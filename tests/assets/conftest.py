"""Shared set-up of the asset tests."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from assets.ingest import ingest_interactions, raw_interactions
from assets.quality import interaction_quality
from ml.demo.generate import generate
from tests.stores import resources_for, warehouse_connect


def land_and_ingest_days(home: Path, n: int = 60, days: int = 1, seed: int = 9) -> list[str]:
    """Generate ``n`` demo records over ``days`` days into ``home``'s landing zone and
    materialize ingest and quality for each day; return the days, in order."""
    summary = generate(home / "landing", n, seed=seed, days=days)
    landed = sorted(summary["days"])
    with dg.instance_for_test() as instance:
        for day in landed:
            assert dg.materialize([raw_interactions, ingest_interactions, interaction_quality],
                                  partition_key=day, instance=instance,
                                  resources=resources_for(home)
                                  ).success
    return landed


def land_and_ingest(home: Path, n: int = 60, seed: int = 9) -> str:
    """:func:`land_and_ingest_days` of one day; return the day."""
    return land_and_ingest_days(home, n, days=1, seed=seed)[0]


def warehouse_rows(home: Path, sql: str) -> list[tuple]:
    """The rows of ``sql`` run read-only against ``home``'s warehouse."""
    con = warehouse_connect(home, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
