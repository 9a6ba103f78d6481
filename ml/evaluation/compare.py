"""Scores of one model on the evaluation suite, and the comparison of a candidate with the
champion.

:func:`score_set` generates a reply to every example's prompt (the conversation without its last
message, which is the reference reply) and scores it with the shipped ``evaluate`` modules
(:mod:`ml.evaluation.metrics`): ROUGE-1/2/L (mean F-measure, 0-1, no stemming), BLEU (sacreBLEU
corpus BLEU on a **0-1** scale), exact match (0-1, whitespace-normalised, case-sensitive),
perplexity of the reference replies (local models only; None otherwise), mean and p95 latency
(``numpy.percentile``, linear interpolation; see :mod:`ml.evaluation.generation` for what a
local reply's latency is) and, when categories are given, ROUGE-L per category.

:func:`evaluate_model` scores the evaluation set, the retention set and the refusal rate on the
must-refuse prompts. :func:`compare` puts two :class:`ModelScores` side by side (``delta`` =
candidate - champion, whatever the metric's direction: ``higher_is_better`` says it) and
measures forgetting on the retention set:
``retention_change = (candidate - champion) / champion`` of retention ROUGE-L (signed; negative
is a drop) and ``forgetting = max(0, -retention_change)``. With a champion retention ROUGE-L of 0
the relative change is undefined: ``retention_change`` is None unless both are 0 (then 0.0), and
``forgetting`` is 0.0 (nothing to lose).

Everything has ``to_dict()`` (JSON-serialisable); :func:`flat_metrics` flattens scores into
``{name: float}`` for MLflow.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ml.evaluation.generation import Generator, check_prompt
from ml.evaluation.judge import JudgeResult
from ml.evaluation.metrics import load_metric
from ml.evaluation.refusals import refusal_rate

SET_METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "exact_match", "perplexity",
               "latency_mean_s", "latency_p95_s")
HIGHER_IS_BETTER = {"rougeL": True, "rouge1": True, "rouge2": True, "bleu": True,
                    "exact_match": True, "perplexity": False, "latency_mean_s": False,
                    "latency_p95_s": False, "refusal_rate": True}


@dataclass
class SetScores:
    """A model's scores on one example set; ``by_category`` maps a category to ``{"n",
    "rougeL"}``; ``details`` has per example the category, reply, reference, ROUGE-L, tokens
    and latency (left out of :meth:`to_dict` unless asked for)."""

    n: int
    rougeL: float  # noqa: N815 (the metric's own name)
    rouge1: float
    rouge2: float
    bleu: float
    exact_match: float
    perplexity: float | None
    latency_mean_s: float
    latency_p95_s: float
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not details:
            d.pop("details")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SetScores:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class ModelScores:
    """One model's evaluation: the eval set, the retention set (None when the suite has none)
    and the must-refuse refusal rate (None when not measured)."""

    name: str
    eval: SetScores
    retention: SetScores | None
    refusal_rate: float | None
    refusal_details: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        return {"name": self.name, "eval": self.eval.to_dict(details),
                "retention": self.retention.to_dict(details) if self.retention else None,
                "refusal_rate": self.refusal_rate,
                **({"refusal_details": self.refusal_details} if details else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelScores:
        return cls(name=d.get("name", "?"), eval=SetScores.from_dict(d["eval"]),
                   retention=SetScores.from_dict(d["retention"]) if d.get("retention") else None,
                   refusal_rate=d.get("refusal_rate"),
                   refusal_details=list(d.get("refusal_details") or []))


def split_example(example: Any, where: str) -> tuple[list[dict[str, str]], str]:
    """(prompt messages, reference reply) of a conversation or an eval.jsonl line
    ``{"messages": [...]}`` whose last message is the assistant's reference."""
    messages = example.get("messages") if isinstance(example, Mapping) else example
    if not isinstance(messages, Sequence) or isinstance(messages, str) or len(messages) < 2:
        raise ValueError(f"{where}: expected a conversation of at least a prompt and a reference "
                         f"reply")
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "assistant" \
            or not isinstance(last.get("content"), str):
        raise ValueError(f"{where}: the last message must be the assistant's reference reply")
    return check_prompt(messages[:-1], where), last["content"]


def score_set(generator: Generator, examples: Sequence[Any],
              categories: Sequence[str | None] | None = None) -> SetScores:
    """Generate and score (see the module docstring). ``categories`` (one per example, None
    allowed, shown as ``"unknown"``) adds ROUGE-L per category."""
    if not examples:
        raise ValueError("score_set: no examples")
    if categories is not None and len(categories) != len(examples):
        raise ValueError(f"score_set: {len(categories)} categories for {len(examples)} examples")
    split = [split_example(e, f"example {i}") for i, e in enumerate(examples)]
    prompts = [p for p, _ in split]
    references = [r for _, r in split]
    generations = generator.generate(prompts)
    if len(generations) != len(prompts):
        raise RuntimeError(f"{generator.name}: {len(generations)} replies for {len(prompts)} "
                           f"prompts")
    predictions = [g.text for g in generations]
    rouge = load_metric("rouge")
    totals = rouge.compute(predictions=predictions, references=references,
                           rouge_types=["rouge1", "rouge2", "rougeL"])
    per_example = rouge.compute(predictions=predictions, references=references,
                                rouge_types=["rougeL"], use_aggregator=False)["rougeL"]
    bleu = load_metric("bleu").compute(predictions=predictions, references=references)["bleu"]
    exact = load_metric("exact_match").compute(predictions=predictions,
                                               references=references)["exact_match"]
    conversations = [[*p, {"role": "assistant", "content": r}] for p, r in split]
    perplexity = generator.perplexity(conversations)
    latencies = [g.latency_s for g in generations]
    cats = [c if c else "unknown" for c in categories] if categories is not None else None
    by_category: dict[str, dict[str, float]] = {}
    if cats is not None:
        groups: dict[str, list[float]] = defaultdict(list)
        for c, score in zip(cats, per_example, strict=True):
            groups[c].append(score)
        by_category = {c: {"n": len(v), "rougeL": sum(v) / len(v)} for c, v in sorted(groups.items())}
    details = [{"category": cats[i] if cats else None, "prediction": g.text,
                "reference": references[i], "rougeL": per_example[i],
                "new_tokens": g.new_tokens, "stopped": g.stopped, "latency_s": g.latency_s}
               for i, g in enumerate(generations)]
    return SetScores(n=len(examples), rougeL=totals["rougeL"], rouge1=totals["rouge1"],
                     rouge2=totals["rouge2"], bleu=bleu, exact_match=exact,
                     perplexity=perplexity, latency_mean_s=sum(latencies) / len(latencies),
                     latency_p95_s=_p95(latencies), by_category=by_category, details=details)


