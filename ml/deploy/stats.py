"""The statistics of A/B experiments: two-sided tests of treatment against control, with the
estimate of the difference and its confidence interval, and the sample size an experiment needs.

* Rates (thumbs-up rate, handoff rate, error rate): :func:`two_proportion_ztest`, the pooled
  two-proportion z-test (the pooled standard error is the one under the null hypothesis of equal
  rates); the confidence interval of the difference uses the unpooled (Wald) standard error.
  ``z**2`` equals Pearson's chi-square statistic of the 2x2 table without continuity correction.
* Means (rating, quality score): :func:`welch_ttest`, Welch's unequal-variance t-test (scipy's
  ``ttest_ind_from_stats(equal_var=False)``), with the Welch-Satterthwaite degrees of freedom for
  the confidence interval; :func:`welch_from_sums` takes running sums (sum, sum of squares, n),
  which is what the warehouse query returns.
* :func:`sample_size_proportions` and :func:`sample_size_means`: per-arm sample sizes for a
  two-sided test at ``alpha`` with the given ``power`` (normal approximation).

Every result is a :class:`TestResult`: ``diff`` is always treatment minus control, whatever is
better for the metric; the caller orients it (``ml.deploy.experiment``). Degenerate inputs (an
empty arm, no spread at all) give ``p_value`` 1.0 and ``stat`` 0.0: "no evidence of a
difference", never an exception and never a NaN (figures are stored as JSON).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as _st

TESTS = ("z", "welch")


@dataclass(frozen=True)
class TestResult:
    """One two-sided test of treatment against control.

    ``control``/``treatment`` are the two estimates (rates or means; None for an empty arm),
    ``diff`` = treatment - control (None when an arm is empty), ``rel_diff`` = diff / |control|
    (None when control is 0 or missing), ``stat`` the z or t statistic (positive when the
    treatment is higher), ``p_value`` two-sided, ``ci_low``/``ci_high`` the ``1 - alpha``
    confidence interval of ``diff`` (None when an arm is empty or too small)."""

    __test__ = False  # not a pytest test class despite the name

    test: str
    metric: str
    control: float | None
    treatment: float | None
    diff: float | None
    rel_diff: float | None
    stat: float
    p_value: float
    ci_low: float | None
    ci_high: float | None
    n_control: int
    n_treatment: int
    alpha: float = 0.05
    df: float | None = None  # Welch-Satterthwaite degrees of freedom (t-test only)
    degenerate: str | None = None  # why the test could not run (p_value 1.0), else None

    def significant(self, alpha: float | None = None) -> bool:
        """``p_value < alpha`` (default: the alpha the test was run at)."""
        return self.p_value < (self.alpha if alpha is None else alpha)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- checks --------------------------------------------------------------------------------------


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _alpha(alpha: Any, name: str = "alpha") -> float:
    a = _finite(alpha, name)
    if not 0.0 < a < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")
    return a


def _rel(diff: float | None, control: float | None) -> float | None:
    if diff is None or control is None or control == 0:
        return None
    return diff / abs(control)


def _p_two_sided_normal(z: float) -> float:
    return float(2.0 * _st.norm.sf(abs(z)))


# -- rates ---------------------------------------------------------------------------------------


def two_proportion_ztest(x_control: int, n_control: int, x_treatment: int, n_treatment: int, *,
                         alpha: float = 0.05, metric: str = "") -> TestResult:
    """Two-sided pooled two-proportion z-test of ``x_treatment/n_treatment`` against
    ``x_control/n_control``.

    ``stat = (p_t - p_c) / sqrt(p (1 - p) (1/n_c + 1/n_t))`` with the pooled rate
    ``p = (x_c + x_t) / (n_c + n_t)``; ``p_value = 2 * (1 - Phi(|z|))``. The ``1 - alpha``
    interval of the difference is ``diff +- z_{1-alpha/2} * sqrt(p_c q_c / n_c + p_t q_t / n_t)``
    (unpooled: the interval is not computed under the null hypothesis).

    Degenerate cases return ``p_value`` 1.0 and ``stat`` 0.0 (no evidence of a difference):
    an empty arm (``n == 0``: its estimate, ``diff`` and the interval are None), and a pooled
    rate of 0 or 1 (both arms all-failures or all-successes: the difference is 0, the interval
    [0, 0]). ``degenerate`` says which. Negative counts, fractional counts and ``x > n`` raise
    ValueError naming the argument.
    """
    xc, nc = _count(x_control, "x_control"), _count(n_control, "n_control")
    xt, nt = _count(x_treatment, "x_treatment"), _count(n_treatment, "n_treatment")
    if xc > nc:
        raise ValueError(f"x_control ({xc}) must be <= n_control ({nc})")
    if xt > nt:
        raise ValueError(f"x_treatment ({xt}) must be <= n_treatment ({nt})")
    a = _alpha(alpha)
    pc = xc / nc if nc else None
    pt = xt / nt if nt else None
    base = {"test": "z", "metric": metric, "control": pc, "treatment": pt, "n_control": nc,
            "n_treatment": nt, "alpha": a}
    if pc is None or pt is None:
        empty = "n_control" if pc is None else "n_treatment"
        return TestResult(**base, diff=None, rel_diff=None, stat=0.0, p_value=1.0, ci_low=None,
                          ci_high=None, degenerate=f"{empty} is 0")
    diff = pt - pc
    pooled = (xc + xt) / (nc + nt)
    zcrit = float(_st.norm.ppf(1.0 - a / 2.0))
    se_ci = math.sqrt(pc * (1 - pc) / nc + pt * (1 - pt) / nt)
    ci = (diff - zcrit * se_ci, diff + zcrit * se_ci)
    if pooled in (0.0, 1.0):
        return TestResult(**base, diff=diff, rel_diff=_rel(diff, pc), stat=0.0, p_value=1.0,
                          ci_low=ci[0], ci_high=ci[1],
                          degenerate=f"pooled rate is {pooled:g}: no variation in either arm")
    se = math.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / nt))
    z = diff / se
    return TestResult(**base, diff=diff, rel_diff=_rel(diff, pc), stat=z,
                      p_value=_p_two_sided_normal(z), ci_low=ci[0], ci_high=ci[1])


# -- means ---------------------------------------------------------------------------------------


def welch_df(var_c: float, n_c: int, var_t: float, n_t: int) -> float | None:
    """The Welch-Satterthwaite degrees of freedom (None when undefined: an arm below 2 or no
    spread in either arm)."""
    if n_c < 2 or n_t < 2:
        return None
    vc, vt = var_c / n_c, var_t / n_t
    den = vc * vc / (n_c - 1) + vt * vt / (n_t - 1)
    if den == 0:
        return None
    return (vc + vt) ** 2 / den


def welch_ttest(mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int, *,
                alpha: float = 0.05, metric: str = "") -> TestResult:
    """Two-sided Welch t-test of the treatment's mean against the control's, from each arm's
    mean, sample variance (ddof=1) and size, via ``scipy.stats.ttest_ind_from_stats(...,
    equal_var=False)``; the ``1 - alpha`` interval of the difference is
    ``diff +- t_{1-alpha/2, df} * sqrt(var_c/n_c + var_t/n_t)`` with the Welch-Satterthwaite
    ``df``.

    Degenerate cases return ``p_value`` 1.0 and ``stat`` 0.0: an empty arm (its mean, ``diff``
    and the interval are None), an arm with fewer than 2 values (no variance: the interval is
    None), and no spread in either arm (both variances 0: the interval is [diff, diff]; the test
    does not call a difference between two constants significant). Negative sizes or variances
    and non-finite numbers raise ValueError naming the argument.
    """
    nc, nt = _count(n_c, "n_c"), _count(n_t, "n_t")
    a = _alpha(alpha)
    mc = _finite(mean_c, "mean_c") if nc else None
    mt = _finite(mean_t, "mean_t") if nt else None
    vc, vt = _finite(var_c, "var_c"), _finite(var_t, "var_t")
    if vc < 0:
        raise ValueError(f"var_c must be >= 0, got {var_c!r}")
    if vt < 0:
        raise ValueError(f"var_t must be >= 0, got {var_t!r}")
    base = {"test": "welch", "metric": metric, "control": mc, "treatment": mt, "n_control": nc,
            "n_treatment": nt, "alpha": a}
    if mc is None or mt is None:
        empty = "n_c" if mc is None else "n_t"
        return TestResult(**base, diff=None, rel_diff=None, stat=0.0, p_value=1.0, ci_low=None,
                          ci_high=None, degenerate=f"{empty} is 0")
    diff = mt - mc
    rel = _rel(diff, mc)
    if nc < 2 or nt < 2:
        small = "n_c" if nc < 2 else "n_t"
        return TestResult(**base, diff=diff, rel_diff=rel, stat=0.0, p_value=1.0, ci_low=None,
                          ci_high=None, degenerate=f"{small} is below 2: no variance")
    df = welch_df(vc, nc, vt, nt)
    if df is None:
        return TestResult(**base, diff=diff, rel_diff=rel, stat=0.0, p_value=1.0, ci_low=diff,
                          ci_high=diff, degenerate="no spread in either arm (both variances 0)")
    res = _st.ttest_ind_from_stats(mt, math.sqrt(vt), nt, mc, math.sqrt(vc), nc, equal_var=False)
    se = math.sqrt(vc / nc + vt / nt)
    half = float(_st.t.ppf(1.0 - a / 2.0, df)) * se
    return TestResult(**base, diff=diff, rel_diff=rel, stat=float(res.statistic),
                      p_value=float(res.pvalue), ci_low=diff - half, ci_high=diff + half, df=df)


def mean_var_from_sums(total: float, sumsq: float, n: int) -> tuple[float | None, float]:
    """(mean, sample variance with ddof=1) from a running sum, sum of squares and count. The mean
    is None when ``n`` is 0, the variance 0.0 when ``n`` < 2; a tiny negative variance from
    floating-point cancellation is clipped to 0."""
    n = _count(n, "n")
    total, sumsq = _finite(total, "sum"), _finite(sumsq, "sumsq")
    if n == 0:
        return None, 0.0
    mean = total / n
    if n < 2:
        return mean, 0.0
    var = (sumsq - total * total / n) / (n - 1)
    scale = max(abs(sumsq), 1.0)
    if var < 0:
        if var < -1e-9 * scale:
            raise ValueError(f"sumsq ({sumsq!r}) is inconsistent with sum ({total!r}) and n ({n}):"
                             f" the variance would be {var!r}")
        var = 0.0
    return mean, var


def welch_from_sums(sum_c: float, sumsq_c: float, n_c: int, sum_t: float, sumsq_t: float,
                    n_t: int, *, alpha: float = 0.05, metric: str = "") -> TestResult:
    """:func:`welch_ttest` from each arm's running sum, sum of squares and count (see
    :func:`mean_var_from_sums`)."""
    mc, vc = mean_var_from_sums(sum_c, sumsq_c, n_c)
    mt, vt = mean_var_from_sums(sum_t, sumsq_t, n_t)
    return welch_ttest(0.0 if mc is None else mc, vc, n_c, 0.0 if mt is None else mt, vt, n_t,
                       alpha=alpha, metric=metric)


# -- sample sizes --------------------------------------------------------------------------------


def _z_alpha_beta(alpha: float, power: float) -> tuple[float, float]:
    a = _alpha(alpha)
    p = _finite(power, "power")
    if not 0.0 < p < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    return float(_st.norm.ppf(1.0 - a / 2.0)), float(_st.norm.ppf(p))


def sample_size_proportions(p_control: float, rel_mde: float, *, alpha: float = 0.05,
                            power: float = 0.8) -> int:
    """Per-arm sample size for the two-sided pooled z-test to detect a change of the rate
    ``p_control`` to ``p_control * (1 + rel_mde)`` (``rel_mde`` may be negative) at ``alpha``
    with ``power``:

    ``n = (z_{1-alpha/2} sqrt(2 pbar qbar) + z_{power} sqrt(p1 q1 + p2 q2))**2 / (p2 - p1)**2``,
    ``pbar = (p1 + p2) / 2`` (the classic formula without continuity correction), rounded up.
    """
    p1 = _finite(p_control, "p_control")
    if not 0.0 < p1 < 1.0:
        raise ValueError(f"p_control must be in (0, 1), got {p_control!r}")
    r = _finite(rel_mde, "rel_mde")
    p2 = p1 * (1.0 + r)
    if r == 0 or not 0.0 < p2 < 1.0:
        raise ValueError(f"rel_mde must be non-zero and keep the treatment rate "
                         f"p_control * (1 + rel_mde) in (0, 1), got {rel_mde!r} "
                         f"(treatment rate {p2:g})")
    za, zb = _z_alpha_beta(alpha, power)
    pbar = (p1 + p2) / 2.0
    num = za * math.sqrt(2.0 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(num * num / (p2 - p1) ** 2)


def sample_size_means(sd: float, abs_mde: float, *, alpha: float = 0.05,
                      power: float = 0.8) -> int:
    """Per-arm sample size to detect a difference of means ``abs_mde`` with a common standard
    deviation ``sd`` (two-sided, normal approximation):
    ``n = 2 (z_{1-alpha/2} + z_{power})**2 sd**2 / abs_mde**2``, rounded up."""
    s = _finite(sd, "sd")
    if s <= 0:
        raise ValueError(f"sd must be > 0, got {sd!r}")
    d = _finite(abs_mde, "abs_mde")
    if d == 0:
        raise ValueError("abs_mde must be non-zero")
    za, zb = _z_alpha_beta(alpha, power)
    return math.ceil(2.0 * (za + zb) ** 2 * s * s / (d * d))


__all__ = ["TESTS", "TestResult", "mean_var_from_sums", "sample_size_means",
           "sample_size_proportions", "two_proportion_ztest", "welch_df", "welch_from_sums",
           "welch_ttest"]
