"""How well the offline rules auditor tells good replies from bad ones on public labelled data,
with the feedback removed (docs/auditing.md, "The rules auditor on public labelled data").

Data (read from ``../shared/data/`` next to the project root, or ``--data``):

* OpenAssistant oasst1, 100 English message trees (``oasst1-en100/en_100_tree.jsonl``, Apache-2.0,
  LAION-AI/Open-Assistant): every assistant message, labelled from its annotators' sibling rank and
  emoji votes as ``ml.importers.oasst_feedback`` reads them: *bad* = thumbs down (a red flag or more
  -1 than +1 votes) or a rating <= 2 (ranked in the lower half of 2+ ranked siblings); *good* =
  thumbs up or rating 5 and not bad; the rest is unlabelled and left out.
* Anthropic HH-RLHF helpful-base, test split (``hh-rlhf-helpful-base/test.jsonl.gz``, MIT): each
  pair gives two replies to the same context, *bad* = the rejected one, *good* = the chosen one.

Each reply goes through the production path (``ml.ingest.ingest_files``: validation, PII
scrubbing), with feedback, ratings, comments and human corrections removed *before* ingest, then
``ml.quality.score_interactions`` and MiniLM question/answer relevance (``ml.embeddings``), then
``ml.audit.rules.audit_rules``. The auditor's continuous score is its noisy-OR error evidence
(``confidence`` of a flagged verdict, ``1 - confidence`` of a clean one). Reported per data set:
ROC-AUC of that score against the labels (Mann-Whitney; 0.5 = chance), flag rate and precision of
the flags (share of labelled flagged replies that are bad) overall and per category, and for
HH-RLHF the pairwise accuracy (the rejected reply scores higher; ties count half).

Run: ``python bench/auditor_eval.py [--data DIR] [--json OUT]``. Nothing is tuned on these
samples: they are small (687 oasst replies, 2,354 pairs) and a threshold fitted to them would not
carry over.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: a checkout of another version can be measured

from ml import embeddings  # noqa: E402
from ml.audit.rules import audit_rules  # noqa: E402
from ml.importers import Accepted, read_hh_rlhf, read_oasst  # noqa: E402
from ml.ingest import ingest_files  # noqa: E402
from ml.quality import score_interactions  # noqa: E402

OASST = "oasst1-en100/en_100_tree.jsonl"
HH = "hh-rlhf-helpful-base/test.jsonl.gz"
FEEDBACK_KEYS = ("feedback", "human_correction", "signals")


def roc_auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC-AUC as the Mann-Whitney U statistic: the chance that a random bad reply scores higher
    than a random good one (ties count half). None without both classes."""
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in FEEDBACK_KEYS}


def oasst_records(path: Path) -> tuple[list[dict[str, Any]], dict[str, bool]]:
    records, labels = [], {}
    for item in read_oasst(path):
        if not isinstance(item, Accepted):
            continue
        rec = item.record
        fb = rec.get("feedback") or {}
        bad = fb.get("thumbs") == "down" or (fb.get("rating") or 5) <= 2
        good = not bad and (fb.get("thumbs") == "up" or fb.get("rating") == 5)
        if bad or good:
            labels[rec["interaction_id"]] = bad
        records.append(_strip(rec))
    return records, labels


def hh_records(path: Path) -> tuple[list[dict[str, Any]], dict[str, bool], list[tuple[str, str]]]:
    """Two interactions per pair: ``<id>-r`` (the rejected reply, bad) and ``<id>-c`` (chosen)."""
    records, labels, pairs = [], {}, []
    for item in read_hh_rlhf(path):
        if not isinstance(item, Accepted):
            continue
        rec = item.record
        chosen = rec["human_correction"]["corrected_response"]
        base = _strip(rec)
        rid, cid = rec["interaction_id"] + "-r", rec["interaction_id"] + "-c"
        records.append({**base, "interaction_id": rid, "session_id": rid})
        records.append({**base, "interaction_id": cid, "session_id": cid, "response": chosen})
        labels[rid], labels[cid] = True, False
        pairs.append((rid, cid))
    return records, labels, pairs


def audit(records: list[dict[str, Any]], workdir: Path) -> pl.DataFrame:
    """Ingest (scrub), score quality, add MiniLM relevance, audit: the verdicts with a
    continuous ``score``."""
    path = workdir / "records.jsonl"
    day = "2024-01-01"
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**r, "timestamp": f"{day}T00:00:00Z"}, ensure_ascii=False) + "\n")
    result = ingest_files([path], day, b"bench-key")
    df = result.interactions
    df = df.join(score_interactions(df).select("interaction_id", "quality_score"),
                 on="interaction_id", how="left")
    rel = embeddings.qa_relevance(df["user_message"].to_list(), df["response"].to_list())
    df = df.with_columns(pl.Series("qa_relevance", rel, dtype=pl.Float64))
    verdicts = audit_rules(df)
    return verdicts.with_columns(
        pl.when(pl.col("is_error")).then(pl.col("confidence"))
        .otherwise(1.0 - pl.col("confidence")).alias("score"))


def report(verdicts: pl.DataFrame, labels: dict[str, bool],
           pairs: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    v = verdicts.filter(pl.col("interaction_id").is_in(list(labels)))
    ids, scores = v["interaction_id"].to_list(), v["score"].to_list()
    y = [labels[i] for i in ids]
    flagged = v.filter(pl.col("is_error"))
    per_cat: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    bad: defaultdict[str, int] = defaultdict(int)
    for iid, cat in flagged.select("interaction_id", "category").iter_rows():
        counts[cat] += 1
        bad[cat] += int(labels[iid])
    for cat, n in counts.most_common():
        per_cat[cat] = {"flags": n, "precision": round(bad[cat] / n, 3)}
    out: dict[str, Any] = {
        "labelled": len(ids), "bad": sum(y), "good": len(y) - sum(y),
        "roc_auc": None if (auc := roc_auc(scores, y)) is None else round(auc, 3),
        "flagged": flagged.height,
        "flag_rate": round(flagged.height / max(1, len(ids)), 3),
        "precision": round(sum(labels[i] for i in flagged["interaction_id"]) / flagged.height, 3)
        if flagged.height else None,
        "base_rate": round(sum(y) / max(1, len(y)), 3),
        "per_category": per_cat,
    }
    if pairs:
        s = dict(zip(ids, scores, strict=True))
        wins = sum(1.0 if s[r] > s[c] else 0.5 if s[r] == s[c] else 0.0 for r, c in pairs)
        out["pairs"] = len(pairs)
        out["pairwise_accuracy"] = round(wins / len(pairs), 3)
        out["pairs_tied"] = sum(1 for r, c in pairs if s[r] == s[c])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recs, labels = oasst_records(args.data / OASST)
        (work / "oasst").mkdir()
        results["oasst1-en100"] = report(audit(recs, work / "oasst"), labels)
        recs, labels, pairs = hh_records(args.data / HH)
        (work / "hh").mkdir()
        results["hh-rlhf-helpful-base-test"] = report(audit(recs, work / "hh"), labels, pairs)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
