"""The demo's reviewer: decides the pending review items of demo data from the generator's ground
truth, through the store functions of the review web app, under the reviewer ``demo-reviewer``.

``learnloop demo`` calls :func:`review_demo_items` between its runs so that the demo ends with
approved samples, preference pairs, a dataset version and an evaluation suite::

    learnloop run chain -> review_demo_items(kinds=("error",)) -> teaching_job
        -> review_demo_items(kinds=("sample",)) -> teaching_job -> datasets -> analytics

It refuses to run without a ``truth.jsonl`` under the landing root (real data: real users never
get simulated decisions), and decides only items whose interaction the truth lists. What it
decides and why is ``ml.demo.reviewer``; every decision is a ``store.repo.decide`` in its own
transaction (``store.repo.decide_many``, as the web app's bulk decisions), recorded as a review
event with the actor ``demo-reviewer`` and a note saying it was simulated. A conflict (someone
decided the item meanwhile) is counted, not fatal. Running it again decides nothing new.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.demo.reviewer import (
    DEMO_REVIEWER,
    MISTAKE_RATE,
    STYLE_EDIT_RATE,
    Decision,
    ItemFacts,
    Truth,
    decide_item,
    draw,
)
from ml.demo.truth import find_truth_files, read_truth_files
from store import repo
from store.db import session_scope
from store.models import ReviewItem

KINDS = ("error", "sample")
_PAGE = 1000


class NotDemoData(RuntimeError):
    """The landing root holds no demo ground truth: simulated decisions are refused."""


def _truth_by_id(landing_root: Path | str) -> dict[str, Truth]:
    if not find_truth_files(landing_root):
        raise NotDemoData(
            f"no truth.jsonl under the landing root {landing_root}: this is not demo data, and "
            f"the demo reviewer never decides real review items (reviewers do, in the review app)")
    frame = read_truth_files(landing_root)
    return {r["interaction_id"]: Truth(mistake=r["mistake"], intent=r["intent"],
                                       answer=r["answer"])
            for r in frame.iter_rows(named=True)}


def _facts(item: ReviewItem) -> ItemFacts:
    return ItemFacts(key=f"{item.kind}:{item.dedup_key}", kind=item.kind, category=item.category,
                     calibration=repo.is_no_error_found(item),
                     original_response=item.original_response,
                     proposed_response=item.proposed_response, source=item.source)


def _pending(store_url: str, kind: str) -> list[tuple[int, int, ItemFacts, str]]:
    """(id, version, facts, interaction id) of every pending item of ``kind``, oldest first."""
    out = []
    with session_scope(store_url) as s:
        offset = 0
        while True:
            items, total = repo.list_items(s, repo.ItemFilter(kind=kind, status="pending"),
                                           sort="age", offset=offset, limit=_PAGE)
            out += [(i.id, i.version, _facts(i), i.interaction_id) for i in items]
            offset += len(items)
            if not items or offset >= total:
                return out


def review_demo_items(store_url: str, landing_root: Path | str, *, seed: int,
                      actor: str = DEMO_REVIEWER, kinds: Sequence[str] = KINDS,
                      mistake_rate: float = MISTAKE_RATE,
                      style_edit_rate: float = STYLE_EDIT_RATE,
                      leave_for_humans: float = 0.0) -> dict[str, Any]:
    """Decide the pending items of ``kinds`` (errors before samples) as a careful reviewer
    would, from the truth files under ``landing_root``; return what was decided.

    ``seed`` seeds the reviewer's slips (``mistake_rate``), its stylistic edits of approvals
    (``style_edit_rate``) and the share of items it leaves pending for a person to try the review
    app on (``leave_for_humans``), each per item (``ml.demo.reviewer.draw``), not per call order.
    Raises :class:`NotDemoData` when no ``truth.jsonl`` lies under ``landing_root``.

    The result: ``decided`` {kind: {status: n}}, ``decisions`` (total), ``simulated_mistakes``
    and ``mistake_share`` (of the decisions), ``style_edits``, ``skipped`` {reason: n}
    (``not_in_truth``: an interaction the truth does not list; ``no_reference``: a sample the
    truth has no reference reply to judge by; ``left_for_humans``), ``conflicts`` and
    ``invalid`` (decided by someone else meanwhile), ``actor``."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"kinds must be among {KINDS}, got {unknown}")
    if not 0.0 <= leave_for_humans <= 1.0:
        raise ValueError(f"leave_for_humans must be in [0, 1], got {leave_for_humans}")
    truth = _truth_by_id(landing_root)
    decided: dict[str, Counter[str]] = {k: Counter() for k in kinds}
    skipped: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    slips = styled = 0
    for kind in (k for k in KINDS if k in kinds):
        planned: list[tuple[dict[str, Any], Decision]] = []
        for item_id, version, facts, interaction_id in _pending(store_url, kind):
            t = truth.get(interaction_id)
            if t is None:
                skipped["not_in_truth"] += 1
                continue
            if leave_for_humans and draw(seed, "leave", facts.key) < leave_for_humans:
                skipped["left_for_humans"] += 1
                continue
            d = decide_item(facts, t, seed=seed, mistake_rate=mistake_rate,
                            style_edit_rate=style_edit_rate)
            if d is None:
                skipped["no_reference"] += 1
                continue
            planned.append(({"item_id": item_id, "decision": d.decision, "version": version,
                             "final_response": d.final_response, "note": d.note}, d))
        for start in range(0, len(planned), _PAGE):
            chunk = planned[start:start + _PAGE]
            results = repo.decide_many(store_url, [p for p, _ in chunk], actor=actor)
            for (_, d), res in zip(chunk, results, strict=True):
                outcomes[res["code"]] += 1
                if res["ok"]:
                    decided[kind][res["status"]] += 1
                    slips += d.simulated_mistake
                    styled += d.style_edit
    n = outcomes["ok"]
    return {
        "actor": actor,
        "decided": {k: dict(sorted(c.items())) for k, c in decided.items()},
        "decisions": n,
        "simulated_mistakes": slips,
        "mistake_share": round(slips / n, 4) if n else None,
        "style_edits": styled,
        "skipped": dict(sorted(skipped.items())),
        "conflicts": outcomes["conflict"],
        "invalid": outcomes["invalid"] + outcomes["not_found"],
    }
