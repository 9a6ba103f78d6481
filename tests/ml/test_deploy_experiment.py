"""ml.deploy.experiment: the metrics of an arm, the policy's validation, and every rule of
decide() on constructed arm statistics."""

from __future__ import annotations

import json

import pytest

from ml.deploy.experiment import (
    ENV_VARS,
    METRICS,
    ArmStats,
    Decision,
    ExperimentPolicy,
    compare,
    compare_all,
    decide,
)


def arm(name: str, *, quality: float | None = None, sd: float = 0.2, n: int = 0,
        errors: int = 0, audited: int = 0, version: str | None = None, **kw) -> ArmStats:
    """An arm whose quality scores have mean ``quality`` and sample sd ``sd`` over ``n``."""
    q = {}
    if quality is not None:
        q = {"quality_sum": quality * n, "quality_sumsq": (n - 1) * sd * sd + n * quality ** 2,
             "quality_n": n}
    return ArmStats(arm=name, version=version or ("1" if name == "control" else "2"), n=n,
                    errors=errors, audited=audited, **q, **kw)


POLICY = ExperimentPolicy()  # stages 10% -> 50% -> 100%, primary quality_score


# -- arms and metrics ----------------------------------------------------------------------------


def test_arm_metrics_and_to_dict():
    a = ArmStats("treatment", "7", n=10, thumbs_up=3, thumbs_n=4, rating_sum=17.0,
                 rating_sumsq=61.0, rating_n=5, handoffs=1, handoff_n=8, errors=2, audited=5,
                 quality_sum=6.0, quality_sumsq=4.0, quality_n=10)
    assert a.metric("thumbs_up_rate") == {"value": 0.75, "n": 4}
    assert a.metric("mean_rating") == {"value": 3.4, "n": 5}
    assert a.metric("handoff_rate") == {"value": 0.125, "n": 8}
    assert a.metric("error_rate") == {"value": 0.2, "n": 10}  # errors per interaction
    assert ArmStats("control", "1", n=10).metric("error_rate") == {"value": None, "n": 0}
    assert a.metric("quality_score") == {"value": 0.6, "n": 10}
    assert ArmStats("control", "1").metric("quality_score") == {"value": None, "n": 0}
    d = a.to_dict()
    assert d["arm"] == "treatment" and d["version"] == "7" and d["thumbs_up"] == 3
    assert set(d["metrics"]) == set(METRICS)
    json.dumps(d, allow_nan=False)
    with pytest.raises(ValueError, match="unknown metric 'latency'"):
        a.metric("latency")


def test_arm_stats_refuse_impossible_counts():
    with pytest.raises(ValueError, match="thumbs_up .* exceeds thumbs_n"):
        ArmStats("control", "1", thumbs_up=3, thumbs_n=2)
    with pytest.raises(ValueError, match="audited must be a whole number"):
        ArmStats("control", "1", audited=-1)


def test_metric_specs():
    assert {k: (v.kind, v.higher_is_better) for k, v in METRICS.items()} == {
        "thumbs_up_rate": ("rate", True), "mean_rating": ("mean", True),
        "handoff_rate": ("rate", False), "error_rate": ("rate", False),
        "quality_score": ("mean", True)}


def test_compare_picks_the_test_per_kind_and_compare_all_needs_two_per_arm():
    c = ArmStats("control", "1", thumbs_up=40, thumbs_n=100, rating_sum=4.0, rating_sumsq=16.0,
                 rating_n=1)
    t = ArmStats("treatment", "2", thumbs_up=60, thumbs_n=100, rating_sum=9.0,
                 rating_sumsq=41.0, rating_n=2)
    r = compare("thumbs_up_rate", c, t)
    assert r.test == "z" and r.diff == pytest.approx(0.2) and r.metric == "thumbs_up_rate"
    assert compare("mean_rating", c, t).test == "welch"
    assert set(compare_all(c, t)) == {"thumbs_up_rate"}  # rating has 1 in control


# -- the policy ----------------------------------------------------------------------------------


