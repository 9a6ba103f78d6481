"""Precision and recall of the rules auditor on the demo generator's known mistakes.

2,000 generated records (seed 23, 3 days) are ingested with ``ml.ingest.ingest_files`` (validated,
scrubbed), scored by ``ml.quality``, embedded with MiniLM for question/answer relevance, audited
by ``audit_rules`` (every interaction, i.e. the auditor itself, not the candidate selection) and
compared with ``truth.jsonl``.

Measured (docs/auditing.md, "Measured precision and recall"): seed 23 -> precision 0.90, recall
0.88, category accuracy 0.88. Across seeds 21-24 precision ranged 0.81-0.90, recall 0.82-0.88 and
category accuracy 0.85-0.90. The floors below are the worst seed minus a margin (precision 0.81 -
0.03 = 0.78, recall 0.82 - 0.02 = 0.80, category 0.85 - 0.03 = 0.82), so a generator tweak does not
break the test while a broken rule does.

Since the generator's stale facts (one systematic mistake per tenant, ``ml.demo.generate``) the
replies about them are measured apart: seed 23 -> recall 0.46 at precision 1.0 on the stale
replies (only feedback shows them: the bot repeats them, so the consensus takes them for the
norm and flags right replies on the same topic instead; floor 0.40); the floors above hold for
the rest.

The figures fell with issue 8 (recall was 0.90-0.93, category accuracy 0.96-0.98) and that is
deliberate, not tuned back: a reply that merely lacks a final full stop is no longer "truncated"
(the generator cuts at any word), a scrubber placeholder is no longer a PII leak (the generator's
leaks are only seen through the user's complaint), and negative feedback no rule explains is
``user_reported``, not ``factual_error`` (which used to match the generator's wrong prices).
"""

from __future__ import annotations

import polars as pl
import pytest

from ml import embeddings
from ml.audit.rules import audit_rules
from ml.demo.generate import TENANTS, generate
from ml.demo.truth import precision_recall, read_truth
from ml.ingest import ingest_files
from ml.quality import score_interactions

PRECISION_FLOOR = 0.78
RECALL_FLOOR = 0.80
CATEGORY_FLOOR = 0.82
STALE_RECALL_FLOOR = 0.40


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate(out, 2000, seed=23, days=3)
    parts = [ingest_files(sorted(d.glob("*.jsonl")), d.name[5:], b"test-key").interactions
             for d in sorted(out.glob("date=*"))]
    df = pl.concat(parts)
    df = df.join(score_interactions(df).select("interaction_id", "quality_score"),
                 on="interaction_id", how="left")
    rel = embeddings.qa_relevance(df["user_message"].to_list(), df["response"].to_list())
    df = df.with_columns(pl.Series("qa_relevance", rel, dtype=pl.Float64))
    return df, read_truth(out / "truth.jsonl")


def _stale_ids(df: pl.DataFrame) -> set[str]:
    """Interactions whose reply is about a tenant's stale fact (its first item's price, its
    first policy), stale or right: the bot's one systematic mistake per tenant. There the stale
    version is the majority, so the consensus rules take it for the norm and the right reply
    for the odd one out."""
    texts = [t.items[0][0] for t in TENANTS] + [t.policies[0].invented[0] for t in TENANTS] \
        + [t.policies[0].answer for t in TENANTS]
    hit = pl.any_horizontal([pl.col("response").str.contains(x, literal=True) for x in texts])
    return set(df.filter(hit)["interaction_id"].to_list())


def test_rules_auditor_precision_and_recall_above_floors(labelled):
    """The floors hold for the random mistakes; the stale facts, which the bot repeats so that
    the consensus takes them for the norm, are measured apart (only feedback shows them)."""
    df, truth = labelled
    verdicts = audit_rules(df)
    stale = _stale_ids(df)
    pr_stale = precision_recall(verdicts.filter(pl.col("interaction_id").is_in(stale)),
                                truth.filter(pl.col("interaction_id").is_in(stale)))
    print(f"rules auditor on the stale-fact replies: {pr_stale}")
    assert pr_stale["tp"] + pr_stale["fn"] > 100  # stale replies (the wrong ones)
    assert pr_stale["recall"] >= STALE_RECALL_FLOOR, pr_stale
    pr = precision_recall(verdicts.filter(~pl.col("interaction_id").is_in(stale)),
                          truth.filter(~pl.col("interaction_id").is_in(stale)))
    print(f"rules auditor on 2000 generated records, stale-fact replies aside: {pr}")
    assert pr["n"] > 1700
    assert pr["precision"] >= PRECISION_FLOOR, pr
    assert pr["recall"] >= RECALL_FLOOR, pr
    assert pr["category_accuracy"] >= CATEGORY_FLOOR, pr
    by = {k: v["recall"] for k, v in pr["recall_by_mistake"].items()}
    # mistakes a rule sees directly in the reply
    for mistake in ("refusal", "off_topic"):
        assert by[mistake] >= 0.9, (mistake, by)
    # cut at a word boundary: only a dangling word, the feedback or the consensus shows it
    assert by["truncated"] >= 0.6, by
    # scrubbed before the audit: only the user's complaint, a handoff or the consensus shows it
    assert by["pii_leak"] >= 0.5, by
    # mistakes only the consensus and feedback signals see
    assert by["wrong_price"] >= 0.75 and by["hallucinated_policy"] >= 0.6, by


def test_flagging_everything_would_fail_the_precision_floor(labelled):
    """The floor is meaningful: the base rate of mistakes is far below it."""
    df, truth = labelled
    everything = audit_rules(df).with_columns(pl.lit(True).alias("is_error"))
    assert precision_recall(everything, truth)["precision"] < PRECISION_FLOOR / 2
