"""Training runs and model evaluations in the operational store (store/training.py), on SQLite
and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from store.db import session_scope
from store.repo import NotFound
from store.training import (
    StaleTrainingRun,
    active_provider_runs,
    create_training_run,
    get_training_run,
    latest_evaluation,
    list_evaluations,
    list_training_runs,
    move_training_run,
    record_evaluation,
    run_summary,
    training_run_for_version,
)


def test_a_run_moves_by_compare_and_set(store_url):
    with session_scope(store_url) as s:
        run = create_training_run(s, method="lora", base_model="/m/base", model_name="assistant",
                                  dataset_version="ab" * 32, params={"rank": 8})
        rid = run.id
        assert run.status == "running" and run.finished_at is None
    with session_scope(store_url) as s:
        done = move_training_run(s, rid, expect="running", status="succeeded", model_version="2",
                                 metrics={"val_loss_after": 1.5})
        assert done.status == "succeeded" and done.finished_at is not None
        assert training_run_for_version(s, "assistant", "2").id == rid
        assert training_run_for_version(s, "assistant", "3") is None
    with session_scope(store_url) as s, pytest.raises(StaleTrainingRun, match="is 'succeeded'"):
        move_training_run(s, rid, expect="running", status="failed")
    with session_scope(store_url) as s:
        assert get_training_run(s, rid).status == "succeeded"  # the stale move changed nothing
        assert run_summary(get_training_run(s, rid))["metrics"] == {"val_loss_after": 1.5}


def test_bad_moves_and_unknown_runs_are_refused(store_url):
    with session_scope(store_url) as s:
        rid = create_training_run(s, method="lora", base_model="b", model_name="m").id
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="status must be one of"):
            move_training_run(s, rid, expect="running", status="done")
        with pytest.raises(ValueError, match="unknown training run fields"):
            move_training_run(s, rid, expect="running", colour="red")
        with pytest.raises(NotFound, match="999999"):
            move_training_run(s, 999999, expect="running", status="failed")
        with pytest.raises(ValueError, match="status must be one of"):
            create_training_run(s, method="lora", base_model="b", model_name="m", status="new")


def test_active_provider_runs_and_unique_jobs(store_url):
    with session_scope(store_url) as s:
        create_training_run(s, method="lora", base_model="b", model_name="m")
        a = create_training_run(s, method="openai", base_model="gpt", model_name="m",
                                provider="openai", provider_job_id="ftjob-1", status="queued").id
        b = create_training_run(s, method="gemini", base_model="gem", model_name="m",
                                provider="gemini", provider_job_id="tuningJobs/2").id
    with session_scope(store_url) as s:
        assert [r.id for r in active_provider_runs(s)] == [a, b]
        move_training_run(s, b, expect=("queued", "running"), status="cancelled")
    with session_scope(store_url) as s:
        assert [r.id for r in active_provider_runs(s)] == [a]
        assert [r.id for r in list_training_runs(s, model_name="m")][:1] == [b]
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        with session_scope(store_url) as s:
            create_training_run(s, method="openai", base_model="gpt", model_name="m",
                                provider="openai", provider_job_id="ftjob-1")


def test_two_writers_moving_one_run_never_both_win(store_url):
    with session_scope(store_url) as s:
        rid = create_training_run(s, method="openai", base_model="gpt", model_name="m",
                                  provider="openai", provider_job_id="ftjob-race").id
    results: list[str] = []
    barrier = threading.Barrier(2)

    def move(status: str) -> None:
        barrier.wait()
        try:
            with session_scope(store_url) as s:
                move_training_run(s, rid, expect=("queued", "running"), status=status)
            results.append(status)
        except StaleTrainingRun:
            results.append("stale")
        except Exception as exc:  # SQLite may refuse the second writer while the first commits
            if "locked" not in str(exc):
                raise
            results.append("stale")

    threads = [threading.Thread(target=move, args=(st,)) for st in ("succeeded", "cancelled")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count("stale") == 1
    with session_scope(store_url) as s:
        assert get_training_run(s, rid).status in ("succeeded", "cancelled")
        assert get_training_run(s, rid).status in results


def test_evaluations_are_appended_and_read_back(store_url):
    with session_scope(store_url) as s:
        rid = create_training_run(s, method="lora", base_model="b", model_name="m").id
        first = record_evaluation(s, model_name="m", candidate_version="2", champion_version="1",
                                  candidate={"eval": {"rougeL": 0.5}},
                                  champion={"eval": {"rougeL": 0.4}},
                                  comparison={"eval_rougeL_delta": 0.1},
                                  gate={"passed": True, "checks": []}, passed=True,
                                  training_run_id=rid, eval_suite_version="e" * 64)
        second = record_evaluation(s, model_name="m", candidate_version="2", champion_version="1",
                                   candidate={}, champion={}, comparison={},
                                   gate={"passed": False}, passed=False)
        ids = (first.id, second.id)
    with session_scope(store_url) as s:
        assert latest_evaluation(s, "m").id == ids[1]
        assert latest_evaluation(s, "m", "2").passed is False
        assert latest_evaluation(s, "m", "3") is None
        assert [e.id for e in list_evaluations(s, "m")] == [ids[1], ids[0]]
        assert list_evaluations(s, "m")[1].candidate == {"eval": {"rougeL": 0.5}}
