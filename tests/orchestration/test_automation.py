"""Declarative automation of the dbt models: the condition on every model, the sensor that
evaluates it, and what an evaluation requests after new upstream data (Dagster's own evaluator
on an ephemeral instance; no run is launched)."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster_shared.serdes import deserialize_value, serialize_value

from assets.analytics import ANALYTICS_GROUP, AUTOMATION_CONDITION, dbt_analytics_assets
from orchestration.automation import analytics_automation_sensor
from orchestration.definitions import defs

ANALYTICS = dg.AssetSelection.groups(ANALYTICS_GROUP)
READ_INTERACTIONS = {"stg_interactions", "int_interactions_enriched", "int_interaction_outcomes",
                     "fct_interactions", "daily_quality", "feedback_loop_metrics",
                     "auditor_agreement", "model_performance", "experiment_arms"}


def _requested(result) -> set[str]:
    return {r.key.to_user_string() for r in result.results
            if isinstance(r.key, dg.AssetKey) and result.get_num_requested(r.key)}


def _evaluate(instance, cursor=None):
    return dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                             asset_selection=ANALYTICS, cursor=cursor)


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture()
def built(instance):
    """An instance on which every dbt model was built once (a first analytics_job run)."""
    for key in dbt_analytics_assets.keys:
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
    return instance


def test_every_dbt_model_and_only_they_carry_the_automation_condition():
    graph = defs.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys()
                 if graph.get(k).automation_condition is not None}
    assert automated == {k.to_user_string() for k in dbt_analytics_assets.keys}
    assert {"model_performance", "experiment_arms"} <= automated
    for key in dbt_analytics_assets.keys:
        assert graph.get(key).automation_condition == AUTOMATION_CONDITION
    # the daemon evaluates a serialized copy (no user code): the condition must survive the trip
    assert deserialize_value(serialize_value(AUTOMATION_CONDITION)) == AUTOMATION_CONDITION


def test_the_analytics_automation_sensor_runs_by_default_and_replaces_the_default_sensor():
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert "default_automation_condition_sensor" not in sensors  # every condition is targeted
    sensor = sensors["analytics_automation_sensor"]
    assert sensor is analytics_automation_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert sensor.asset_selection.resolve(graph) == set(dbt_analytics_assets.keys)


def test_new_interactions_request_the_models_downstream_of_them_once(built):
    first = _evaluate(built)
    assert first.total_requested == 0  # nothing new upstream

    built.report_runless_asset_event(
        dg.AssetMaterialization("interactions", partition="2025-01-01"))
    second = _evaluate(built, first.cursor)
    # all of them in one tick (one run): the views too, though most landing days are missing
    assert _requested(second) == READ_INTERACTIONS

    third = _evaluate(built, second.cursor)
    assert third.total_requested == 0  # requested once, not on every tick


def test_new_verdicts_or_a_new_evaluation_request_only_what_reads_them(built):
    first = _evaluate(built)
    # the audit is partitioned by landing day: a run records its day(s)
    built.report_runless_asset_event(dg.AssetMaterialization("audited_errors",
                                                             partition="2025-01-01"))
    second = _evaluate(built, first.cursor)
    assert _requested(second) == {"stg_audited_errors", "error_trends", "auditor_agreement",
                                  "int_interaction_outcomes", "model_performance",
                                  "experiment_arms"}
    built.report_runless_asset_event(dg.AssetMaterialization("candidate_evaluation"))
    third = _evaluate(built, second.cursor)
    assert _requested(third) == {"stg_model_evaluations", "model_comparison"}


def test_before_the_first_full_build_a_model_waits_for_the_views_it_reads(instance):
    """On a fresh instance new interactions rebuild stg_interactions only: the models that also
    read views never built (stg_interaction_quality, ...) wait, instead of a failing dbt run."""
    first = _evaluate(instance)
    instance.report_runless_asset_event(
        dg.AssetMaterialization("interactions", partition="2025-01-01"))
    second = _evaluate(instance, first.cursor)
    assert _requested(second) == {"stg_interactions"}


def test_plain_eager_would_never_fire_below_daily_partitions(instance):
    """Why AUTOMATION_CONDITION's missing-dependency clause ignores the sources: with one landing
    day ingested and the others missing, plain eager() waits for ever."""
    days = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_offset=1)

    @dg.asset(partitions_def=days)
    def interactions() -> None: ...

    @dg.asset(deps=[interactions], automation_condition=dg.AutomationCondition.eager(),
              group_name=ANALYTICS_GROUP)
    def plain() -> None: ...

    @dg.asset(deps=[interactions], automation_condition=AUTOMATION_CONDITION,
              group_name=ANALYTICS_GROUP)
    def ours() -> None: ...

    assets = [interactions, plain, ours]
    first = dg.evaluate_automation_conditions(defs=assets, instance=instance)
    instance.report_runless_asset_event(
        dg.AssetMaterialization("interactions", partition="2025-01-02"))
    second = dg.evaluate_automation_conditions(defs=assets, instance=instance,
                                               cursor=first.cursor)
    assert _requested(second) == {"ours"}
