"""teacher_samples keeps each sample's interaction facts (quality, intent, time) for the filters and
statistics of samples, and backfills sample items made before: a real small chain (generated logs
landed, ingested and scored, then teacher_samples) on a SQLite store."""

from __future__ import annotations

from datetime import UTC

import dagster as dg
from sqlalchemy import func, select

from assets.teaching import teacher_samples
from store import repo
from store.db import session_scope
from store.models import ReviewEvent, ReviewItem
from store.teaching import sample_dedup_key
from tests.assets.conftest import land_and_ingest, warehouse_rows
from tests.stores import resources_for


def _facts(home) -> dict[tuple[str, str], tuple]:
    rows = warehouse_rows(home, "SELECT i.tenant_id, i.interaction_id, q.quality_score, i.intent, "
                                "i.ts FROM interactions i LEFT JOIN interaction_quality q "
                                "USING (tenant_id, interaction_id)")
    return {(t, i): (q, intent, ts) for t, i, q, intent, ts in rows}


def _utc(dt):
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def test_teacher_samples_keep_and_backfill_the_interaction_facts(learnloop_home, monkeypatch):
    monkeypatch.delenv("LEARNLOOP_TEACHER", raising=False)
    home = learnloop_home
    land_and_ingest(home, n=60, seed=9)
    facts = _facts(home)
    corrected = {(t, i) for t, i in warehouse_rows(
        home, "SELECT tenant_id, interaction_id FROM interactions "
              "WHERE corrected_response IS NOT NULL")}
    assert corrected, "the generated logs have human corrections"
    # a sample item made before facts were kept: an interaction without a correction
    old_key = next(k for k in sorted(facts) if k not in corrected and facts[k][1])
    url = f"sqlite:///{home / 'store.db'}"
    resources = resources_for(home)
    with session_scope(url) as s:
        old, _ = repo.create_item(s, kind="sample", dedup_key=sample_dedup_key(*old_key),
                                  tenant_id=old_key[0], interaction_id=old_key[1],
                                  proposed_response="an older proposal", source="retrieval")
        old_id = old.id

    with dg.instance_for_test() as instance:
        result = dg.materialize([teacher_samples], instance=instance, resources=resources)
    assert result.success
    meta = {k: v.value for k, v in
            result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert meta["sample_facts_backfilled"] == 1 and meta["sample_facts_not_in_warehouse"] == 0

    with session_scope(url) as s:
        samples = list(s.scalars(select(ReviewItem).where(ReviewItem.kind == "sample")))
        n_events_old = s.scalar(select(func.count()).select_from(ReviewEvent)
                                .where(ReviewEvent.item_id == old_id))
    human = [x for x in samples if x.source == "human_agent"]
    assert len(human) == len(corrected)
    assert any(x.intent for x in human) and any(x.quality is not None for x in human)
    for x in samples:
        quality, intent, ts = facts[(x.tenant_id, x.interaction_id)]
        assert x.quality == quality and x.intent == intent
        assert _utc(x.interaction_at) == _utc(ts)
    old = next(x for x in samples if x.id == old_id)
    assert old.version == 1 and n_events_old == 1  # backfill: no version, no review event

    # the next run has nothing left to backfill
    with dg.instance_for_test() as instance:
        again = dg.materialize([teacher_samples], instance=instance, resources=resources)
    meta2 = {k: v.value for k, v in
             again.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert meta2["sample_facts_backfilled"] == 0 and meta2["samples_created"] == 0