def _p95(values: Sequence[float]) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), 95))


def evaluate_model(generator: Generator, eval_examples: Sequence[Any],
                   retention_examples: Sequence[Any] | None,
                   must_refuse_prompts: Sequence[Any] | None, *,
                   eval_categories: Sequence[str | None] | None = None,
                   retention_categories: Sequence[str | None] | None = None,
                   system: str | None = None) -> ModelScores:
    """Eval set, retention set (skipped when empty or None) and refusal rate (skipped when
    None or empty; ``system`` is the system prompt sent with each must-refuse prompt)."""
    eval_scores = score_set(generator, eval_examples, eval_categories)
    retention = (score_set(generator, retention_examples, retention_categories)
                 if retention_examples else None)
    rate, details = (refusal_rate(generator, must_refuse_prompts, system)
                     if must_refuse_prompts else (None, []))
    return ModelScores(name=generator.name, eval=eval_scores, retention=retention,
                       refusal_rate=rate, refusal_details=details)


def _delta(candidate: float | None, champion: float | None) -> float | None:
    return None if candidate is None or champion is None else candidate - champion


def relative_change(candidate: float, champion: float) -> float | None:
    """``(candidate - champion) / champion``; with a champion of 0: 0.0 when both are 0, else
    None (undefined)."""
    if champion == 0:
        return 0.0 if candidate == 0 else None
    return (candidate - champion) / champion


def _side_by_side(candidate: SetScores | None, champion: SetScores | None) -> dict[str, Any] | None:
    if candidate is None or champion is None:
        return None
    return {m: {"candidate": getattr(candidate, m), "champion": getattr(champion, m),
                "delta": _delta(getattr(candidate, m), getattr(champion, m)),
                "higher_is_better": HIGHER_IS_BETTER[m]} for m in SET_METRICS}


def compare(candidate: ModelScores, champion: ModelScores,
            judge: JudgeResult | None = None) -> dict[str, Any]:
    """The candidate against the champion (see the module docstring); JSON-serialisable."""
    if champion is None:
        raise ValueError("compare needs the champion's scores (the base model's for the first "
                         "candidate)")
    retention_change = forgetting = None
    if candidate.retention is not None and champion.retention is not None:
        retention_change = relative_change(candidate.retention.rougeL, champion.retention.rougeL)
        forgetting = 0.0 if retention_change is None else max(0.0, -retention_change)
    return {
        "candidate": candidate.name, "champion": champion.name,
        "eval": _side_by_side(candidate.eval, champion.eval),
        "retention": _side_by_side(candidate.retention, champion.retention),
        "refusal_rate": {"candidate": candidate.refusal_rate, "champion": champion.refusal_rate,
                         "delta": _delta(candidate.refusal_rate, champion.refusal_rate),
                         "higher_is_better": True},
        "retention_change": retention_change,
        "forgetting": forgetting,
        "judge": judge.to_dict() if judge is not None else None,
    }


_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def _key(part: str) -> str:
    return _KEY.sub("_", part)


def flat_metrics(prefix: str, scores: SetScores | ModelScores | JudgeResult) -> dict[str, float]:
    """``{"<prefix>.<set>.<metric>": value}`` for MLflow (``None`` and non-finite values left
    out; per-category ROUGE-L as ``<prefix>.<set>.rougeL.category.<name>``; MLflow-safe
    characters only). ``prefix`` may be empty."""
    out: dict[str, float] = {}
    head = f"{_key(prefix)}." if prefix else ""

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if math.isfinite(value):
            out[head + name] = float(value)

    def put_set(name: str, s: SetScores) -> None:
        for m in ("n", *SET_METRICS):
            put(f"{name}.{m}", getattr(s, m))
        for cat, v in s.by_category.items():
            put(f"{name}.rougeL.category.{_key(cat)}", v["rougeL"])
            put(f"{name}.n.category.{_key(cat)}", v["n"])

    if isinstance(scores, SetScores):
        put_set("set", scores)
    elif isinstance(scores, ModelScores):
        put_set("eval", scores.eval)
        if scores.retention is not None:
            put_set("retention", scores.retention)
        put("refusal_rate", scores.refusal_rate)
    elif isinstance(scores, JudgeResult):
        for m in ("win_rate_b", "wins", "losses", "ties", "inconsistent", "n", "errors"):
            put(f"judge.{m}", getattr(scores, m))
    else:
        raise TypeError(f"flat_metrics: expected SetScores, ModelScores or JudgeResult, got "
                        f"{type(scores).__name__}")
    return out
