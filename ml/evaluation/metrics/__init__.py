"""The evaluation metrics shipped with the repository as ``evaluate`` modules, loaded offline.

``load_metric(name)`` is ``evaluate.load(<absolute path of the shipped module file>)``. For a
local file path ``evaluate`` never contacts the Hugging Face Hub (its hub lookup only runs for
bare names such as ``"rouge"``), so no offline variable needs setting and none is set. ``evaluate``
copies the script into its modules cache (``$HF_MODULES_CACHE``, default
``$HF_HOME/modules/evaluate_modules/metrics/<name>/<hash>/``) and imports it from there; it also
creates an empty ``$HF_HOME/metrics/<name>/default`` directory. Nothing is written into this
package. Metrics are loaded with ``keep_in_memory=True``: predictions are not spilled to Arrow
cache files.

Metrics: ``rouge`` (rouge1, rouge2, rougeL, rougeLsum F-measures, 0-1; ``use_stemmer``),
``bleu`` (sacreBLEU corpus BLEU; ``bleu`` 0-1, ``score`` 0-100), ``exact_match`` (0-1;
``ignore_case``, ``ignore_punctuation``, ``strip_whitespace``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS = ("rouge", "bleu", "exact_match")
METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> Path:
    """The absolute path of a shipped metric module file."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; the shipped metrics are {METRICS}")
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"metric module {name!r} is missing at {path} (was the package "
                                f"installed without its metric files?)")
    return path


def load_metric(name: str) -> Any:
    """A fresh ``evaluate.Metric`` for one of :data:`METRICS`, loaded from the shipped file."""
    import evaluate

    return evaluate.load(str(metric_path(name)), keep_in_memory=True)
