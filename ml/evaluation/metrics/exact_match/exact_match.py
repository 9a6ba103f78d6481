"""Exact match as an ``evaluate`` metric module, with explicit normalisation options.

Shipped in the repository so that it loads offline (``ml.evaluation.metrics.load_metric``); it
is self-contained (``evaluate`` copies it into its modules cache and imports it from there).

``exact_match`` is the share (0-1) of predictions equal to their reference after normalising
both: ``strip_whitespace`` (default True) trims both ends and collapses every inner run of
whitespace to one space; ``ignore_case`` (default False) compares case-folded text;
``ignore_punctuation`` (default False) deletes every Unicode punctuation character (category P*)
before whitespace is handled.
"""

from __future__ import annotations

import re
import unicodedata

import datasets
import evaluate

_WS = re.compile(r"\s+")
_KWARGS = """
Args:
    predictions: list of strings.
    references: list of strings.
    ignore_case: compare case-folded text (default False).
    ignore_punctuation: drop Unicode punctuation (default False).
    strip_whitespace: trim and collapse whitespace (default True).
Returns:
    exact_match: share of exact matches in [0, 1].
"""


def normalise(text, ignore_case=False, ignore_punctuation=False, strip_whitespace=True):
    """The text as compared: punctuation dropped, then whitespace, then case (each optional)."""
    if ignore_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if strip_whitespace:
        text = _WS.sub(" ", text).strip()
    if ignore_case:
        text = text.casefold()
    return text


class ExactMatch(evaluate.Metric):
    """Share of predictions equal to their reference after the chosen normalisation."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Share of predictions exactly equal to their reference (normalised).",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, ignore_case=False, ignore_punctuation=False,
                 strip_whitespace=True):
        if not predictions:
            raise ValueError("exact_match: no predictions to score")
        opts = {"ignore_case": ignore_case, "ignore_punctuation": ignore_punctuation,
                "strip_whitespace": strip_whitespace}
        hits = [normalise(p, **opts) == normalise(r, **opts)
                for p, r in zip(predictions, references, strict=True)]
        return {"exact_match": sum(hits) / len(hits)}
