"""How much two raters agree: Cohen's kappa, e.g. of the auditor's verdicts and the reviewers'
decisions on the same items (confirmed / dismissed error items; the ``auditor_agreement`` mart
computes the same in SQL, with weights).

Precision and recall against the demo generator's ground truth are in ``ml.demo.truth``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cohen_kappa(a: Sequence[Any], b: Sequence[Any],
                weights: Sequence[float] | None = None) -> float | None:
    """Cohen's kappa of two raters' labels (None when undefined: no items, or chance agreement 1).

    ``weights`` (one per item, default 1) weights each item's contribution to the observed and the
    chance agreement: kappa of the weighted contingency table, e.g. with inverse-probability
    weights when only a sample of some items was labeled (ml.audit.labels)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs equal lengths, got {len(a)} and {len(b)}")
    w = [1.0] * len(a) if weights is None else [float(x) for x in weights]
    if len(w) != len(a):
        raise ValueError(f"cohen_kappa needs one weight per item, got {len(w)} for {len(a)}")
    if any(x < 0 for x in w):
        raise ValueError("cohen_kappa weights must not be negative")
    n = sum(w)
    if n <= 0:
        return None
    labels = set(a) | set(b)
    observed = sum(wi for x, y, wi in zip(a, b, w, strict=True) if x == y) / n
    expected = sum((sum(wi for x, wi in zip(a, w, strict=True) if x == lbl) / n)
                   * (sum(wi for y, wi in zip(b, w, strict=True) if y == lbl) / n) for lbl in labels)
    if expected >= 1.0:
        return None
    return round((observed - expected) / (1.0 - expected), 4)
