"""Label weights of the reviewer-label design (ml.audit.labels) and the weighted estimate of recall
and Cohen's kappa the auditor_agreement mart computes from them."""

from __future__ import annotations

import polars as pl
import pytest

from ml.audit.labels import label_weight, with_label_columns
from ml.audit.metrics import cohen_kappa


def test_label_weight_is_the_inverse_probability_of_a_review_item():
    assert label_weight(True, True, False, 0.2) == 1.0  # a flag always gets an item
    assert label_weight(True, True, True, 0.2) == 1.0
    assert label_weight(False, True, True, 0.2) == pytest.approx(5.0)  # 1 / 0.2
    assert label_weight(False, True, True, 1.0) == 1.0
    assert label_weight(False, True, False, 0.2) is None  # clean, not put to review
    assert label_weight(True, False, False, 0.2) is None  # outside the calibration sample
    assert label_weight(False, False, True, 0.2) is None
    assert label_weight(False, True, True, 0.0) is None  # clean review off: no weight at all
    with pytest.raises(ValueError):
        label_weight(False, True, True, 1.5)


def test_with_label_columns_sets_both_columns_per_verdict():
    verdicts = pl.DataFrame({"interaction_id": ["f1", "f2", "c1", "c2", "o1", "o2"],
                             "tenant_id": ["t"] * 5 + ["u"],
                             "is_error": [True, True, False, False, True, False],
                             "explanation": ["x"] * 6})
    out = with_label_columns(verdicts, {("t", "f1"), ("t", "f2"), ("t", "c1"), ("t", "c2"),
                                        ("t", "o2")}, {("t", "c1")}, 0.25)
    assert out.columns == ["interaction_id", "tenant_id", "is_error", "explanation",
                           "in_calibration", "label_weight"]
    # o2 is tenant u's: tenant t's key for the same id does not put it in the sample
    assert out["in_calibration"].to_list() == [True, True, True, True, False, False]
    assert out["label_weight"].to_list() == [1.0, 1.0, 4.0, None, None, None]
    assert out.schema["label_weight"] == pl.Float64
    empty = with_label_columns(verdicts.head(0), set(), set(), 0.2)
    assert empty.height == 0 and empty.schema["in_calibration"] == pl.Boolean


def _weighted(rows):
    """(predicted, actual, weight) -> weighted TP, FP, FN, TN."""
    tp = sum(w for p, a, w in rows if p and a)
    fp = sum(w for p, a, w in rows if p and not a)
    fn = sum(w for p, a, w in rows if not p and a)
    tn = sum(w for p, a, w in rows if not p and not a)
    return tp, fp, fn, tn


def test_weighting_changes_recall_visibly():
    # calibration sample, clean_review_rate 0.2: 2 flags confirmed (tp), 1 clean verdict put to
    # review and confirmed (fn). Unweighted recall 2/3; the one reviewed miss stands for 1/0.2 = 5
    # misses -> weighted FN 5 -> recall 2 / (2 + 5) = 2/7.
    rate = 0.2
    rows = [(True, True, label_weight(True, True, False, rate)),
            (True, True, label_weight(True, True, False, rate)),
            (False, True, label_weight(False, True, True, rate))]
    tp, fp, fn, tn = _weighted(rows)
    assert (tp, fp, fn, tn) == (2.0, 0, pytest.approx(5.0), 0)
    assert tp / (tp + fn) == pytest.approx(2 / 7)
    assert 2 / 3 != pytest.approx(2 / 7)


def test_weighted_cohen_kappa_matches_the_weighted_table_by_hand():
    # flags: tp 3, fp 1 (weight 1); reviewed clean: fn 1, tn 2 at rate 0.2 (weight 5)
    # weighted TP 3, FP 1, FN 5, TN 10; N 19
    # po = (3 + 10) / 19 = 13/19; pe = ((3+1)(3+5) + (5+10)(1+10)) / 19^2 = (32 + 165) / 361
    # kappa = (po - pe) / (1 - pe) = (247 - 197) / (361 - 197) = 50 / 164
    rows = [(True, True, 1.0)] * 3 + [(True, False, 1.0)] + [(False, True, 5.0)] + \
        [(False, False, 5.0)] * 2
    pred, actual, w = zip(*rows, strict=True)
    assert cohen_kappa(pred, actual, w) == pytest.approx(50 / 164, abs=1e-4)
    # unweighted the same labels give po 5/7, pe (4*4 + 3*3)/49 = 25/49 -> kappa 10/24
    assert cohen_kappa(pred, actual) == pytest.approx(10 / 24, abs=1e-4)


def test_weighted_cohen_kappa_equals_repeating_items():
    a = [1, 1, 0, 0, 1]
    b = [1, 0, 0, 1, 1]
    w = [1, 3, 2, 1, 2]
    rep_a = [x for x, k in zip(a, w, strict=True) for _ in range(k)]
    rep_b = [y for y, k in zip(b, w, strict=True) for _ in range(k)]
    assert cohen_kappa(a, b, w) == cohen_kappa(rep_a, rep_b)
    assert cohen_kappa(a, b, [1] * 5) == cohen_kappa(a, b)
    assert cohen_kappa(a, b, [0] * 5) is None
    with pytest.raises(ValueError):
        cohen_kappa(a, b, [1, 2])
    with pytest.raises(ValueError):
        cohen_kappa(a, b, [1, 1, 1, 1, -1])