def test_policy_round_trips_through_a_dict_and_json():
    p = ExperimentPolicy(stages=[0.05, 0.25, 0.5], primary_metric="thumbs_up_rate",
                         subject_key="session")
    assert p.stages == (0.05, 0.25, 0.5)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["stages"] == [0.05, 0.25, 0.5]
    assert ExperimentPolicy.from_dict(d) == p
    assert ExperimentPolicy.from_dict({}) == ExperimentPolicy()
    with pytest.raises(ValueError, match=r"unknown experiment policy keys \['colour', 'size'\]"):
        ExperimentPolicy.from_dict({"alpha": 0.1, "colour": "red", "size": 2})


@pytest.mark.parametrize("kw,name", [
    ({"stages": ()}, "stages"), ({"stages": (0.5, 0.1)}, "stages"),
    ({"stages": (0.1, 0.1)}, "stages"), ({"stages": (0.0, 0.5)}, "stages"),
    ({"stages": (0.5, 1.5)}, "stages"), ({"stages": "0.1,0.5"}, "stages"),
    ({"primary_metric": "latency"}, "primary_metric"), ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.0}, "alpha"), ({"max_error_rate": 1.2}, "max_error_rate"),
    ({"max_relative_drop": -0.1}, "max_relative_drop"),
    ({"max_error_rate_increase": 1.0}, "max_error_rate_increase"),
    ({"early_stop_alpha": 0.1}, "early_stop_alpha"),
    ({"min_samples_per_arm": 1}, "min_samples_per_arm"),
    ({"min_samples_per_arm": 20.5}, "min_samples_per_arm"),
    ({"min_stage_samples": 0}, "min_stage_samples"),
    ({"early_stop_min_samples": 500}, "early_stop_min_samples"),
    ({"max_samples_per_arm": 100}, "max_samples_per_arm"),
    ({"min_audited": True}, "min_audited"), ({"subject_key": "device"}, "subject_key"),
    ({"alpha": float("nan")}, "alpha"),
])
def test_policy_validation_names_the_field(kw, name):
    with pytest.raises(ValueError, match=f"experiment policy {name}:"):
        ExperimentPolicy(**kw)


def test_policy_with_overrides():
    p = POLICY.with_overrides(alpha=0.01, min_samples_per_arm=None, stages=[0.2, 1.0])
    assert p.alpha == 0.01 and p.min_samples_per_arm == 200 and p.stages == (0.2, 1.0)
    assert POLICY.alpha == 0.05  # frozen: a copy
    with pytest.raises(ValueError, match=r"unknown experiment policy keys \['beta'\]"):
        POLICY.with_overrides(beta=0.2)
    with pytest.raises(ValueError, match="alpha"):
        POLICY.with_overrides(alpha=2.0)


def test_policy_from_env():
    env = {"LEARNLOOP_AB_STAGES": "0.05, 0.2,1", "LEARNLOOP_AB_PRIMARY_METRIC": "mean_rating",
           "LEARNLOOP_AB_ALPHA": "0.01", "LEARNLOOP_AB_MIN_SAMPLES": "500",
           "LEARNLOOP_AB_MIN_STAGE_SAMPLES": "80", "LEARNLOOP_AB_MAX_RELATIVE_DROP": "0.02",
           "LEARNLOOP_AB_MAX_ERROR_RATE": "0.2", "LEARNLOOP_AB_MAX_SAMPLES": "9000",
           "LEARNLOOP_AB_SUBJECT": "session", "LEARNLOOP_AB_EARLY_STOP_ALPHA": "",
           "UNRELATED": "x"}
    p = ExperimentPolicy.from_env(env)
    assert p == ExperimentPolicy(stages=(0.05, 0.2, 1.0), primary_metric="mean_rating",
                                 alpha=0.01, min_samples_per_arm=500, min_stage_samples=80,
                                 max_relative_drop=0.02, max_error_rate=0.2,
                                 max_samples_per_arm=9000, subject_key="session")
    assert ExperimentPolicy.from_env({}) == ExperimentPolicy()
    assert set(ENV_VARS) >= {"LEARNLOOP_AB_STAGES", "LEARNLOOP_AB_PRIMARY_METRIC",
                             "LEARNLOOP_AB_ALPHA", "LEARNLOOP_AB_MIN_SAMPLES",
                             "LEARNLOOP_AB_MIN_STAGE_SAMPLES", "LEARNLOOP_AB_MAX_RELATIVE_DROP",
                             "LEARNLOOP_AB_MAX_ERROR_RATE", "LEARNLOOP_AB_MAX_SAMPLES",
                             "LEARNLOOP_AB_SUBJECT"}


