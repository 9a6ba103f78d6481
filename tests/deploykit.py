"""Parts of the deployment tests.

* Served interactions of an A/B experiment in a real DuckDB warehouse: rows of ``interactions``
  (the record the serving API writes: model version, tags ``experiment:<id>`` /
  ``arm:<arm>``, feedback), ``interaction_quality`` and ``audited_errors`` with the registered
  table layouts (``ml.tables``), written with ``ml.warehouse``.
* A real MLflow tracking store (SQLite) for each test, copied from one migrated once per module:
  creating and migrating a fresh one takes seconds, a copy a fraction of one.
"""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from ml import warehouse as wh
from ml.tables import TABLES


def _row(table: str, **values) -> dict:
    return {c.name: values.get(c.name) for c in TABLES[table].columns}


def served(experiment_id: int | None, arm: str | None, version: str, n: int, *, quality: float,
           thumbs_up: float, model_name: str = "tiny-assistant", start: datetime | None = None,
           audited: int = 0, errors: int = 0, seed: int = 0, prefix: str = "",
           spread: float = 0.08) -> dict[str, list[dict]]:
    """``n`` served turns of ``version`` (in ``arm`` of experiment ``experiment_id`` when given)
    one millisecond apart from ``start`` (default: now, UTC): quality scores around ``quality``,
    a share ``thumbs_up`` of thumbs up (the rest down), the first ``audited`` audited of which
    the first ``errors`` are errors. Returns rows per table."""
    rnd = random.Random(seed)
    start = start or datetime.now(UTC).replace(tzinfo=None)
    tags = [f"experiment:{experiment_id}", f"arm:{arm}"] if experiment_id is not None else []
    out: dict[str, list[dict]] = {"interactions": [], "interaction_quality": [],
                                  "audited_errors": []}
    for i in range(n):
        ts = start + timedelta(milliseconds=i)
        iid = f"{prefix or arm or 'live'}-{experiment_id}-{version}-{seed}-{i}"
        up = rnd.random() < thumbs_up
        score = min(1.0, max(0.0, rnd.gauss(quality, spread)))
        out["interactions"].append(_row(
            "interactions", interaction_id=iid, tenant_id="t1", session_id=f"s-{iid}",
            turn_index=0, ts=ts, channel="web", model_provider="learnloop",
            model_name=model_name, model_version=str(version), messages="[]",
            user_message="where is my order?", response="it shipped",
            feedback_thumbs="up" if up else "down", feedback_rating=5 if up else 1,
            requested_human=not up and rnd.random() < 0.5, tags=tags,
            partition_date=ts.date()))
        out["interaction_quality"].append(_row(
            "interaction_quality", interaction_id=iid, tenant_id="t1", partition_date=ts.date(),
            model_version=str(version), user_satisfaction=1.0 if up else 0.0,
            quality_score=score, confidence=0.8, dimensions_present=3, scorer_version="test"))
        if i < audited:
            err = i < errors
            out["audited_errors"].append(_row(
                "audited_errors", interaction_id=iid, tenant_id="t1", partition_date=ts.date(),
                auditor="rules", prompt_version="rules-1", is_error=err,
                category="wrong_answer" if err else None, severity="high" if err else None,
                confidence=0.9, explanation="planted", signals=[], answered_by="rules",
                audited_at=ts, in_calibration=False))
    return out


def write(path: Path | str, *batches: dict[str, list[dict]]) -> None:
    """Append the rows of ``batches`` to the warehouse at ``path`` (tables created as needed)."""
    con = wh.connect(path)
    try:
        for table in ("interactions", "interaction_quality", "audited_errors"):
            rows = [r for b in batches for r in b.get(table, [])]
            frame = pl.DataFrame(rows, schema=TABLES[table].polars_schema())
            wh.upsert_rows(con, table, frame)
    finally:
        con.close()


def mlflow_template(folder: Path) -> Path:
    """A migrated, empty MLflow SQLite store in ``folder`` (once per test module)."""
    from ml.registry import Registry

    folder.mkdir(parents=True, exist_ok=True)
    Registry(f"sqlite:///{folder / 'mlflow.db'}", folder / "mlartifacts", "template").client \
        .search_registered_models()
    return folder / "mlflow.db"


def copy_mlflow(template: Path, dest: Path) -> str:
    """A copy of the template store at ``dest`` (its parent created); returns its URI."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, dest)
    return f"sqlite:///{dest}"
