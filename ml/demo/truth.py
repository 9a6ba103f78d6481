"""How good an auditor is on demo data: its verdicts against the generator's ``truth.jsonl``
({interaction_id, mistake, intent, answer}, ``ml.demo.generate``): precision, recall, F1,
category accuracy and recall per planted mistake. (``ml.demo.reviewer`` decides review items from
the same files.)

Used by the tests, the benchmarks and the demo-only precision/recall metadata of
``audited_errors`` (only when a ``truth.jsonl`` lies in the landing root). In production the labels
are reviewers' decisions, and agreement is ``ml.audit.metrics.cohen_kappa``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl

from ml.audit.taxonomy import normalize_category

# the demo generator's mistake labels -> taxonomy categories
MISTAKE_CATEGORY: dict[str, str] = {
    "wrong_price": "factual_error",
    "hallucinated_policy": "hallucinated_policy",
    "refusal": "refusal_of_valid_request",
    "pii_leak": "pii_leak",
    "truncated": "incomplete",
    "off_topic": "off_topic",
}


TRUTH_SCHEMA = {"interaction_id": pl.String, "mistake": pl.String, "intent": pl.String,
                "answer": pl.String}


def read_truth(path: Path | str) -> pl.DataFrame:
    """``truth.jsonl`` as (interaction_id, mistake, intent, answer); a bad line raises naming its
    number. Files written before ``intent`` and ``answer`` were recorded read with those null."""
    rows: list[dict[str, Any]] = []
    with _open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("interaction_id"), str):
                raise ValueError(f"{path}:{n}: needs a string interaction_id")
            for key in ("mistake", "intent", "answer"):
                value = obj.get(key)
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"{path}:{n}: {key} must be a string or null, got {value!r}")
            rows.append({"interaction_id": obj["interaction_id"], "mistake": obj.get("mistake"),
                         "intent": obj.get("intent"), "answer": obj.get("answer")})
    return pl.DataFrame(rows, schema=TRUTH_SCHEMA)


def _is_url(location: object) -> bool:
    return isinstance(location, str) and "://" in location


def _open_text(path: Path | str):
    """A local file, or an object of an ``s3://`` landing zone (read whole: a demo file)."""
    if not _is_url(path):
        return open(path, encoding="utf-8")  # noqa: SIM115 - the caller's with closes it
    from ml.landing_store import open_landing

    root = str(path).rsplit("/", 1)[0]
    return io.StringIO(open_landing(root).read_bytes(str(path)).decode("utf-8"))


def read_truth_files(landing_root: Path | str) -> pl.DataFrame:
    """Every ``truth.jsonl`` under ``landing_root`` in one frame, one row per interaction (a later
    file wins); empty when there are none (real data)."""
    files = find_truth_files(landing_root)
    if not files:
        return pl.DataFrame(schema=TRUTH_SCHEMA)
    return pl.concat([read_truth(f) for f in files]).unique("interaction_id", keep="last",
                                                             maintain_order=True)


def find_truth_files(landing_root: Path | str) -> list[Path | str]:
    """Every ``truth.jsonl`` under the landing root (demo data only): paths in a folder, refs
    (``s3://bucket/key``) in an ``s3://`` landing zone (``ml.landing_store``)."""
    if _is_url(landing_root):
        from ml.landing_store import open_landing

        return open_landing(landing_root).find("truth.jsonl")
    root = Path(landing_root)
    return sorted(root.rglob("truth.jsonl")) if root.exists() else []


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def precision_recall(verdicts: pl.DataFrame, truth: pl.DataFrame) -> dict[str, Any]:
    """Compare ``verdicts`` (interaction_id, is_error, category) with ``truth``
    (interaction_id, mistake) on the interactions present in both.

    Returns counts, precision, recall, f1, category accuracy (share of true positives whose
    category matches the mistake's), recall per mistake type and the false-positive categories.
    """
    joined = verdicts.select("interaction_id", "is_error", "category").join(
        truth.select("interaction_id", "mistake"), on="interaction_id", how="inner")
    actual = pl.col("mistake").is_not_null()
    pred = pl.col("is_error").fill_null(False)
    tp = joined.filter(actual & pred).height
    fp = joined.filter(~actual & pred).height
    fn = joined.filter(actual & ~pred).height
    tn = joined.filter(~actual & ~pred).height
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (round(2 * precision * recall / (precision + recall), 4)
          if precision and recall else None)
    hits = joined.filter(actual & pred).with_columns(
        pl.col("mistake").replace_strict(MISTAKE_CATEGORY, default=None,
                                         return_dtype=pl.String).alias("_expected"))
    cat_ok = hits.filter(pl.col("_expected") == pl.col("category")).height
    per_mistake = {}
    for (mistake,), group in joined.filter(actual).group_by("mistake", maintain_order=True):
        found = group.filter(pl.col("is_error").fill_null(False)).height
        per_mistake[str(mistake)] = {"n": group.height, "recall": _ratio(found, group.height)}
    fp_categories = (joined.filter(~actual & pred)["category"].value_counts()
                     .sort("count", descending=True).to_dicts() if fp else [])
    return {
        "n": joined.height, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall, "f1": f1,
        "category_accuracy": _ratio(cat_ok, tp),
        "recall_by_mistake": dict(sorted(per_mistake.items())),
        "false_positive_categories": fp_categories,
    }


def category_of_mistake(mistake: str | None) -> str | None:
    if mistake is None:
        return None
    return MISTAKE_CATEGORY.get(mistake) or normalize_category(mistake)


def demo_precision_recall(landing_root: Path | str, con: Any, auditor: str,
                          prompt_version: str) -> dict[str, Any]:
    """Precision/recall of this auditor over everything it audited, against the demo
    generator's truth.jsonl files under ``landing_root`` ({} when there are none: production).
    Keys are ``demo_only/...``. A figure with no data behind it (e.g. precision with nothing
    flagged) is left out and named in ``demo_only/note``, never reported as 0. ``con`` is a
    warehouse connection (``audited_errors`` and ``interactions`` are read)."""
    from ml.warehouse import query

    if not find_truth_files(landing_root):
        return {}
    truth = read_truth_files(landing_root)
    verdicts = query(
        con,
        "SELECT interaction_id, is_error, category FROM audited_errors "
        "WHERE auditor = ? AND prompt_version = ?", [auditor, prompt_version])
    known = query(con, "SELECT interaction_id FROM interactions")
    truth = truth.join(known, on="interaction_id", how="semi")
    # an interaction never audited counts as not flagged (end-to-end recall)
    full = truth.select("interaction_id").join(verdicts, on="interaction_id", how="left") \
        .with_columns(pl.col("is_error").fill_null(False))
    pr = precision_recall(full, truth)
    out: dict[str, Any] = {}
    missing = []
    for key in ("precision", "recall", "f1", "category_accuracy"):
        if pr[key] is None:
            missing.append(key)
        else:
            out[f"demo_only/{key}"] = pr[key]
    if missing:
        out["demo_only/note"] = (f"no data for {', '.join(missing)} (nothing flagged, no labelled "
                                 f"errors or no true positives): left out, not 0")
    out["demo_only/labelled_interactions"] = pr["n"]
    out["demo_only/recall_by_mistake"] = pr["recall_by_mistake"]
    return out