def test_policy_from_os_environ(monkeypatch):
    monkeypatch.setenv("LEARNLOOP_AB_MIN_STAGE_SAMPLES", "7")
    assert ExperimentPolicy.from_env().min_stage_samples == 7


@pytest.mark.parametrize("var,raw", [
    ("LEARNLOOP_AB_STAGES", "0.1,half"), ("LEARNLOOP_AB_STAGES", "0.5,0.1"),
    ("LEARNLOOP_AB_PRIMARY_METRIC", "latency"), ("LEARNLOOP_AB_ALPHA", "five"),
    ("LEARNLOOP_AB_ALPHA", "1.5"), ("LEARNLOOP_AB_MIN_SAMPLES", "20.5"),
    ("LEARNLOOP_AB_MIN_SAMPLES", "1"), ("LEARNLOOP_AB_MIN_STAGE_SAMPLES", "-1"),
    ("LEARNLOOP_AB_MAX_RELATIVE_DROP", "2"), ("LEARNLOOP_AB_MAX_ERROR_RATE", "0"),
    ("LEARNLOOP_AB_MAX_SAMPLES", "10"), ("LEARNLOOP_AB_SUBJECT", "device"),
])
def test_policy_from_env_names_the_bad_variable(var, raw):
    with pytest.raises(ValueError, match=var):
        ExperimentPolicy.from_env({var: raw})


# -- the rules -----------------------------------------------------------------------------------


def test_planted_regression_rolls_back():
    d = decide(arm("control", quality=0.655, n=400), arm("treatment", quality=0.612, n=300),
               POLICY, stage=0, stage_treatment_n=300)
    assert isinstance(d, Decision) and d.action == "rollback"
    assert d.figures["rule"] == "primary_regression"
    assert d.reason.startswith("treatment quality_score 0.612 vs control 0.655 (-6.6%, "
                               "n=300/400, p=")
    assert d.reason.endswith("< 0.05): worse by more than 5%: rollback")
    assert d.figures["primary_test"]["p_value"] < 0.05


def test_a_significant_drop_within_the_tolerance_is_not_a_rollback():
    # -3% is significant with this many samples, but within the 5% tolerance
    c, t = arm("control", quality=0.70, n=5000), arm("treatment", quality=0.679, n=5000)
    assert compare("quality_score", c, t).p_value < 0.001
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=500)
    assert (d.action, d.figures["rule"]) == ("continue", "stage_worse")
    assert "significantly worse" in d.reason
    d = decide(c, t, POLICY, stage=1, stage_treatment_n=500)
    assert (d.action, d.figures["rule"]) == ("continue", "awaiting_significance")


def test_planted_improvement_at_the_50_percent_stage_promotes():
    c, t = arm("control", quality=0.60, n=600), arm("treatment", quality=0.66, n=500)
    d = decide(c, t, POLICY, stage=1, stage_treatment_n=400)
    assert (d.action, d.figures["rule"]) == ("promote", "primary_improvement")
    assert "significantly better: promote" in d.reason and "+10.0%" in d.reason
    assert d.figures["share"] == 0.5 and d.figures["next_share"] == 1.0
    assert d.figures["final_stage"] is True


def test_the_deciding_stage_needs_traffic_of_its_own_before_it_promotes():
    """Right after advancing to 50%, the improvement measured at 10% is not enough: the stage's
    own minimum comes first."""
    c, t = arm("control", quality=0.60, n=600), arm("treatment", quality=0.66, n=500)
    d = decide(c, t, POLICY, stage=1, stage_treatment_n=POLICY.min_stage_samples - 1)
    assert (d.action, d.figures["rule"]) == ("continue", "stage_samples")
    assert "needed before deciding" in d.reason
    assert decide(c, t, POLICY, stage=1,
                  stage_treatment_n=POLICY.min_stage_samples).action == "promote"


def test_improvement_at_the_first_stage_advances_rather_than_promotes():
    c, t = arm("control", quality=0.60, n=600), arm("treatment", quality=0.66, n=500)
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=400)
    assert (d.action, d.figures["rule"]) == ("advance", "advance_stage")
    assert d.reason.endswith("advance to 50%")


