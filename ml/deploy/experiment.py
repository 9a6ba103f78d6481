"""The decision policy of an A/B experiment: the challenger (treatment) against the champion
(control), on staged traffic (the treatment's share rises stage by stage, e.g. 10% -> 50% ->
promotion).

* :data:`METRICS`: what is measured per arm and which direction is better.
* :class:`ArmStats`: one arm's raw counts and sums (``ml.deploy.arm_metrics`` reads them from
  the warehouse); every metric is derived from them.
* :class:`ExperimentPolicy`: the thresholds, validated, from a dict (the experiment's stored
  policy) or from ``LEARNLOOP_AB_*`` environment variables.
* :func:`decide`: one look at an experiment -> a :class:`Decision` (``continue``, ``advance``,
  ``promote``, ``rollback`` or ``stop``) with a one-sentence reason carrying the numbers and
  every figure it rested on. The rules, in order:

  a. guardrail: the treatment's auditor error rate (errors per interaction, once ``min_audited``
     of its interactions are audited) above ``max_error_rate``, or significantly higher than the control's (z-test,
     p < alpha; the control audited at least ``min_audited`` too) by more than
     ``max_error_rate_increase`` (absolute) -> rollback;
  b. primary metric regression: with ``min_samples_per_arm`` in both arms, the treatment worse
     by more than ``max_relative_drop`` (relative) and significantly (p < alpha) -> rollback;
     before that, an early stop for a clear loser: ``early_stop_min_samples`` in both arms,
     p < ``early_stop_alpha`` and worse by more than ``max_relative_drop`` -> rollback;
  c. at the deciding stage (below), either arm below ``min_samples_per_arm`` on the primary
     metric -> continue;
  d. a stage whose next share is below 100% (a canary stage): ``min_stage_samples`` treatment
     interactions in this stage and the treatment not significantly worse -> advance, else
     continue (the guardrails and the early stop above still roll back a clear loser; the full
     minimum sample is for the deciding stage, where the treatment has the traffic to reach it);
  e. the last stage below 100% (or the last stage): fewer than ``min_stage_samples``
     treatment interactions in this stage -> continue; the treatment significantly better ->
     promote; else both arms at ``max_samples_per_arm`` -> stop (inconclusive, the champion
     stays); else continue.

"Worse" and "better" follow the metric's ``higher_is_better``. All tests are two-sided.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ml.deploy.stats import TestResult, two_proportion_ztest, welch_from_sums


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # "rate" | "mean"
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricSpec] = {
    "thumbs_up_rate": MetricSpec("rate", True, "thumbs up / thumbs given (up or down)"),
    "mean_rating": MetricSpec("mean", True, "mean user rating, 1-5, over the rated interactions"),
    "handoff_rate": MetricSpec("rate", False, "requested a human / interactions with the "
                                              "requested_human signal"),
    # per interaction served, not per audited one: the audit selects interactions with bad
    # signals (errors / audited is high for every model); the selection is the same for both
    # arms, so errors per interaction compare them without that bias
    "error_rate": MetricSpec("rate", False, "auditor errors (the latest verdict per "
                                            "interaction) / interactions of the arm"),
    "quality_score": MetricSpec("mean", True, "mean interaction_quality.quality_score over the "
                                              "scored interactions"),
}

# metric -> the ArmStats fields it is computed from: (successes, n) for rates,
# (sum, sum of squares, n) for means
_SOURCES: dict[str, tuple[str, ...]] = {
    "thumbs_up_rate": ("thumbs_up", "thumbs_n"),
    "mean_rating": ("rating_sum", "rating_sumsq", "rating_n"),
    "handoff_rate": ("handoffs", "handoff_n"),
    "error_rate": ("errors", "n"),
    "quality_score": ("quality_sum", "quality_sumsq", "quality_n"),
}

ACTIONS = ("continue", "advance", "promote", "rollback", "stop")
SUBJECT_KEYS = ("user", "session")


def _metric_spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]


# -- per-arm statistics --------------------------------------------------------------------------


@dataclass
class ArmStats:
    """One arm's raw figures: ``n`` interactions in the arm; per metric its successes or sums
    and the number of interactions that carry it (``thumbs_n`` gave a thumbs up or down,
    ``rating_n`` a rating, ``handoff_n`` the requested_human signal, ``audited`` an auditor
    verdict, ``quality_n`` a quality score)."""

    arm: str
    version: str
    n: int = 0
    thumbs_up: int = 0
    thumbs_n: int = 0
    rating_sum: float = 0.0
    rating_sumsq: float = 0.0
    rating_n: int = 0
    handoffs: int = 0
    handoff_n: int = 0
    errors: int = 0
    audited: int = 0
    quality_sum: float = 0.0
    quality_sumsq: float = 0.0
    quality_n: int = 0

    def __post_init__(self) -> None:
        for name in ("n", "thumbs_up", "thumbs_n", "rating_n", "handoffs", "handoff_n", "errors",
                     "audited", "quality_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ArmStats({self.arm}).{name} must be a whole number >= 0, "
                                 f"got {value!r}")
        for part, whole in (("thumbs_up", "thumbs_n"), ("handoffs", "handoff_n"),
                            ("errors", "audited"), ("audited", "n")):
            if getattr(self, part) > getattr(self, whole):
                raise ValueError(f"ArmStats({self.arm}).{part} ({getattr(self, part)}) exceeds "
                                 f"{whole} ({getattr(self, whole)})")

    def metric(self, name: str) -> dict[str, Any]:
        """``{"value": rate or mean (None without data), "n": interactions it rests on}``."""
        spec = _metric_spec(name)
        src = _SOURCES[name]
        n = int(getattr(self, src[-1]))
        if n == 0 or (name == "error_rate" and self.audited == 0):  # no audit ran: no data
            return {"value": None, "n": 0}
        num = getattr(self, src[0])
        return {"value": (num / n) if spec.kind == "rate" else float(num) / n, "n": n}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = {name: self.metric(name) for name in METRICS}
        return out


def compare(metric: str, control: ArmStats, treatment: ArmStats, *,
            alpha: float = 0.05) -> TestResult:
    """The two-sided test of ``metric``, treatment against control: the pooled z-test for a
    rate, Welch's t-test (from the running sums) for a mean."""
    spec = _metric_spec(metric)
    src = _SOURCES[metric]
    c = [getattr(control, f) for f in src]
    t = [getattr(treatment, f) for f in src]
    if spec.kind == "rate":
        return two_proportion_ztest(c[0], c[1], t[0], t[1], alpha=alpha, metric=metric)
    return welch_from_sums(c[0], c[1], c[2], t[0], t[1], t[2], alpha=alpha, metric=metric)


