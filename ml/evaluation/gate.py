"""The quality gate: does a candidate beat the champion enough to be promoted?

Three checks, all required (:func:`apply_gate`):

1. ``eval_margin``: eval ``primary_metric`` (candidate - champion) >= ``min_margin`` (absolute).
2. ``retention_drop``: relative drop of the retention ``primary_metric``,
   ``(champion - candidate) / champion``, <= ``max_retention_drop`` (a gain is a negative drop;
   a champion score of 0 cannot drop: drop 0).
3. ``refusal_rate``: candidate refusal rate >= champion's - ``max_refusal_regression``.

Each check reports ``value`` (the measured difference), ``threshold`` and ``by``: the slack,
positive when it passes with room, negative when it fails (by how much it missed). A missing
score (no retention set or no refusal rate on either side) fails its check with a message saying
so: the gate is fail-closed.

There is always a champion to compare with: for the first candidate it is the base model the
candidate was fine-tuned from, scored on the same suite. ``champion=None`` is an error, never a
free pass. Floating-point noise below 1e-9 does not fail a check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ml.evaluation.compare import ModelScores

PRIMARY_METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "exact_match")
EPS = 1e-9


@dataclass(frozen=True)
class GateThresholds:
    """Thresholds of the gate (defaults = ``ml.config.Settings.gate_*``)."""

    min_margin: float = 0.01
    max_retention_drop: float = 0.02
    max_refusal_regression: float = 0.0
    primary_metric: str = "rougeL"

    def __post_init__(self) -> None:
        for name in ("min_margin", "max_retention_drop", "max_refusal_regression"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"GateThresholds.{name} must be in [0, 1], got {value!r}")
        if self.primary_metric not in PRIMARY_METRICS:
            raise ValueError(f"GateThresholds.primary_metric must be one of {PRIMARY_METRICS}, "
                             f"got {self.primary_metric!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> GateThresholds:
        """From ``ml.config.Settings`` (``gate_min_margin``, ``gate_max_retention_drop``,
        ``gate_max_refusal_regression``)."""
        return cls(min_margin=settings.gate_min_margin,
                   max_retention_drop=settings.gate_max_retention_drop,
                   max_refusal_regression=settings.gate_max_refusal_regression)


@dataclass
class GateResult:
    passed: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(scores: ModelScores | Mapping[str, Any] | None, who: str) -> dict[str, Any]:
    if scores is None:
        raise ValueError(f"the gate needs the {who}'s scores; for the first candidate the "
                         f"champion is the base model, scored on the same suite")
    if isinstance(scores, ModelScores):
        return scores.to_dict()
    if isinstance(scores, Mapping) and isinstance(scores.get("eval"), Mapping):
        return dict(scores)
    raise TypeError(f"{who} scores must be ModelScores or its to_dict(), got "
                    f"{type(scores).__name__}")


def _metric(d: Mapping[str, Any], split: str, metric: str) -> float | None:
    part = d.get(split)
    value = part.get(metric) if isinstance(part, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _check(name: str, value: float | None, threshold: float, by: float | None,
           message: str) -> dict[str, Any]:
    passed = by is not None and by >= -EPS
    return {"name": name, "passed": passed, "value": value, "threshold": threshold, "by": by,
            "message": message}


def _missing(name: str, threshold: float, what: str) -> dict[str, Any]:
    return _check(name, None, threshold, None, f"{name}: cannot be checked: {what}")


def apply_gate(candidate: ModelScores | Mapping[str, Any],
               champion: ModelScores | Mapping[str, Any] | None,
               thresholds: GateThresholds | None = None) -> GateResult:
    """Run the three checks (module docstring); ``passed`` only when all pass."""
    t = thresholds or GateThresholds()
    cand, champ = _scores(candidate, "candidate"), _scores(champion, "champion")
    m = t.primary_metric
    checks = []

    c, p = _metric(cand, "eval", m), _metric(champ, "eval", m)
    if c is None or p is None:
        checks.append(_missing("eval_margin", t.min_margin,
                               f"eval {m} missing for the {'candidate' if c is None else 'champion'}"))
    else:
        delta = c - p
        by = delta - t.min_margin
        verdict = (f"meets the required margin {t.min_margin:+.3f} (by {by:.3f})" if by >= -EPS
                   else f"is below the required margin {t.min_margin:+.3f} (short by {-by:.3f})")
        checks.append(_check("eval_margin", delta, t.min_margin, by,
                             f"eval {m} {c:.3f} vs champion {p:.3f}: {delta:+.3f} {verdict}"))

    c, p = _metric(cand, "retention", m), _metric(champ, "retention", m)
    if c is None or p is None:
        checks.append(_missing("retention_drop", t.max_retention_drop,
                               f"retention {m} missing for the "
                               f"{'candidate' if c is None else 'champion'}"))
    else:
        drop = 0.0 if p == 0 else (p - c) / p
        by = t.max_retention_drop - drop
        verdict = (f"within the allowed {t.max_retention_drop:.1%}" if by >= -EPS
                   else f"exceeds the allowed {t.max_retention_drop:.1%} (over by {-by:.1%})")
        checks.append(_check("retention_drop", drop, t.max_retention_drop, by,
                             f"retention {m} {c:.3f} vs champion {p:.3f}: relative drop "
                             f"{drop:.1%} {verdict}"))

    c = cand.get("refusal_rate")
    p = champ.get("refusal_rate")
    if not isinstance(c, int | float) or not isinstance(p, int | float):
        checks.append(_missing("refusal_rate", -t.max_refusal_regression,
                               f"refusal rate missing for the "
                               f"{'candidate' if not isinstance(c, int | float) else 'champion'}"))
    else:
        change = c - p
        threshold = -t.max_refusal_regression
        by = change - threshold
        verdict = (f"within the allowed regression {t.max_refusal_regression:.1%}" if by >= -EPS
                   else f"regresses beyond the allowed {t.max_refusal_regression:.1%} "
                        f"(short by {-by:.1%})")
        checks.append(_check("refusal_rate", change, threshold, by,
                             f"refusal rate {c:.1%} vs champion {p:.1%}: {change:+.1%} {verdict}"))

    failed = [ch for ch in checks if not ch["passed"]]
    passed = not failed
    if passed:
        summary = f"gate passed: {len(checks)}/{len(checks)} checks (" + "; ".join(
            ch["message"] for ch in checks) + ")"
    else:
        summary = (f"gate failed: {len(failed)} of {len(checks)} checks failed: "
                   + "; ".join(ch["message"] for ch in failed))
    return GateResult(passed=passed, checks=checks, summary=summary)
