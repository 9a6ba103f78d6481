"""review_decisions: review events copied incrementally from the operational store."""

import dagster as dg

from assets.review import review_decisions
from store import repo
from store.db import session_scope, upgrade
from tests.assets.conftest import warehouse_rows
from tests.stores import resources_for


def test_review_events_are_copied_once_and_incrementally(learnloop_home):
    url = f"sqlite:///{learnloop_home / 'store.db'}"
    upgrade(url)
    with session_scope(url) as s:
        err, _ = repo.create_item(s, kind="error", dedup_key="e1", tenant_id="acme",
                                  interaction_id="i1", auditor="rules", prompt_version="rules-v1",
                                  category="factual_error", severity="high")
        repo.decide(s, err.id, decision="confirm", expected_version=1, actor="ann", note="yes")
    res = resources_for(learnloop_home)
    first = dg.materialize([review_decisions], resources=res)
    assert first.success
    rows = warehouse_rows(learnloop_home, "SELECT event_id, kind, action, status_before, status_after, "
                                 "actor, auditor, note FROM review_decisions ORDER BY event_id")
    assert rows == [(1, "error", "created", None, "pending", "system", "rules", None),
                    (2, "error", "decide", "pending", "confirmed", "ann", "rules", "yes")]
    # nothing new: nothing copied, nothing duplicated
    again = dg.materialize([review_decisions], resources=res)
    (mat,) = [e.materialization for e in again.get_asset_materialization_events()]
    assert mat.metadata["copied"].value == 0
    assert warehouse_rows(learnloop_home, "SELECT count(*) FROM review_decisions") == [(2,)]
    # a new decision: only it is copied
    with session_scope(url) as s:
        sample, _ = repo.create_item(s, kind="sample", dedup_key="s1", tenant_id="acme",
                                     interaction_id="i1", proposed_response="better")
        repo.decide(s, sample.id, decision="approve", expected_version=1, actor="bob")
    third = dg.materialize([review_decisions], resources=res)
    (mat,) = [e.materialization for e in third.get_asset_materialization_events()]
    assert mat.metadata["copied"].value == 2
    assert mat.metadata["last_event_id"].value == 4
    assert warehouse_rows(learnloop_home, "SELECT count(*), count(DISTINCT event_id) FROM review_decisions") \
        == [(4, 4)]
