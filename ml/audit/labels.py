"""Which verdicts get a reviewer label, and with what weight: the design behind recall and kappa.

Reviewers label a verdict by deciding its ``error`` review item. Every flagged verdict gets one, but
a clean verdict only does on the calibration sample (a seeded random share of the interactions no
signal pointed at, ``audit_candidates.calibration_rate``), and there only for a stable hash draw
below ``audited_errors.clean_review_rate``. Counting labels as they come would count every reviewed
flag but only a small share of the misses, so recall and Cohen's kappa are estimated on the
calibration sample alone, each labeled verdict weighted by the inverse of its probability of
getting a review item (Horvitz-Thompson):

* flagged verdict in the calibration sample: weight 1 (always put to review);
* clean verdict in the calibration sample put to review: weight ``1 / clean_review_rate``;
* anything else (outside the sample, or a clean verdict not put to review): no weight (NULL).

The calibration-rate factor is the same for every verdict in the sample and cancels out of both
ratios, so it is not part of the weight.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from ml.audit.candidates import calibration_draw


def label_weight(is_error: bool, in_calibration: bool, reviewed: bool,
                 clean_review_rate: float) -> float | None:
    """The inverse-probability weight of a verdict's reviewer label (None: not in the estimate).

    ``reviewed``: a clean verdict was drawn for a "no error found" review item (ignored for a
    flag, which always gets an item)."""
    if not 0.0 <= clean_review_rate <= 1.0:
        raise ValueError(f"clean_review_rate must be in [0, 1], got {clean_review_rate}")
    if not in_calibration:
        return None
    if is_error:
        return 1.0
    if reviewed and clean_review_rate > 0:
        return 1.0 / clean_review_rate
    return None


def _keys(verdicts: pl.DataFrame) -> list[tuple[str, str]]:
    """(tenant_id, interaction_id) of each verdict: what identifies an interaction."""
    return list(zip(verdicts["tenant_id"].to_list(), verdicts["interaction_id"].to_list(),
                    strict=True))


def with_label_columns(verdicts: pl.DataFrame, calibration_ids: Iterable[tuple[str, str]],
                       reviewed_ids: Iterable[tuple[str, str]],
                       clean_review_rate: float) -> pl.DataFrame:
    """``verdicts`` with ``in_calibration`` and ``label_weight`` (ml.audit.taxonomy.AUDITED_COLUMNS)
    set from the calibration sample and the clean verdicts put to review (both given as
    (tenant_id, interaction_id) keys)."""
    calibration, reviewed = set(calibration_ids), set(reviewed_ids)
    ids = _keys(verdicts)
    errors = verdicts["is_error"].to_list()
    in_cal = [i in calibration for i in ids]
    weights = [label_weight(bool(e), c, i in reviewed, clean_review_rate)
               for i, e, c in zip(ids, errors, in_cal, strict=True)]
    return verdicts.with_columns(pl.Series("in_calibration", in_cal, dtype=pl.Boolean),
                                 pl.Series("label_weight", weights, dtype=pl.Float64))


def clean_review_ids(verdicts: pl.DataFrame, calibration_ids: set[tuple[str, str]],
                     rate: float) -> set[tuple[str, str]]:
    """The (tenant_id, interaction_id) keys of the clean (is_error false) verdicts on
    calibration-sample interactions that get a "no error found" review item: a stable hash draw
    of the interaction id below ``rate`` (the same interactions on every run)."""
    if rate <= 0 or verdicts.height == 0:
        return set()
    clean = [k for k, e in zip(_keys(verdicts), verdicts["is_error"].to_list(), strict=True)
             if not e and k in calibration_ids]
    draws = calibration_draw([i for _, i in clean], "clean-review")
    return {k for k, d in zip(clean, draws, strict=True) if d < rate}
