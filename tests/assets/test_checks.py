"""The asset checks of the audit and teaching stages: they pass on a real chain and fail, naming
the problem, on planted bad rows."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from assets.audit import (
    audit_candidates,
    audited_errors,
    check_candidates_have_known_reasons,
    check_verdicts_are_consistent,
)
from assets.embeddings import interaction_embeddings
from assets.teaching import (
    check_pairs_differ,
    check_samples_are_reviewable,
    preference_pairs,
    teacher_samples,
)
from store.db import session_scope
from store.teaching import create_samples
from tests.assets.conftest import land_and_ingest
from tests.stores import materialize, resources_for

ASSETS = [interaction_embeddings, audit_candidates, audited_errors, teacher_samples,
          preference_pairs]
CHECKS = [check_candidates_have_known_reasons, check_verdicts_are_consistent,
          check_samples_are_reviewable, check_pairs_differ]


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _run_checks(home) -> tuple[bool, dict[str, dg.AssetCheckEvaluation]]:
    with dg.instance_for_test() as instance:
        result = materialize([*ASSETS, *CHECKS], home, instance=instance,
                             selection=dg.AssetSelection.checks(*CHECKS),
                             resources=resources_for(home), raise_on_error=False)
    return result.success, _evaluations(result)


@pytest.fixture()
def chain_home(learnloop_home, monkeypatch):
    for var in ("LEARNLOOP_AUDITOR", "LEARNLOOP_TEACHER"):
        monkeypatch.delenv(var, raising=False)
    land_and_ingest(learnloop_home, n=200, seed=5)
    with dg.instance_for_test() as instance:
        result = materialize([*ASSETS, *CHECKS], learnloop_home, instance=instance,
                             resources=resources_for(learnloop_home))
    assert result.success
    evaluations = _evaluations(result)
    assert set(evaluations) == {c.check_key.name for c in CHECKS}
    assert all(e.passed for e in evaluations.values()), {
        k: e.metadata for k, e in evaluations.items() if not e.passed}
    return learnloop_home


def test_checks_fail_on_planted_bad_rows_and_name_the_problem(chain_home):
    con = duckdb.connect(str(chain_home / "warehouse.duckdb"))
    try:
        con.execute("INSERT INTO audited_errors (interaction_id, tenant_id, auditor, "
                    "prompt_version, is_error, category, severity, confidence) VALUES "
                    "('planted', 'acme', 'rules', 'rules-v1', true, 'made_up', 'high', 1.5)")
        con.execute("INSERT INTO audit_candidates (interaction_id, reasons, run_id) VALUES "
                    "('planted', ['because'], 'r1'), ('planted', ['manual'], 'r1')")
        con.execute("INSERT INTO preference_pairs (sample_item_id, chosen, rejected) VALUES "
                    "(999999, 'same reply', ' same reply ')")
    finally:
        con.close()
    with session_scope(f"sqlite:///{chain_home / 'store.db'}") as s:
        create_samples(s, [dict(actor="t", tenant_id="acme", interaction_id="planted",
                                proposed_response="", source="retrieval")])

    success, found = _run_checks(chain_home)
    assert not any(e.passed for e in found.values())
    assert not success  # the blocking verdict check fails its run

    def meta(check: str) -> dict:
        return {k: v.value for k, v in found[check].metadata.items()}

    v = meta("check_verdicts_are_consistent")
    assert v["error_without_known_category"] == 1 and v["confidence_out_of_range"] == 1
    assert found["check_verdicts_are_consistent"].blocking
    c = meta("check_candidates_have_known_reasons")
    assert c["unknown_reason"] == 1 and c["selected_twice_by_a_run"] == 1
    assert meta("check_pairs_differ")["chosen_equals_rejected"] == 1
    s = meta("check_samples_are_reviewable")
    assert s["no_proposed_reply"] == 1 and s["teacher_sample_without_parent"] >= 1
