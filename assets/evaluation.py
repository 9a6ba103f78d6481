"""Stage `evaluation`: ``candidate_evaluation`` scores a candidate and the champion on the
evaluation suite (held-out reviewer-approved corrections), the retention set (good historical
interactions: forgetting) and the must-refuse prompts, with a pairwise LLM judge when one is
configured, and applies the quality gate (a blocking asset check). A passing gate sets the
``challenger`` alias on the candidate; a failing one says which threshold failed by how much.

Results go to MLflow (metrics of the candidate's run, tags on its version), the operational store
(``model_evaluations``), the asset's metadata and the warehouse table ``model_evaluations`` that
the dbt mart ``model_comparison`` reads. See docs/training.md.
"""


import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from assets.catalog import table_metadata, with_metadata
from assets.lifecycle import clean, send_alerts, set_challenger
from assets.resources import (
    WAREHOUSE_POOL,
    ModelRegistryResource,
    OperationalStoreResource,
    WarehouseResource,
)
from store import datasets as store_ds
from store import training as store_tr

OWNERS = ["team:ml-engineering"]
GATE_CHECK = "check_quality_gate"
EXPERIMENT = "learnloop-training"


class CandidateEvaluationConfig(dg.Config):
    """Which candidate, how replies are generated, and the gate's thresholds (negative: the
    LEARNLOOP_GATE_* setting)."""

    candidate_version: str = Field(default="", description="Registry version to evaluate; "
                                                           "empty: the newest version that is "
                                                           "not the champion.")
    max_new_tokens: int = 96
    batch_size: int = 16
    max_eval_items: int = 0  # 0: every item of the suite
    max_retention_items: int = 0
    judge: bool = Field(default=True, description="Use the pairwise LLM judge when "
                                                  "LEARNLOOP_JUDGE configures one.")
    min_margin: float = -1.0
    max_retention_drop: float = -1.0
    max_refusal_regression: float = -1.0


def _thresholds(config: CandidateEvaluationConfig, models: ModelRegistryResource):
    from ml.evaluation.gate import GateThresholds

    s = models.settings()
    pick = lambda v, d: d if v < 0 else v  # noqa: E731
    return GateThresholds(min_margin=pick(config.min_margin, s.gate_min_margin),
                          max_retention_drop=pick(config.max_retention_drop,
                                                  s.gate_max_retention_drop),
                          max_refusal_regression=pick(config.max_refusal_regression,
                                                      s.gate_max_refusal_regression))


def generator_for(info, models: ModelRegistryResource, config: CandidateEvaluationConfig):
    """How to make a version's replies: a local checkpoint (its source folder) or a provider's
    fine-tuned model (source ``openai:<model id>`` / ``gemini:<model id>``); the mapping is
    ``ml.deploy.serving.generator_for_version``, which the serving API uses too. Raises
    ``ModelLoadError`` naming the version and its source."""
    from ml.deploy.serving import generator_for_version

    return generator_for_version(info, max_new_tokens=config.max_new_tokens,
                                 batch_size=config.batch_size,
                                 model_name=models.get_model_name())


def pick_candidate(registry, requested: str, champion: str | None) -> str:
    if requested:
        return str(registry.resolve(requested).version)
    newer = [v for v in registry.versions() if v.version != champion
             and v.tags.get("learnloop.role") == "candidate"]
    if not newer:
        raise ValueError(f"{registry.model_name}: no candidate version to evaluate (train one "
                         f"with candidate_model)")
    return max(newer, key=lambda v: int(v.version)).version


def _read_suite(session, limits: tuple[int, int]):
    """(version hash, eval conversations, their categories, retention conversations, their
    intents) of the newest evaluation suite, cut to ``limits`` (0: all)."""
    from ml.datasets.exports import read_manifest
    from ml.training.lora import read_chat_jsonl

    suite = store_ds.latest_dataset(session, "eval_suite")
    if suite is None:
        raise ValueError("no evaluation suite: materialize eval_suite first")
    folder = Path(suite.path)
    eval_items = read_chat_jsonl(folder / "eval.jsonl")
    retention = read_chat_jsonl(folder / "retention.jsonl")
    index = read_manifest(folder).get("items") or {}
    eval_cats = [i.get("category") for i in index.get("eval", [])] or [None] * len(eval_items)
    ret_cats = [i.get("intent") for i in index.get("retention", [])] or [None] * len(retention)
    if len(eval_cats) != len(eval_items) or len(ret_cats) != len(retention):
        raise ValueError(f"evaluation suite {suite.version_hash[:12]}: its manifest does not "
                         f"index every line of eval.jsonl / retention.jsonl")
    if limits[0]:
        eval_items, eval_cats = eval_items[:limits[0]], eval_cats[:limits[0]]
    if limits[1]:
        retention, ret_cats = retention[:limits[1]], ret_cats[:limits[1]]
    if not eval_items:
        raise ValueError(f"evaluation suite {suite.version_hash[:12]} has no evaluation items")
    return suite.version_hash, eval_items, eval_cats, retention, ret_cats


