"""Corpus BLEU as an ``evaluate`` metric module, computed with ``sacrebleu.corpus_bleu``.

Shipped in the repository so that it loads offline (``ml.evaluation.metrics.load_metric``); it
is self-contained (``evaluate`` copies it into its modules cache and imports it from there).

Scale: ``bleu`` is on **0-1** (sacreBLEU's 0-100 score divided by 100, so that it sits next to
ROUGE); ``score`` keeps sacreBLEU's own 0-100 value. ``precisions`` (0-100, per n-gram order),
``brevity_penalty``, ``sys_len`` and ``ref_len`` are sacreBLEU's. References: one string per
prediction, or a list of strings per prediction (every prediction the same number).
"""

from __future__ import annotations

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus-level BLEU (sacreBLEU) of predictions against one or more references each."
_KWARGS = """
Args:
    predictions: list of strings.
    references: list of strings, or list of lists of strings (same count per prediction).
    tokenize: sacreBLEU tokenizer (default "13a").
    lowercase: case-insensitive BLEU (default False).
    smooth_method: "exp" (default), "floor", "add-k" or "none".
    smooth_value: the value for "floor" / "add-k" (default: sacreBLEU's).
Returns:
    bleu (0-1), score (0-100), precisions, brevity_penalty, sys_len, ref_len.
"""


class Bleu(evaluate.Metric):
    """sacreBLEU corpus BLEU; ``bleu`` on a 0-1 scale, ``score`` on sacreBLEU's 0-100."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, Matt. A Call for Clarity in Reporting BLEU Scores. WMT 2018.",
            inputs_description=_KWARGS,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False,
                 smooth_method="exp", smooth_value=None):
        if not predictions:
            raise ValueError("bleu: no predictions to score")
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        counts = {len(r) for r in refs}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"bleu: every prediction needs the same, non-zero number of "
                             f"references; got counts {sorted(counts)}")
        streams = [list(stream) for stream in zip(*refs, strict=True)]
        result = sacrebleu.corpus_bleu(list(predictions), streams, smooth_method=smooth_method,
                                       smooth_value=smooth_value, lowercase=lowercase,
                                       tokenize=tokenize)
        return {"bleu": result.score / 100.0, "score": result.score,
                "precisions": list(result.precisions), "brevity_penalty": result.bp,
                "sys_len": result.sys_len, "ref_len": result.ref_len}
