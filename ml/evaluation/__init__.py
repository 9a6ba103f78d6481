"""Evaluation of a candidate model against the production champion: offline metric modules,
generation (local or through a provider), must-refuse prompts, a pairwise LLM judge, the
scores and their comparison, and the promotion gate."""

from ml.evaluation.compare import (
    ModelScores,
    SetScores,
    compare,
    evaluate_model,
    flat_metrics,
    score_set,
)
from ml.evaluation.gate import GateResult, GateThresholds, apply_gate
from ml.evaluation.generation import Generation, Generator, LocalGenerator, ProviderGenerator
from ml.evaluation.judge import JudgeError, JudgeResult, judge_pairwise
from ml.evaluation.metrics import load_metric
from ml.evaluation.refusals import is_refusal, load_must_refuse, refusal_rate

__all__ = [
    "GateResult", "GateThresholds", "Generation", "Generator", "JudgeError", "JudgeResult",
    "LocalGenerator", "ModelScores", "ProviderGenerator", "SetScores", "apply_gate", "compare",
    "evaluate_model", "flat_metrics", "is_refusal", "judge_pairwise", "load_metric",
    "load_must_refuse", "refusal_rate", "score_set",
]
