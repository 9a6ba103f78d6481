"""ml.deploy.stats against scipy, direct computation and published values."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from scipy import stats as st

from ml.deploy.stats import (
    TestResult,
    mean_var_from_sums,
    sample_size_means,
    sample_size_proportions,
    two_proportion_ztest,
    welch_df,
    welch_from_sums,
    welch_ttest,
)

# -- two-proportion z-test -----------------------------------------------------------------------


def test_ztest_matches_a_published_example():
    # homeworksource.com/p/1008622: x1=140/200 vs x2=255/340, pooled p = 0.7314815,
    # SE = 0.03949401, z = -1.266015 (sample 1 minus sample 2); its p (one-tailed 0.1030278)
    # comes from a t distribution with 538 df, ours from the normal: 2 * (1 - Phi(1.266015))
    r = two_proportion_ztest(140, 200, 255, 340, metric="thumbs_up_rate")
    assert r.test == "z" and r.metric == "thumbs_up_rate"
    assert r.control == pytest.approx(0.70) and r.treatment == pytest.approx(0.75)
    assert r.diff == pytest.approx(0.05) and r.rel_diff == pytest.approx(0.05 / 0.70)
    assert r.stat == pytest.approx(1.266015, abs=1e-6)
    assert r.p_value == pytest.approx(0.2055077, abs=1e-6)
    assert 2 * st.t.sf(1.266015, 538) == pytest.approx(2 * 0.1030278, abs=1e-6)
    assert (r.n_control, r.n_treatment) == (200, 340)


def test_ztest_matches_a_direct_computation_and_the_chi_square_of_the_table():
    xc, nc, xt, nt = 412, 1000, 371, 980
    r = two_proportion_ztest(xc, nc, xt, nt)
    pc, pt = xc / nc, xt / nt
    p = (xc + xt) / (nc + nt)
    z = (pt - pc) / math.sqrt(p * (1 - p) * (1 / nc + 1 / nt))
    assert r.stat == pytest.approx(z, rel=1e-12)
    assert r.p_value == pytest.approx(2 * st.norm.sf(abs(z)), rel=1e-12)
    # z**2 is Pearson's chi-square of the 2x2 table without continuity correction
    chi2, p_chi, dof, _ = st.chi2_contingency([[xc, nc - xc], [xt, nt - xt]], correction=False)
    assert dof == 1 and r.stat ** 2 == pytest.approx(chi2, rel=1e-10)
    assert r.p_value == pytest.approx(p_chi, rel=1e-10)
    # the interval is the unpooled (Wald) one
    half = 1.959963984540054 * math.sqrt(pc * (1 - pc) / nc + pt * (1 - pt) / nt)
    assert r.ci_low == pytest.approx(pt - pc - half) and r.ci_high == pytest.approx(pt - pc + half)
    assert r.stat < 0 and r.ci_low < r.diff < r.ci_high
    assert r.significant() is (r.p_value < 0.05)


def test_ztest_alpha_widens_the_interval():
    r95 = two_proportion_ztest(50, 100, 60, 100)
    r99 = two_proportion_ztest(50, 100, 60, 100, alpha=0.01)
    assert r99.p_value == r95.p_value
    assert r99.ci_low < r95.ci_low and r99.ci_high > r95.ci_high
    assert r99.alpha == 0.01


@pytest.mark.skipif(importlib.util.find_spec("statsmodels") is None,
                    reason="statsmodels is not installed (not a dependency)")
def test_ztest_matches_statsmodels():
    from statsmodels.stats.proportion import proportions_ztest

    z, p = proportions_ztest([371, 412], [980, 1000])
    r = two_proportion_ztest(412, 1000, 371, 980)
    assert r.stat == pytest.approx(z) and r.p_value == pytest.approx(p)


def test_ztest_degenerate_cases_give_no_evidence():
    empty = two_proportion_ztest(0, 0, 3, 10)
    assert (empty.p_value, empty.stat) == (1.0, 0.0)
    assert empty.control is None and empty.diff is None and empty.ci_low is None
    assert empty.treatment == pytest.approx(0.3) and "n_control" in empty.degenerate
    zeros = two_proportion_ztest(0, 50, 0, 40)
    assert (zeros.p_value, zeros.stat, zeros.diff) == (1.0, 0.0, 0.0)
    assert (zeros.ci_low, zeros.ci_high) == (0.0, 0.0) and zeros.rel_diff is None
    ones = two_proportion_ztest(50, 50, 40, 40)
    assert (ones.p_value, ones.stat) == (1.0, 0.0) and "pooled rate is 1" in ones.degenerate
    assert two_proportion_ztest(5, 10, 6, 10).degenerate is None
    json.dumps(empty.to_dict(), allow_nan=False)  # figures are JSON: no NaN anywhere


@pytest.mark.parametrize("args,name", [
    ((-1, 10, 1, 10), "x_control"), ((1, -10, 1, 10), "n_control"),
    ((1, 10, -1, 10), "x_treatment"), ((1, 10, 1, -2), "n_treatment"),
    ((11, 10, 1, 10), "x_control"), ((1, 10, 12, 10), "x_treatment"),
    ((1.5, 10, 1, 10), "x_control"),
])
def test_ztest_bad_counts_name_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        two_proportion_ztest(*args)


def test_ztest_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        two_proportion_ztest(1, 10, 2, 10, alpha=1.5)


# -- Welch t-test --------------------------------------------------------------------------------


def _arrays():
    rng = np.random.default_rng(12)
    control = rng.normal(0.65, 0.12, 230)
    treatment = rng.normal(0.62, 0.20, 170)
    return control, treatment


def test_welch_matches_scipy_on_raw_arrays():
    c, t = _arrays()
    ref = st.ttest_ind(t, c, equal_var=False)
    r = welch_ttest(c.mean(), c.var(ddof=1), len(c), t.mean(), t.var(ddof=1), len(t),
                    metric="quality_score")
    assert r.test == "welch" and r.metric == "quality_score"
    assert r.stat == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert r.ci_low == pytest.approx(ci.low, rel=1e-9)
    assert r.ci_high == pytest.approx(ci.high, rel=1e-9)
    assert r.diff == pytest.approx(t.mean() - c.mean())
    assert r.rel_diff == pytest.approx((t.mean() - c.mean()) / c.mean())


def test_welch_from_sums_matches_scipy_and_a_small_textbook_case():
    c, t = _arrays()
    ref = st.ttest_ind(t, c, equal_var=False)
    r = welch_from_sums(c.sum(), (c * c).sum(), len(c), t.sum(), (t * t).sum(), len(t),
                        alpha=0.1)
    assert r.stat == pytest.approx(ref.statistic, rel=1e-8)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.90)
    assert (r.ci_low, r.ci_high) == (pytest.approx(ci.low, rel=1e-8),
                                     pytest.approx(ci.high, rel=1e-8))
    # small integer ratings: exact t and df by hand
    a = [3, 4, 5, 4, 3]  # mean 3.8, var 0.7
    b = [5, 4, 5, 5, 4, 5]  # mean 4.6667, var 0.26667
    r = welch_from_sums(sum(a), sum(x * x for x in a), 5, sum(b), sum(x * x for x in b), 6)
    se = math.sqrt(0.7 / 5 + (4 / 15) / 6)
    assert r.stat == pytest.approx((14 / 3 - 3.8) / se, rel=1e-9)
    assert r.df == pytest.approx(welch_df(0.7, 5, 4 / 15, 6), rel=1e-12)
    ref = st.ttest_ind(b, a, equal_var=False)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_mean_var_from_sums():
    assert mean_var_from_sums(0.0, 0.0, 0) == (None, 0.0)
    assert mean_var_from_sums(4.0, 16.0, 1) == (4.0, 0.0)
    total, sumsq = sum([0.65] * 3), sum([0.65 * 0.65] * 3)
    assert sumsq - total * total / 3 < 0  # cancellation to a tiny negative
    m, v = mean_var_from_sums(total, sumsq, 3)
    assert m == pytest.approx(0.65) and v == 0.0
    with pytest.raises(ValueError, match="inconsistent"):
        mean_var_from_sums(10.0, 1.0, 5)


def test_welch_degenerate_cases_give_no_evidence():
    empty = welch_from_sums(0.0, 0.0, 0, 3.0, 5.0, 2)
    assert (empty.p_value, empty.stat, empty.diff, empty.control) == (1.0, 0.0, None, None)
    one = welch_ttest(0.5, 0.0, 1, 0.7, 0.01, 30)
    assert (one.p_value, one.stat) == (1.0, 0.0) and one.diff == pytest.approx(0.2)
    assert one.ci_low is None and "below 2" in one.degenerate
    flat = welch_ttest(4.0, 0.0, 10, 5.0, 0.0, 10)
    assert (flat.p_value, flat.stat, flat.ci_low, flat.ci_high) == (1.0, 0.0, 1.0, 1.0)
    assert flat.degenerate.startswith("no spread")
    # one arm without spread is a normal test
    assert welch_ttest(4.0, 0.0, 10, 5.0, 0.5, 10).p_value < 0.01
    zero_control = welch_ttest(0.0, 0.1, 10, 0.5, 0.1, 10)
    assert zero_control.rel_diff is None and zero_control.diff == 0.5
    for r in (empty, one, flat):
        json.dumps(r.to_dict(), allow_nan=False)


@pytest.mark.parametrize("kw,name", [
    ({"var_c": -0.1}, "var_c"), ({"var_t": -1}, "var_t"), ({"n_c": -3}, "n_c"),
    ({"n_t": 2.5}, "n_t"), ({"mean_t": float("nan")}, "mean_t"), ({"alpha": 0}, "alpha"),
])
def test_welch_bad_inputs_name_the_argument(kw, name):
    args = {"mean_c": 1.0, "var_c": 1.0, "n_c": 10, "mean_t": 1.2, "var_t": 1.0, "n_t": 10}
    alpha = kw.pop("alpha", 0.05)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        welch_ttest(**args, alpha=alpha)


def test_result_to_dict_round_trips():
    r = two_proportion_ztest(30, 100, 45, 100, metric="handoff_rate")
    d = r.to_dict()
    assert set(d) >= {"test", "metric", "control", "treatment", "diff", "rel_diff", "stat",
                      "p_value", "ci_low", "ci_high", "n_control", "n_treatment"}
    assert TestResult(**d) == r
    assert json.loads(json.dumps(d)) == d


# -- sample sizes --------------------------------------------------------------------------------


def test_sample_size_proportions_closed_form():
    # 10% -> 12%: ((1.959964 sqrt(2 * .11 * .89) + 0.841621 sqrt(.09 + .1056))**2 / .02**2
    za, zb = st.norm.ppf(0.975), st.norm.ppf(0.8)
    expected = (za * math.sqrt(2 * 0.11 * 0.89) + zb * math.sqrt(0.09 + 0.1056)) ** 2 / 0.0004
    assert sample_size_proportions(0.10, 0.20) == math.ceil(expected) == 3841
    # a smaller effect, more power, a lower alpha: each needs more
    assert sample_size_proportions(0.10, 0.10) > 3841
    assert sample_size_proportions(0.10, 0.20, power=0.9) > 3841
    assert sample_size_proportions(0.10, 0.20, alpha=0.01) > 3841
    assert sample_size_proportions(0.50, -0.2) == sample_size_proportions(0.40, 0.25)


def test_sample_size_proportions_has_the_planned_power():
    # the planned n gives (about) the planned power under the alternative, by the normal model
    n = sample_size_proportions(0.30, 0.15, alpha=0.05, power=0.8)
    p1, p2 = 0.30, 0.345
    pbar = (p1 + p2) / 2
    se0 = math.sqrt(2 * pbar * (1 - pbar) / n)
    se1 = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    power = st.norm.sf((st.norm.ppf(0.975) * se0 - (p2 - p1)) / se1)
    assert 0.8 <= power < 0.801


def test_sample_size_means_textbook():
    # a difference of half a standard deviation needs 63 per group (normal approximation:
    # 2 * (1.96 + 0.8416)**2 / 0.25 = 62.8)
    assert sample_size_means(1.0, 0.5) == 63
    assert sample_size_means(2.0, 1.0) == 63
    assert sample_size_means(0.2, 0.02, power=0.9) == math.ceil(
        2 * (st.norm.ppf(0.975) + st.norm.ppf(0.9)) ** 2 * 100)


@pytest.mark.parametrize("call,name", [
    (lambda: sample_size_proportions(0.0, 0.1), "p_control"),
    (lambda: sample_size_proportions(0.9, 0.2), "rel_mde"),
    (lambda: sample_size_proportions(0.5, 0.0), "rel_mde"),
    (lambda: sample_size_proportions(0.5, 0.1, power=1.0), "power"),
    (lambda: sample_size_means(0.0, 0.1), "sd"),
    (lambda: sample_size_means(1.0, 0.0), "abs_mde"),
    (lambda: sample_size_means(1.0, 0.1, alpha=-0.1), "alpha"),
])
def test_sample_size_bad_inputs(call, name):
    with pytest.raises(ValueError, match=name):
        call()