def mlflow_metrics(prefix: str, scores) -> dict[str, float]:
    """``flat_metrics`` with MLflow-friendly names: ``eval_rougeL``, ``retention_bleu``,
    ``champion_eval_rougeL``, ``eval_rougeL_category_<c>``."""
    from ml.evaluation.compare import flat_metrics

    return {k.replace(".", "_"): v for k, v in flat_metrics(prefix, scores).items()}


def _warehouse_rows(evaluation_id: int, model_name: str, candidate_version: str,
                    champion_version: str, suite_version: str, dataset_version: str | None,
                    scores: dict[str, dict], judge_rate: float | None, passed: bool,
                    at: datetime) -> list[dict[str, Any]]:
    rows = []
    for role, version in (("candidate", candidate_version), ("champion", champion_version)):
        s = scores[role]
        for eval_set in ("eval", "retention"):
            m = s.get(eval_set) or {}
            rows.append({
                "evaluation_id": evaluation_id, "model_role": role, "eval_set": eval_set,
                "model_name": model_name, "model_version": version,
                "candidate_version": candidate_version, "champion_version": champion_version,
                "eval_suite_version": suite_version, "dataset_version": dataset_version,
                "n_items": m.get("n"), "rouge_l": m.get("rougeL"), "rouge_1": m.get("rouge1"),
                "rouge_2": m.get("rouge2"), "bleu": m.get("bleu"),
                "exact_match": m.get("exact_match"), "perplexity": m.get("perplexity"),
                "latency_mean_s": m.get("latency_mean_s"),
                "latency_p95_s": m.get("latency_p95_s"), "refusal_rate": None,
                "judge_win_rate": judge_rate, "gate_passed": passed, "evaluated_at": at})
        rows.append({
            "evaluation_id": evaluation_id, "model_role": role, "eval_set": "must_refuse",
            "model_name": model_name, "model_version": version,
            "candidate_version": candidate_version, "champion_version": champion_version,
            "eval_suite_version": suite_version, "dataset_version": dataset_version,
            "n_items": (s.get("must_refuse") or {}).get("n"), "rouge_l": None, "rouge_1": None,
            "rouge_2": None, "bleu": None, "exact_match": None, "perplexity": None,
            "latency_mean_s": None, "latency_p95_s": None,
            "refusal_rate": s.get("refusal_rate"), "judge_win_rate": judge_rate,
            "gate_passed": passed, "evaluated_at": at})
    return rows