def compare_all(control: ArmStats, treatment: ArmStats, *,
                alpha: float = 0.05) -> dict[str, TestResult]:
    """One test per metric that has data in both arms (n >= 2 in each)."""
    out = {}
    for name in METRICS:
        if control.metric(name)["n"] >= 2 and treatment.metric(name)["n"] >= 2:
            out[name] = compare(name, control, treatment, alpha=alpha)
    return out


# -- the policy ----------------------------------------------------------------------------------


class PolicyError(ValueError):
    """A bad policy value; ``field`` names the policy field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"experiment policy {field_name}: {message}")
        self.field = field_name


# environment variable -> policy field
ENV_VARS: dict[str, str] = {
    "LEARNLOOP_AB_STAGES": "stages",
    "LEARNLOOP_AB_PRIMARY_METRIC": "primary_metric",
    "LEARNLOOP_AB_ALPHA": "alpha",
    "LEARNLOOP_AB_MIN_SAMPLES": "min_samples_per_arm",
    "LEARNLOOP_AB_MIN_STAGE_SAMPLES": "min_stage_samples",
    "LEARNLOOP_AB_MAX_RELATIVE_DROP": "max_relative_drop",
    "LEARNLOOP_AB_MAX_ERROR_RATE": "max_error_rate",
    "LEARNLOOP_AB_MAX_ERROR_RATE_INCREASE": "max_error_rate_increase",
    "LEARNLOOP_AB_MIN_AUDITED": "min_audited",
    "LEARNLOOP_AB_EARLY_STOP_ALPHA": "early_stop_alpha",
    "LEARNLOOP_AB_EARLY_STOP_MIN_SAMPLES": "early_stop_min_samples",
    "LEARNLOOP_AB_MAX_SAMPLES": "max_samples_per_arm",
    "LEARNLOOP_AB_SUBJECT": "subject_key",
}

_INT_FIELDS = ("min_samples_per_arm", "min_stage_samples", "min_audited",
               "early_stop_min_samples", "max_samples_per_arm")
_FLOAT_FIELDS = ("alpha", "max_relative_drop", "max_error_rate", "max_error_rate_increase",
                 "early_stop_alpha")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(name, f"must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExperimentPolicy:
    """The thresholds :func:`decide` applies (see the module docstring for the rules)."""

    stages: tuple[float, ...] = (0.1, 0.5, 1.0)
    primary_metric: str = "quality_score"
    alpha: float = 0.05
    min_samples_per_arm: int = 200
    min_stage_samples: int = 50
    max_relative_drop: float = 0.05
    max_error_rate: float = 0.30
    max_error_rate_increase: float = 0.05
    min_audited: int = 30
    early_stop_alpha: float = 0.001
    early_stop_min_samples: int = 30
    max_samples_per_arm: int = 20000
    subject_key: str = "user"

    def __post_init__(self) -> None:
        stages = self.stages
        if isinstance(stages, str | bytes) or not hasattr(stages, "__iter__"):
            raise PolicyError("stages", f"must be a sequence of shares, got {stages!r}")
        shares = tuple(_number("stages", s) for s in stages)
        if not shares:
            raise PolicyError("stages", "needs at least one stage")
        if any(not 0.0 < s <= 1.0 for s in shares):
            raise PolicyError("stages", f"every share must be in (0, 1], got {list(shares)}")
        if any(b <= a for a, b in zip(shares, shares[1:], strict=False)):
            raise PolicyError("stages", f"shares must increase, got {list(shares)}")
        object.__setattr__(self, "stages", shares)
        if self.primary_metric not in METRICS:
            raise PolicyError("primary_metric", f"unknown metric {self.primary_metric!r}; "
                                                f"known: {sorted(METRICS)}")
        for name in _FLOAT_FIELDS:
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        for name in ("alpha", "early_stop_alpha", "max_error_rate"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise PolicyError(name, f"must be in (0, 1), got {getattr(self, name)!r}")
        for name in ("max_relative_drop", "max_error_rate_increase"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise PolicyError(name, f"must be in [0, 1), got {getattr(self, name)!r}")
        if self.early_stop_alpha > self.alpha:
            raise PolicyError("early_stop_alpha", f"({self.early_stop_alpha}) must not exceed "
                                                  f"alpha ({self.alpha})")
        minimum = {"min_samples_per_arm": 2, "min_stage_samples": 1, "min_audited": 2,
                   "early_stop_min_samples": 2, "max_samples_per_arm": 2}
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PolicyError(name, f"must be a whole number, got {value!r}")
            if value < minimum[name]:
                raise PolicyError(name, f"must be >= {minimum[name]}, got {value}")
        if self.early_stop_min_samples > self.min_samples_per_arm:
            raise PolicyError("early_stop_min_samples",
                              f"({self.early_stop_min_samples}) must not exceed "
                              f"min_samples_per_arm ({self.min_samples_per_arm})")
        if self.max_samples_per_arm < self.min_samples_per_arm:
            raise PolicyError("max_samples_per_arm",
                              f"({self.max_samples_per_arm}) must be >= min_samples_per_arm "
                              f"({self.min_samples_per_arm})")
        if self.subject_key not in SUBJECT_KEYS:
            raise PolicyError("subject_key", f"must be one of {list(SUBJECT_KEYS)}, got "
                                             f"{self.subject_key!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stages"] = list(self.stages)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentPolicy:
        """A policy from :meth:`to_dict`'s output (missing keys take their defaults); unknown
        keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown experiment policy keys {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if "stages" in kw and isinstance(kw["stages"], list):
            kw["stages"] = tuple(kw["stages"])
        return cls(**kw)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ExperimentPolicy:
        """The defaults overridden by the ``LEARNLOOP_AB_*`` variables set (and not empty) in
        ``environ`` (default ``os.environ``): see :data:`ENV_VARS`. ``LEARNLOOP_AB_STAGES`` is a
        comma-separated list of shares ("0.1,0.5,1"). A bad value raises ValueError naming the
        variable."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        source: dict[str, str] = {}
        for var, name in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            raw = raw.strip()
            source[name] = var
            try:
                if name == "stages":
                    kw[name] = tuple(float(p) for p in raw.split(","))
                elif name in _INT_FIELDS:
                    kw[name] = int(raw)
                elif name in _FLOAT_FIELDS:
                    kw[name] = float(raw)
                else:
                    kw[name] = raw
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r} is not a valid {name}: {exc}") from exc
        try:
            return cls(**kw)
        except PolicyError as exc:
            var = source.get(exc.field)
            if var is None:  # a default clashes with a value set for another field
                var = ", ".join(sorted(source.values()))
            raise ValueError(f"{var}: {exc}") from exc

    def with_overrides(self, **kw: Any) -> ExperimentPolicy:
        """A copy with the given fields replaced (None values are skipped, so optional run
        config can be passed straight through); unknown names raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ValueError(f"unknown experiment policy keys {unknown}; known: {sorted(known)}")
        changes = {k: (tuple(v) if k == "stages" else v) for k, v in kw.items() if v is not None}
        return replace(self, **changes)


# -- the decision --------------------------------------------------------------------------------


@dataclass
class Decision:
    action: str  # continue | advance | promote | rollback | stop
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Decision.action must be one of {list(ACTIONS)}, got "
                             f"{self.action!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "figures": self.figures}


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v: float) -> str:
    return f"{v:.0%}" if round(v * 100, 6) == round(v * 100) else f"{v:.1%}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _versus(r: TestResult, label: str | None = None) -> str:
    """'treatment quality_score 0.612 vs control 0.655 (-6.6%, n=240/260, p=0.003)'."""
    rel = "" if r.rel_diff is None else f"{r.rel_diff:+.1%}, "
    return (f"treatment {label or r.metric} {_num(r.treatment)} vs control {_num(r.control)} "
            f"({rel}n={r.n_treatment}/{r.n_control}, p={_p(r.p_value)}")


