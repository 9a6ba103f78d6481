"""ROUGE as an ``evaluate`` metric module, computed with Google's ``rouge_score`` package.

Shipped in the repository so that it loads offline (``ml.evaluation.metrics.load_metric``); it
is self-contained (``evaluate`` copies it into its modules cache and imports it from there).

Scores are F-measures on a 0-1 scale. With ``use_aggregator=True`` (the default) each ROUGE type
is the plain mean over the examples of the per-example F-measure (no bootstrap resampling, so
the result is exactly reproducible); with ``use_aggregator=False`` each type is the list of
per-example F-measures. ``rougeLsum`` splits summaries on newlines, so it equals ``rougeL`` on
single-line text. ``rouge_score``'s default tokenizer lower-cases and keeps only ASCII letters
and digits: text in other scripts scores 0.
"""

from __future__ import annotations

import datasets
import evaluate
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_DESCRIPTION = ("ROUGE-N (n-gram overlap) and ROUGE-L (longest common subsequence) F-measures of "
                "predictions against one reference each, via rouge_score.")
_KWARGS = """
Args:
    predictions: list of strings, one per example.
    references: list of strings, one reference per example.
    rouge_types: subset of rouge1, rouge2, rougeL, rougeLsum (default: all four).
    use_stemmer: Porter-stem words before matching (default False).
    use_aggregator: mean over examples (default True) or per-example lists.
Returns:
    {rouge_type: F-measure in [0, 1]} (or a list of them per example).
"""


class Rouge(evaluate.Metric):
    """ROUGE F-measures (0-1) through ``rouge_score.rouge_scorer.RougeScorer``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, Chin-Yew. ROUGE: a package for automatic evaluation of summaries. 2004.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False,
                 use_aggregator=True):
        types = list(rouge_types) if rouge_types is not None else list(ROUGE_TYPES)
        unknown = sorted(set(types) - set(ROUGE_TYPES))
        if not types or unknown:
            raise ValueError(f"rouge_types must be a non-empty subset of {ROUGE_TYPES}, "
                             f"got {types}")
        if not predictions:
            raise ValueError("rouge: no predictions to score")
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
        per_type = {t: [] for t in types}
        for prediction, reference in zip(predictions, references, strict=True):
            # rouge_score's argument order is (target, prediction)
            scores = scorer.score(reference, prediction)
            for t in types:
                per_type[t].append(scores[t].fmeasure)
        if not use_aggregator:
            return per_type
        return {t: sum(v) / len(v) for t, v in per_type.items()}