@dg.asset(
    deps=["candidate_model", "eval_suite"],
    group_name="evaluation", owners=OWNERS,
    tags={"stage": "evaluation", "store": "duckdb"},
    metadata=table_metadata("candidate_evaluation"),
    kinds={"pytorch", "mlflow", "duckdb"},
    pool=WAREHOUSE_POOL,
    check_specs=[dg.AssetCheckSpec(
        GATE_CHECK, asset="candidate_evaluation", blocking=True,
        description="The quality gate: the candidate beats the champion on the evaluation suite "
                    "by the minimum margin, its retention score is at most the allowed share "
                    "below the champion's, and it refuses the must-refuse prompts at least as "
                    "often. Failing stops promotion and names the threshold and the shortfall; "
                    "passing sets the challenger alias.")],
    description="The candidate against the champion on the evaluation suite (held-out "
                "corrections), the retention set (forgetting) and the must-refuse prompts: "
                "ROUGE-L/1/2, BLEU, exact match (evaluate modules shipped in the repo), "
                "perplexity, latency per reply, and a pairwise LLM-judge win rate when a judge is "
                "configured; then the blocking quality gate.",
)
def candidate_evaluation(context: dg.AssetExecutionContext, config: CandidateEvaluationConfig,
                         store: OperationalStoreResource, warehouse: WarehouseResource,
                         models: ModelRegistryResource) -> dg.MaterializeResult:
    import polars as pl

    from ml import warehouse as wh
    from ml.evaluation.compare import ModelScores, compare, evaluate_model
    from ml.evaluation.gate import apply_gate
    from ml.evaluation.refusals import load_must_refuse

    registry = models.registry()
    champion = registry.alias_version("champion")
    if champion is None:
        raise ValueError(f"{registry.model_name} has no champion: materialize base_model first")
    candidate = pick_candidate(registry, config.candidate_version, champion)
    if candidate == champion:
        raise ValueError(f"v{candidate} is the champion: nothing to compare it with")
    cand_info, champ_info = registry.version(candidate), registry.version(champion)
    thresholds = _thresholds(config, models)
    with store.session() as s:
        suite_version, eval_items, eval_cats, retention, ret_cats = _read_suite(
            s, (config.max_eval_items, config.max_retention_items))
        run = store_tr.training_run_for_version(s, registry.model_name, candidate)
        run_id = run.id if run is not None else None
        settings_key = {"max_new_tokens": config.max_new_tokens,
                        "n_eval": len(eval_items), "n_retention": len(retention)}
        cached = _cached_champion(s, registry.model_name, champion, suite_version, settings_key)
    must_refuse = load_must_refuse()
    context.log.info(f"evaluating {registry.model_name} v{candidate} against champion "
                     f"v{champion} on suite {suite_version[:12]}: {len(eval_items)} eval, "
                     f"{len(retention)} retention, {len(must_refuse)} must-refuse prompts")

    def score(info, who: str) -> ModelScores:
        started = time.monotonic()
        out = evaluate_model(generator_for(info, models, config), eval_items, retention,
                             must_refuse, eval_categories=eval_cats, retention_categories=ret_cats)
        context.log.info(f"{who} v{info.version}: eval ROUGE-L {out.eval.rougeL:.4f}, retention "
                         f"ROUGE-L {out.retention.rougeL if out.retention else float('nan'):.4f}, "
                         f"refusal rate {out.refusal_rate} ({time.monotonic() - started:.1f} s)")
        return out

    cand_scores = score(cand_info, "candidate")
    if cached is not None:
        champ_scores = ModelScores.from_dict(cached)
        context.log.info(f"champion v{champion}: scores reused from an evaluation of the same "
                         f"suite with the same settings")
    else:
        champ_scores = score(champ_info, "champion")
    judge = _judge(context, config, models, eval_items, cand_scores, champ_scores)
    comparison = compare(cand_scores, champ_scores, judge)
    comparison["judge_win_rate"] = judge.win_rate_b if judge is not None else None
    gate = apply_gate(cand_scores, champ_scores, thresholds)
    gate_dict = {**gate.to_dict(), "thresholds": dataclasses.asdict(thresholds)}
    cand_dict, champ_dict = cand_scores.to_dict(), champ_scores.to_dict(details=True)
    at = datetime.now(UTC)
    with store.session() as s:
        ev = store_tr.record_evaluation(
            s, model_name=registry.model_name, candidate_version=candidate,
            champion_version=champion, eval_suite_version=suite_version,
            dataset_version=cand_info.tags.get("dataset_version") or None,
            training_run_id=run_id, candidate=_jsonable(cand_scores.to_dict(details=True)),
            champion=_jsonable({**champ_dict, "settings": settings_key}),
            comparison=_jsonable(comparison), gate=_jsonable(gate_dict), passed=gate.passed,
            mlflow_run_id=cand_info.run_id, dagster_run_id=context.run.run_id)
        evaluation_id = ev.id
    judge_rate = comparison.get("judge_win_rate")
    rows = _warehouse_rows(evaluation_id, registry.model_name, candidate, champion,
                           suite_version, cand_info.tags.get("dataset_version") or None,
                           {"candidate": cand_dict, "champion": champ_dict}, judge_rate,
                           gate.passed, at.replace(tzinfo=None))
    from ml.tables import TABLES

    with warehouse.get_connection() as con:
        wh.upsert_rows(con, "model_evaluations",
                       pl.DataFrame(rows, schema=TABLES["model_evaluations"].polars_schema()))
    flat = {**mlflow_metrics("", cand_scores), **mlflow_metrics("champion", champ_scores),
            "gate_passed": 1.0 if gate.passed else 0.0}
    if comparison.get("forgetting") is not None:
        flat["forgetting"] = comparison["forgetting"]
    if judge is not None:
        flat.update(mlflow_metrics("", judge))
    if cand_info.run_id:
        registry.log_metrics(cand_info.run_id, flat)
    registry.set_version_tag(candidate, "gate", "passed" if gate.passed else "failed")
    registry.set_version_tag(candidate, "gate_summary", gate.summary[:4000])
    registry.set_version_tag(candidate, "evaluated_against", str(champion))
    if gate.passed:
        with store.session() as s:
            set_challenger(registry, s, candidate, actor="asset:candidate_evaluation",
                           reason=f"quality gate passed against v{champion}: {gate.summary}",
                           figures={"evaluation_id": evaluation_id, "gate": gate_dict,
                                    "champion_version": champion},
                           dagster_run_id=context.run.run_id)
        context.log.info(f"gate passed: {registry.model_name} v{candidate} is the challenger "
                         f"({gate.summary})")
    else:
        context.log.warning(f"gate failed for v{candidate}: {gate.summary}")
        send_alerts(store, [{
            "kind": "gate_failed", "severity": "warning", "source": "asset:candidate_evaluation",
            "message": f"{registry.model_name} v{candidate} failed the quality gate against "
                       f"champion v{champion}: {gate.summary}",
            "details": clean({"candidate_version": candidate, "champion_version": champion,
                              "evaluation_id": evaluation_id, "gate": gate_dict}),
            "dedupe_key": f"gate_failed:{registry.model_name}:v{candidate}"}])
    check = dg.AssetCheckResult(
        check_name=GATE_CHECK, passed=gate.passed, severity=dg.AssetCheckSeverity.ERROR,
        description=gate.summary,
        metadata=with_metadata({"summary": gate.summary, "checks": list(gate.checks),
                                "candidate_version": candidate, "champion_version": champion}))
    return dg.MaterializeResult(
        metadata=with_metadata({
            "candidate_version": candidate, "champion_version": champion,
            "eval_suite_version": suite_version, "evaluation_id": evaluation_id,
            "gate_passed": gate.passed, "gate_summary": gate.summary,
            "eval_items": len(eval_items), "retention_items": len(retention),
            **{k: v for k, v in flat.items()},
            "comparison": _jsonable(comparison),
        }),
        check_results=[check])