def test_too_few_samples_continue_at_the_deciding_stage_but_a_canary_stage_advances():
    c, t = arm("control", quality=0.6, n=900), arm("treatment", quality=0.58, n=120)
    d = decide(c, t, POLICY, stage=1, stage_treatment_n=120)
    assert (d.action, d.figures["rule"]) == ("continue", "min_samples")
    assert "120 treatment and 900 control" in d.reason and "200 per arm" in d.reason
    # at 10% the stage's own minimum is enough to go on to 50% (not significantly worse)
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=120)
    assert (d.action, d.figures["rule"]) == ("advance", "advance_stage")
    empty = decide(ArmStats("control", "1"), ArmStats("treatment", "2"), POLICY, stage=0,
                   stage_treatment_n=0)
    assert empty.action == "continue" and empty.figures["tests"] == {}


def test_stage_zero_not_worse_advances_and_needs_stage_samples():
    c, t = arm("control", quality=0.65, n=800), arm("treatment", quality=0.648, n=260)
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=60)
    assert (d.action, d.figures["rule"]) == ("advance", "advance_stage")
    assert "60 treatment interactions at 10%" in d.reason
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=49)
    assert (d.action, d.figures["rule"]) == ("continue", "stage_samples")
    assert "49 treatment interactions at the 10% stage, 50 needed" in d.reason


def test_guardrail_error_rate_ceiling_rolls_back_even_with_a_better_primary():
    c = arm("control", quality=0.60, n=600, errors=5, audited=50)
    t = arm("treatment", quality=0.70, n=300, errors=100, audited=120)  # 33.3% > 30%
    d = decide(c, t, POLICY, stage=1, stage_treatment_n=300)
    assert (d.action, d.figures["rule"]) == ("rollback", "guardrail_error_rate")
    assert ("33.3% (100 auditor errors in 300 interactions, 120 audited) is above the ceiling "
            "30%") in d.reason
    # below min_audited the ceiling does not apply yet
    t = arm("treatment", quality=0.70, n=300, errors=29, audited=29)
    assert decide(c, t, POLICY, stage=1, stage_treatment_n=300).action == "promote"


def test_guardrail_error_rate_increase_rolls_back():
    c = arm("control", quality=0.6, n=600, errors=30, audited=600)  # 5%
    t = arm("treatment", quality=0.6, n=600, errors=80, audited=600)  # 13.3%
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=300)
    assert (d.action, d.figures["rule"]) == ("rollback", "guardrail_error_increase")
    assert "13.3% vs control 5.0% (+8.3 points" in d.reason
    assert "more than 5 points higher: guardrail: rollback" in d.reason
    # significant but within the allowed increase: no guardrail
    t = arm("treatment", quality=0.6, n=600, errors=55, audited=600)  # +4.2 points
    assert compare("error_rate", c, t).p_value < 0.05
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=300)
    assert d.figures["rule"] == "advance_stage"


def test_early_stop_for_a_clear_loser():
    c, t = arm("control", quality=0.70, n=60, sd=0.1), arm("treatment", quality=0.55, n=40,
                                                           sd=0.1)
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=40)
    assert (d.action, d.figures["rule"]) == ("rollback", "early_stop")
    assert "early stop" in d.reason and "before 200 per arm" in d.reason
    # not yet early_stop_min_samples in the treatment: continue
    t = arm("treatment", quality=0.55, n=29, sd=0.1)
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=29)
    assert (d.action, d.figures["rule"]) == ("continue", "stage_worse")


def test_early_stop_needs_the_strict_alpha():
    c, t = arm("control", quality=0.70, n=60), arm("treatment", quality=0.60, n=40)
    r = compare("quality_score", c, t)
    assert 0.001 < r.p_value < 0.05  # significant, but not clear enough to stop early
    # significantly worse at the canary stage: it stays there (no advance), no rollback yet
    assert decide(c, t, POLICY, stage=0, stage_treatment_n=40).figures["rule"] == "stage_worse"
    assert decide(c, t, POLICY, stage=1, stage_treatment_n=40).figures["rule"] == "min_samples"


