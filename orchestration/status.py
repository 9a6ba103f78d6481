"""Counts per stage for `learnloop status`."""

from __future__ import annotations

from typing import Any

from ml import warehouse
from ml.config import Settings


def collect_status(settings: Settings) -> dict[str, Any]:
    """Counts per stage. Stages not built yet report zeros or null. The store must be migrated
    (the CLI migrates it at start-up)."""
    from store.db import session_scope
    from store.repo import status_counts

    with session_scope(settings.store) as session:
        counts = status_counts(session)
        from sqlalchemy import func, select

        from store.models import TrainingRun

        versions = session.scalar(
            select(func.count(func.distinct(TrainingRun.model_version)))
            .where(TrainingRun.model_version.is_not(None))
        ) or 0
    return {
        "interactions": warehouse.table_count(settings.warehouse, "interactions"),
        "quarantined": warehouse.table_count(settings.warehouse, "quarantined_interactions"),
        "scored": warehouse.table_count(settings.warehouse, "interaction_quality"),
        "errors": counts["errors"],
        "calibration": counts["calibration"],
        "samples": counts["samples"],
        "datasets": counts["datasets"],
        "models": {"versions": versions, "champion": counts["champion"],
                   "challenger": counts["challenger"]},
        "home": str(settings.home),
    }


def format_status(st: dict[str, Any]) -> str:
    e, c, s, m = st["errors"], st["calibration"], st["samples"], st["models"]
    lines = [
        f"learnloop at {st['home']}",
        f"  ingest     interactions {st['interactions']:>9,}   quarantined {st['quarantined']:>7,}",
        f"  quality    scored       {st['scored']:>9,}",
        f"  audit      errors       pending {e['pending']:,} · confirmed {e['confirmed']:,} · "
        f"dismissed {e['dismissed']:,}",
        # "no error found" verdicts put to reviewers: confirmed = a reply the auditor missed
        f"             calibration  pending {c['pending']:,} · auditor missed {c['confirmed']:,} · "
        f"reply fine {c['dismissed']:,}",
        f"  teaching   samples      pending {s['pending']:,} · approved {s['approved']:,} · "
        f"rejected {s['rejected']:,}",
        f"  datasets   {st['datasets']:,}",
        f"  models     versions {m['versions']:,} · champion {m['champion'] or '-'} · "
        f"challenger {m['challenger'] or '-'}",
    ]
    return "\n".join(lines)