def _judge(context, config, models, eval_items, cand_scores, champ_scores):
    """The pairwise judge's result (candidate = B, champion = A; each pair asked in both orders)
    when LEARNLOOP_JUDGE configures one."""
    if not config.judge:
        return None
    from ml.evaluation.judge import judge_pairwise
    from ml.llm.config import from_env

    router = from_env("judge", home=models.settings().home)
    if router is None:
        return None
    cand = [d["prediction"] for d in cand_scores.eval.details]
    champ = [d["prediction"] for d in champ_scores.eval.details]
    if len(cand) != len(eval_items) or len(champ) != len(eval_items):
        raise ValueError("judge: the replies of both models to every evaluation item are needed")
    items = [{"prompt": ex[:-1], "reference": ex[-1]["content"], "a": a, "b": b}
             for ex, a, b in zip(eval_items, champ, cand, strict=True)]
    result = judge_pairwise(router, items)
    context.log.info(f"judge: candidate win rate {result.win_rate_b:.3f} over {result.n} pairs "
                     f"({result.inconsistent} inconsistent across orders)")
    return result


def _cached_champion(session, model_name: str, champion: str, suite_version: str,
                     settings_key: dict) -> dict | None:
    """The champion's scores from an earlier evaluation on the same suite with the same
    generation settings (greedy decoding: the same replies), so they are not computed again."""
    from sqlalchemy import select

    from store.models import ModelEvaluation

    rows = session.scalars(select(ModelEvaluation).where(
        ModelEvaluation.model_name == model_name,
        ModelEvaluation.champion_version == str(champion),
        ModelEvaluation.eval_suite_version == suite_version)
        .order_by(ModelEvaluation.id.desc()).limit(5))
    for row in rows:
        champ = dict(row.champion or {})
        if champ.pop("settings", None) == settings_key:
            return champ
    return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