def _gain(r: TestResult, spec: MetricSpec) -> float:
    """The treatment's difference oriented so that positive is better."""
    d = r.diff or 0.0
    return d if spec.higher_is_better else -d


def _relative_loss(r: TestResult, spec: MetricSpec) -> float | None:
    """How much worse the treatment is, relative to the control (positive = worse); None when
    the control is 0 (no relative change)."""
    if r.rel_diff is None:
        return None
    return -r.rel_diff if spec.higher_is_better else r.rel_diff


def _worse_beyond(r: TestResult, spec: MetricSpec, tolerance: float) -> bool:
    if r.diff is None or _gain(r, spec) >= 0:
        return False
    loss = _relative_loss(r, spec)
    return True if loss is None else loss > tolerance  # from 0 to worse: beyond any tolerance


def decide(control: ArmStats, treatment: ArmStats, policy: ExperimentPolicy, *, stage: int,
           stage_treatment_n: int) -> Decision:
    """One look at an experiment at ``stage`` (an index into ``policy.stages``), with the arms'
    figures so far and ``stage_treatment_n`` treatment interactions since the stage began. See
    the module docstring for the rules; ``figures["rule"]`` names the one that decided."""
    stages = policy.stages
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(stages):
        raise ValueError(f"stage must be an index into the policy's stages {list(stages)}, got "
                         f"{stage!r}")
    if isinstance(stage_treatment_n, bool) or not isinstance(stage_treatment_n, int) \
            or stage_treatment_n < 0:
        raise ValueError(f"stage_treatment_n must be a whole number >= 0, got "
                         f"{stage_treatment_n!r}")
    share = stages[stage]
    next_share = stages[stage + 1] if stage + 1 < len(stages) else None
    final = next_share is None or next_share >= 1.0
    pm = policy.primary_metric
    spec = METRICS[pm]
    alpha = policy.alpha
    tests = compare_all(control, treatment, alpha=alpha)
    figures: dict[str, Any] = {
        "policy": policy.to_dict(), "stage": stage, "share": share, "next_share": next_share,
        "final_stage": final, "stage_treatment_n": stage_treatment_n, "primary_metric": pm,
        "control": control.to_dict(), "treatment": treatment.to_dict(),
        "tests": {name: r.to_dict() for name, r in tests.items()},
    }

    def out(action: str, rule: str, reason: str) -> Decision:
        figures["rule"] = rule
        figures["action"] = action
        return Decision(action, reason, figures)

    # a. guardrail on the auditor's error rate
    if treatment.audited >= policy.min_audited:
        rate = treatment.errors / treatment.n
        if rate > policy.max_error_rate:
            return out("rollback", "guardrail_error_rate",
                       f"treatment error rate {rate:.1%} ({treatment.errors} auditor errors in "
                       f"{treatment.n} interactions, {treatment.audited} audited) is above the "
                       f"ceiling {_pct(policy.max_error_rate)}: guardrail: rollback")
        if control.audited >= policy.min_audited:
            r = compare("error_rate", control, treatment, alpha=alpha)
            figures["guardrail_test"] = r.to_dict()
            if r.diff is not None and r.diff > policy.max_error_rate_increase \
                    and r.p_value < alpha:
                return out("rollback", "guardrail_error_increase",
                           f"treatment error rate {r.treatment:.1%} vs control "
                           f"{r.control:.1%} (+{r.diff * 100:.1f} points, "
                           f"n={r.n_treatment}/{r.n_control}, p={_p(r.p_value)} < {alpha:g}): "
                           f"more than {policy.max_error_rate_increase * 100:g} points higher: "
                           f"guardrail: rollback")

    # b. the primary metric: a significant regression, or an early stop for a clear loser
    r = compare(pm, control, treatment, alpha=alpha)
    figures["primary_test"] = r.to_dict()
    n_c, n_t = r.n_control, r.n_treatment
    worse = _worse_beyond(r, spec, policy.max_relative_drop)
    sig_worse = r.diff is not None and r.p_value < alpha and _gain(r, spec) < 0
    sig_better = r.diff is not None and r.p_value < alpha and _gain(r, spec) > 0
    enough = min(n_c, n_t) >= policy.min_samples_per_arm
    drop = _pct(policy.max_relative_drop)
    if enough and worse and sig_worse:
        return out("rollback", "primary_regression",
                   f"{_versus(r)} < {alpha:g}): worse by more than {drop}: rollback")
    if not enough and min(n_c, n_t) >= policy.early_stop_min_samples and worse \
            and r.p_value < policy.early_stop_alpha:
        return out("rollback", "early_stop",
                   f"{_versus(r)} < {policy.early_stop_alpha:g}): worse by more than {drop} "
                   f"before {policy.min_samples_per_arm} per arm: early stop: rollback")

    # c. too few to decide (the deciding stage; an earlier stage advances on its own minimum)
    if not enough and final:
        return out("continue", "min_samples",
                   f"{pm} has {n_t} treatment and {n_c} control samples; "
                   f"{policy.min_samples_per_arm} per arm are needed before deciding: continue")

    # d. an intermediate stage
    if not final:
        if sig_worse:
            return out("continue", "stage_worse",
                       f"{_versus(r)} < {alpha:g}): significantly worse, not yet a rollback: "
                       f"stay at {_pct(share)}: continue")
        if stage_treatment_n < policy.min_stage_samples:
            return out("continue", "stage_samples",
                       f"{stage_treatment_n} treatment interactions at the {_pct(share)} stage, "
                       f"{policy.min_stage_samples} needed to advance: continue")
        return out("advance", "advance_stage",
                   f"{_versus(r)}): not significantly worse after {stage_treatment_n} treatment "
                   f"interactions at {_pct(share)}: advance to {_pct(next_share)}")

    # e. the deciding stage: its own traffic first (what the earlier stages saw is not enough
    # to promote on: the deciding stage is where the treatment serves its largest share yet)
    if stage_treatment_n < policy.min_stage_samples:
        return out("continue", "stage_samples",
                   f"{stage_treatment_n} treatment interactions at the {_pct(share)} stage, "
                   f"{policy.min_stage_samples} needed before deciding: continue")
    if sig_better:
        return out("promote", "primary_improvement",
                   f"{_versus(r)} < {alpha:g}): significantly better: promote")
    if min(n_c, n_t) >= policy.max_samples_per_arm:
        return out("stop", "max_samples",
                   f"{_versus(r)}): no significant improvement with {policy.max_samples_per_arm} "
                   f"samples per arm: inconclusive, the champion stays: stop")
    return out("continue", "awaiting_significance",
               f"{_versus(r)}): not significantly better yet (alpha {alpha:g}; stop at "
               f"{policy.max_samples_per_arm} per arm): continue")


__all__ = ["ACTIONS", "ENV_VARS", "METRICS", "ArmStats", "Decision", "ExperimentPolicy",
           "MetricSpec", "PolicyError", "compare", "compare_all", "decide"]
