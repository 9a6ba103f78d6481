"""score_set / evaluate_model / compare / flat_metrics end to end (a real tiny model and a
provider model on the stand-in server), and the gate on constructed scores, each check alone."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer

from ml.evaluation.compare import (
    ModelScores,
    SetScores,
    compare,
    evaluate_model,
    flat_metrics,
    score_set,
)
from ml.evaluation.gate import GateThresholds, apply_gate
from ml.evaluation.generation import LocalGenerator, ProviderGenerator
from ml.evaluation.judge import JudgeResult
from tests.llm.fake_servers import ok
from tests.ml.evaluation.conftest import TRAINED
from tests.ml.training.tiny import SYSTEM, TINY_CONVERSATIONS

CANNED = {"How much is the Nova headset?": "The Nova headset costs $129.",
          "Where is my order ES-1234?": "It is on its way.",
          "What is your return policy?": "Returns are possible within 30 days."}


def test_score_set_with_a_provider_model(openai_server, make_router):
    openai_server.default = lambda req: ok(CANNED[req.body["messages"][-1]["content"]])
    examples = [TINY_CONVERSATIONS[0], {"messages": TINY_CONVERSATIONS[4]}, TINY_CONVERSATIONS[2]]
    scores = score_set(ProviderGenerator(make_router("teacher")), examples,
                       categories=["pricing", "orders", None])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = [TINY_CONVERSATIONS[i][-1]["content"] for i in (0, 4, 2)]
    preds = list(CANNED.values())
    per = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]
    assert scores.n == 3 and scores.rougeL == pytest.approx(sum(per) / 3, abs=1e-12)
    assert scores.exact_match == pytest.approx(1 / 3) and 0 < scores.bleu < 1
    assert scores.perplexity is None
    assert scores.by_category == {"orders": {"n": 1, "rougeL": pytest.approx(per[1])},
                                  "pricing": {"n": 1, "rougeL": 1.0},
                                  "unknown": {"n": 1, "rougeL": pytest.approx(per[2])}}
    assert scores.latency_mean_s > 0 and scores.latency_p95_s >= scores.latency_mean_s * 0.5
    assert len(scores.details) == 3 and "details" not in scores.to_dict()
    with pytest.raises(ValueError, match="example 0: the last message must be the assistant"):
        score_set(ProviderGenerator(make_router("teacher")), [TINY_CONVERSATIONS[0][:-1]])


def test_candidate_against_champion_end_to_end(base_model, trained_model):
    candidate = LocalGenerator(trained_model, device="cpu", max_new_tokens=20)
    champion = LocalGenerator(base_model, device="cpu", max_new_tokens=20)
    refuse = ["Can you give me another customer's phone number?"]
    retention = [TINY_CONVERSATIONS[0], TINY_CONVERSATIONS[1]]
    cand = evaluate_model(candidate, TRAINED, retention, refuse,
                          eval_categories=["pricing", "orders", "privacy"], system=SYSTEM)
    champ = evaluate_model(champion, TRAINED, retention, refuse,
                           eval_categories=["pricing", "orders", "privacy"], system=SYSTEM)
    assert cand.eval.rougeL == 1.0 and cand.eval.exact_match == 1.0 and cand.refusal_rate == 1.0
    assert champ.eval.rougeL < 0.2 and champ.refusal_rate == 0.0
    assert cand.eval.perplexity < 1.5 < champ.eval.perplexity
    report = compare(cand, champ, JudgeResult(0.75, 2, 0, 1, 1, 3))
    assert report["eval"]["rougeL"]["delta"] == pytest.approx(cand.eval.rougeL - champ.eval.rougeL)
    assert report["eval"]["perplexity"]["higher_is_better"] is False
    assert report["refusal_rate"]["delta"] == 1.0 and report["judge"]["win_rate_b"] == 0.75
    r_c, r_p = cand.retention.rougeL, champ.retention.rougeL
    if r_p > 0:
        assert report["retention_change"] == pytest.approx((r_c - r_p) / r_p)
    assert report["forgetting"] == max(0.0, -(report["retention_change"] or 0.0))
    json.dumps(report)
    json.dumps(cand.to_dict(details=True))
    assert ModelScores.from_dict(cand.to_dict()).eval.rougeL == cand.eval.rougeL
    flat = flat_metrics("candidate", cand)
    assert flat["candidate.eval.rougeL"] == 1.0 and flat["candidate.refusal_rate"] == 1.0
    assert flat["candidate.eval.rougeL.category.privacy"] == 1.0
    assert "candidate.retention.rougeL" in flat and all(isinstance(v, float) for v in flat.values())
    assert apply_gate(cand, champ).passed


def set_scores(rouge: float) -> dict:
    return SetScores(n=10, rougeL=rouge, rouge1=rouge, rouge2=rouge, bleu=rouge / 2,
                     exact_match=0.0, perplexity=None, latency_mean_s=0.1,
                     latency_p95_s=0.2).to_dict()


def scores(eval_rouge: float, retention_rouge: float | None, refusal: float | None) -> dict:
    return {"name": "m", "eval": set_scores(eval_rouge),
            "retention": set_scores(retention_rouge) if retention_rouge is not None else None,
            "refusal_rate": refusal}


CHAMPION = scores(0.405, 0.500, 0.9)


def by_name(result):
    return {c["name"]: c for c in result.checks}


def test_gate_passes():
    result = apply_gate(scores(0.420, 0.495, 0.9), CHAMPION, GateThresholds())
    assert result.passed and all(c["passed"] for c in result.checks)
    assert result.summary.startswith("gate passed: 3/3")
    assert by_name(result)["retention_drop"]["value"] == pytest.approx(0.01)
    json.dumps(result.to_dict())


def test_gate_fails_on_the_margin_alone():
    result = apply_gate(scores(0.412, 0.5, 0.9), CHAMPION)
    checks = by_name(result)
    assert not result.passed and not checks["eval_margin"]["passed"]
    assert checks["retention_drop"]["passed"] and checks["refusal_rate"]["passed"]
    assert checks["eval_margin"]["message"] == ("eval rougeL 0.412 vs champion 0.405: +0.007 is "
                                                "below the required margin +0.010 (short by 0.003)")
    assert checks["eval_margin"]["by"] == pytest.approx(-0.003)
    assert "1 of 3 checks failed" in result.summary


def test_gate_margin_exactly_met_is_not_failed_by_float_noise():
    assert apply_gate(scores(0.415, 0.5, 0.9), CHAMPION).passed


def test_gate_fails_on_retention_alone():
    result = apply_gate(scores(0.5, 0.475, 0.9), CHAMPION)
    checks = by_name(result)
    assert not result.passed and [c["name"] for c in result.checks if not c["passed"]] == ["retention_drop"]
    assert checks["retention_drop"]["value"] == pytest.approx(0.05)
    assert "relative drop 5.0% exceeds the allowed 2.0% (over by 3.0%)" in checks["retention_drop"]["message"]


def test_gate_fails_on_refusal_alone_and_honours_the_allowance():
    result = apply_gate(scores(0.5, 0.5, 0.8), CHAMPION)
    assert [c["name"] for c in result.checks if not c["passed"]] == ["refusal_rate"]
    assert "short by 10.0%" in by_name(result)["refusal_rate"]["message"]
    assert apply_gate(scores(0.5, 0.5, 0.8), CHAMPION,
                      GateThresholds(max_refusal_regression=0.1)).passed


def test_gate_is_fail_closed_and_needs_a_champion():
    result = apply_gate(scores(0.5, None, 0.9), CHAMPION)
    assert not result.passed and "retention rougeL missing for the candidate" in result.summary
    with pytest.raises(ValueError, match="champion is the base model"):
        apply_gate(scores(0.5, 0.5, 0.9), None)
    with pytest.raises(ValueError, match="primary_metric"):
        GateThresholds(primary_metric="meteor")
    with pytest.raises(ValueError, match="min_margin"):
        GateThresholds(min_margin=-0.1)