def test_inconclusive_at_max_samples_stops():
    policy = POLICY.with_overrides(max_samples_per_arm=1000)
    c, t = arm("control", quality=0.65, n=1000), arm("treatment", quality=0.652, n=1200)
    d = decide(c, t, policy, stage=1, stage_treatment_n=600)
    assert (d.action, d.figures["rule"]) == ("stop", "max_samples")
    assert "inconclusive, the champion stays: stop" in d.reason
    t = arm("treatment", quality=0.652, n=999)
    assert decide(c, t, policy, stage=1, stage_treatment_n=600).figures["rule"] == \
        "awaiting_significance"


def test_lower_is_better_metric_is_oriented():
    policy = POLICY.with_overrides(primary_metric="handoff_rate")
    c = ArmStats("control", "1", n=1000, handoffs=100, handoff_n=1000)
    worse = ArmStats("treatment", "2", n=1000, handoffs=150, handoff_n=1000)
    d = decide(c, worse, policy, stage=1, stage_treatment_n=500)
    assert (d.action, d.figures["rule"]) == ("rollback", "primary_regression")
    assert "+50.0%" in d.reason
    better = ArmStats("treatment", "2", n=1000, handoffs=60, handoff_n=1000)
    d = decide(c, better, policy, stage=1, stage_treatment_n=500)
    assert (d.action, d.figures["rule"]) == ("promote", "primary_improvement")


def test_from_zero_to_worse_is_beyond_any_tolerance():
    policy = POLICY.with_overrides(primary_metric="handoff_rate")
    c = ArmStats("control", "1", n=300, handoffs=0, handoff_n=300)
    t = ArmStats("treatment", "2", n=300, handoffs=30, handoff_n=300)
    d = decide(c, t, policy, stage=0, stage_treatment_n=300)
    assert (d.action, d.figures["rule"]) == ("rollback", "primary_regression")


def test_stages_without_a_full_share_and_a_single_stage():
    policy = POLICY.with_overrides(stages=(0.1, 0.3, 0.6))
    c, t = arm("control", quality=0.60, n=600), arm("treatment", quality=0.66, n=500)
    assert decide(c, t, policy, stage=1, stage_treatment_n=300).action == "advance"
    assert decide(c, t, policy, stage=2, stage_treatment_n=300).action == "promote"
    single = POLICY.with_overrides(stages=(0.5,))
    assert decide(c, t, single, stage=0, stage_treatment_n=300).action == "promote"


def test_figures_hold_everything_and_are_json():
    c = ArmStats("control", "1", n=500, thumbs_up=100, thumbs_n=150, rating_sum=800.0,
                 rating_sumsq=3000.0, rating_n=220, handoffs=20, handoff_n=400, errors=10,
                 audited=100, quality_sum=320.0, quality_sumsq=220.0, quality_n=500)
    t = ArmStats("treatment", "2", n=300, thumbs_up=1, thumbs_n=1, handoffs=5, handoff_n=250,
                 quality_sum=190.0, quality_sumsq=130.0, quality_n=300)
    d = decide(c, t, POLICY, stage=0, stage_treatment_n=300)
    f = json.loads(json.dumps(d.to_dict(), allow_nan=False))["figures"]
    assert f["policy"] == POLICY.to_dict()
    assert (f["stage"], f["share"], f["next_share"], f["stage_treatment_n"]) == (0, 0.1, 0.5, 300)
    assert f["control"]["quality_n"] == 500 and f["treatment"]["version"] == "2"
    assert set(f["tests"]) == {"handoff_rate", "quality_score"}  # thumbs n=1, no rating/audits
    assert f["tests"]["handoff_rate"]["test"] == "z"
    assert f["rule"] == d.figures["rule"] and f["action"] == d.action


def test_decide_refuses_a_bad_stage():
    c, t = ArmStats("control", "1"), ArmStats("treatment", "2")
    with pytest.raises(ValueError, match="stage must be an index"):
        decide(c, t, POLICY, stage=3, stage_treatment_n=0)
    with pytest.raises(ValueError, match="stage_treatment_n"):
        decide(c, t, POLICY, stage=0, stage_treatment_n=-1)
    with pytest.raises(ValueError, match="Decision.action"):
        Decision("wait", "", {})
