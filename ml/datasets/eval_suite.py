"""The evaluation suite: a versioned, stable, growing evaluation set of reviewer-approved
corrections, and a retention set of good historical interactions (:func:`select_eval_suite`).

Evaluation set, from the corrections (examples with ``sample:`` keys, the reviewer's final text as
completion):

1. *available*: valid conversations, not trained on (``trained``: key or prompt hash of any
   training dataset item), one per prompt hash (the first in key order, a previous suite's item
   preferred).
2. every item of the previous suite (``previous_eval_keys``) that is still available is kept: the
   suite is stable and only grows.
3. the suite grows to ``limit = min(size, floor(max_share * |available|))`` (or stays at the kept
   size if that is larger): "``size`` (500) when the data allows", never so many that training
   loses more than ``max_share`` of the corrections. New items are spread over categories so the
   whole suite follows the category mix of the available corrections (largest remainder of each
   category's shortfall); within a category they come in seeded-hash order, which is stable as
   data grows (a new correction never displaces an earlier pick of the same seed). A category
   with too few items leaves its share to the others, in the same order.

Retention set, from ``history`` (good historical interactions): thumbs-up or quality >=
``retention_min_quality``, valid, not an evaluation item (key or prompt); previous retention
items still eligible are kept, the rest is stratified by intent (``unknown`` when none) in
seeded-hash order, up to ``retention_size``; an interaction a training set already replayed is
not picked (retention measures forgetting on data the model was not trained on), and neither is
one *superseded* by a correction: its last user message (case-folded, whitespace collapsed, end
punctuation stripped) is the question of a correction whose approved reply differs from it (a
stale price that users liked is not behaviour to retain; counted as ``history_superseded``).
The store holds retention items out of every later training set (``store.datasets.held_out``).

``version_hash``: SHA-256 of the parameters (size, max_share, retention_size,
retention_min_quality, seed) and the sorted (key, split, example_hash) of every item; input
order does not matter. :func:`write_eval_suite` writes ``eval.jsonl`` and ``retention.jsonl``
(OpenAI chat lines, schema-checked) and ``manifest.json`` (parameters, counts, per line the key,
category, intent and hashes, every file's sha256, the checksum), byte-deterministically.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.datasets.build import largest_remainder, version_hash
from ml.datasets.examples import Example, HeldOut, as_examples, normalise_text, seeded_rank
from ml.datasets.exports import (
    MANIFEST,
    dataset_checksum,
    file_digests,
    fresh_dir,
    openai_line,
    swap_in,
    write_jsonl,
    write_manifest,
)

EVAL_PATHS = {"eval": "eval.jsonl", "retention": "retention.jsonl", "manifest": MANIFEST}
UNKNOWN_INTENT = "unknown"


@dataclass(frozen=True)
class EvalSuite:
    """One evaluation suite version: ``eval`` and ``retention`` in key order."""

    eval: tuple[Example, ...]
    retention: tuple[Example, ...]
    params: dict[str, Any]
    counts: dict[str, Any]
    version_hash: str

    def items(self) -> list[dict[str, Any]]:
        """One mapping per item for ``store.datasets.record_dataset`` (split ``eval`` or
        ``retention``)."""
        return [{"item_key": e.key, "review_item_id": e.review_item_id, "split": split,
                 "source": e.source, "category": e.category, "tenant_id": e.tenant_id,
                 "session_key": e.session_key, "prompt_hash": e.prompt_hash,
                 "example_hash": e.example_hash}
                for split, exs in (("eval", self.eval), ("retention", self.retention))
                for e in exs]

    def held_out(self) -> HeldOut:
        """The evaluation items as a :class:`HeldOut` (what training must leave out)."""
        return HeldOut.of(self.eval)


def _order(seed: int, what: str, items: Iterable[Example]) -> list[Example]:
    return sorted(items, key=lambda e: (seeded_rank(seed, what, e.key), e.key))


def _stratified(pool: Mapping[str, list[Example]], quotas: Mapping[str, int], total: int,
                seed: int, what: str) -> list[Example]:
    """``quotas[c]`` items of each ``pool[c]`` in seeded order, then up to ``total`` from what is
    left, in the same order."""
    picked: list[Example] = []
    rest: list[Example] = []
    for cat in sorted(pool):
        ordered = _order(seed, what, pool[cat])
        n = quotas.get(cat, 0)
        picked += ordered[:n]
        rest += ordered[n:]
    if len(picked) < total:
        picked += _order(seed, what, rest)[:total - len(picked)]
    return picked[:total]


def _question_key(ex: Example) -> str | None:
    """The last user message, case-folded, whitespace collapsed, end punctuation stripped."""
    if ex.question is None:
        return None
    return normalise_text(ex.question).casefold().rstrip(" .?!") or None


def select_eval_suite(corrections: Iterable[Example | Mapping[str, Any]],
                      history: Iterable[Example | Mapping[str, Any]], *,
                      previous_eval_keys: Collection[str] = (),
                      trained: Any = None, size: int = 500, max_share: float = 0.2,
                      retention_size: int = 200, retention_min_quality: float = 0.8,
                      seed: int = 0, previous_retention_keys: Collection[str] = (),
                      ) -> EvalSuite:
    """Select an evaluation suite version (the rule: the module docstring). ``trained``: an
    object with ``keys`` and ``prompt_hashes`` (``store.datasets.trained``) or None."""
    for name, value, lo in (("size", size, 0), ("retention_size", retention_size, 0),
                            ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"select_eval_suite: {name} must be an integer >= {lo}, "
                             f"got {value!r}")
    if not 0 < max_share < 1:
        raise ValueError(f"select_eval_suite: max_share must be in (0, 1), got {max_share!r}")
    corr = sorted(as_examples(corrections, "corrections"), key=lambda e: e.key)
    hist = sorted(as_examples(history, "history"), key=lambda e: e.key)
    previous = frozenset(previous_eval_keys)
    trained_keys = frozenset(getattr(trained, "keys", ()) or ())
    trained_prompts = frozenset(getattr(trained, "prompt_hashes", ()) or ())

    counts: Counter = Counter(corrections=len(corr), history=len(hist))
    candidates = []
    for ex in corr:
        if ex.problem():
            counts["invalid"] += 1
        elif ex.key in trained_keys or ex.prompt_hash in trained_prompts:
            counts["trained"] += 1
        else:
            candidates.append(ex)
    # one per prompt: a previous suite's item first, then key order
    by_prompt: dict[str, Example] = {}
    for ex in sorted(candidates, key=lambda e: (e.key not in previous, e.key)):
        if ex.prompt_hash in by_prompt:
            counts["duplicate_prompt"] += 1
        else:
            by_prompt[ex.prompt_hash] = ex
    available = sorted(by_prompt.values(), key=lambda e: e.key)
    kept = [e for e in available if e.key in previous]
    limit = max(len(kept), min(size, math.floor(max_share * len(available) + 1e-9)))

    fresh: dict[str, list[Example]] = defaultdict(list)
    for e in available:
        if e.key not in previous:
            fresh[e.category].append(e)
    target = largest_remainder(limit, Counter(e.category for e in available))
    kept_by_cat = Counter(e.category for e in kept)
    shortfall = {c: min(max(0, target.get(c, 0) - kept_by_cat[c]), len(fresh[c]))
                 for c in fresh}
    need = limit - len(kept)
    added = _stratified(fresh, largest_remainder(need, shortfall), need, seed, "eval")
    eval_items = sorted(kept + added, key=lambda e: e.key)

    # retention
    eval_keys = {e.key for e in eval_items}
    eval_prompts = {e.prompt_hash for e in eval_items}
    corrected: dict[str, set[str]] = defaultdict(set)  # question -> the approved replies
    for ex in corr:
        if (q := _question_key(ex)) is not None:
            corrected[q].add(normalise_text(ex.completion))
    good: list[Example] = []
    prev_ret = frozenset(previous_retention_keys)
    for ex in hist:
        if not (ex.thumbs_up is True
                or (ex.quality is not None and ex.quality >= retention_min_quality)):
            counts["history_not_good"] += 1
        elif ex.problem():
            counts["history_invalid"] += 1
        elif ex.key in eval_keys or ex.prompt_hash in eval_prompts:
            counts["history_in_eval"] += 1
        elif (q := _question_key(ex)) in corrected \
                and normalise_text(ex.completion) not in corrected[q]:
            # reviewers approved another answer to this very question: this reply may be the
            # mistake they corrected (a stale price users liked), not behaviour to retain
            counts["history_superseded"] += 1
        elif ex.key not in prev_ret and (ex.key in trained_keys
                                         or ex.prompt_hash in trained_prompts):
            counts["history_trained"] += 1  # replayed into a training set: not a fair probe
        else:
            good.append(ex)
    prev_ret = frozenset(previous_retention_keys)
    kept_ret = sorted((e for e in good if e.key in prev_ret), key=lambda e: e.key)
    if len(kept_ret) > retention_size:
        kept_ret = _order(seed, "retention", kept_ret)[:retention_size]
    by_intent: dict[str, list[Example]] = defaultdict(list)
    for e in good:
        if e.key not in prev_ret:
            by_intent[e.intent or UNKNOWN_INTENT].append(e)
    room = retention_size - len(kept_ret)
    ret_quota = largest_remainder(room, {i: len(v) for i, v in by_intent.items()})
    retention = sorted(kept_ret + _stratified(by_intent, ret_quota, room, seed, "retention"),
                       key=lambda e: e.key)

    params = {"size": size, "max_share": max_share, "retention_size": retention_size,
              "retention_min_quality": retention_min_quality, "seed": seed}
    out_counts = {
        "corrections": counts["corrections"], "invalid": counts["invalid"],
        "trained": counts["trained"], "duplicate_prompt": counts["duplicate_prompt"],
        "available": len(available), "limit": limit,
        "kept_from_previous": len(kept),
        "previous_missing": len(previous - {e.key for e in kept}),
        "added": len(added), "eval": len(eval_items),
        "eval_by_category": dict(sorted(Counter(e.category for e in eval_items).items())),
        "history": counts["history"], "history_not_good": counts["history_not_good"],
        "history_invalid": counts["history_invalid"],
        "history_in_eval": counts["history_in_eval"],
        "history_superseded": counts["history_superseded"],
        "history_trained": counts["history_trained"], "retention_eligible": len(good),
        "retention_kept_from_previous": len(kept_ret), "retention": len(retention),
        "retention_by_intent": dict(sorted(Counter(e.intent or UNKNOWN_INTENT
                                                   for e in retention).items())),
    }
    vhash = version_hash(json.dumps(params, sort_keys=True, separators=(",", ":")),
                         [(e.key, "eval", e.example_hash) for e in eval_items]
                         + [(e.key, "retention", e.example_hash) for e in retention])
    return EvalSuite(eval=tuple(eval_items), retention=tuple(retention), params=params,
                     counts=out_counts, version_hash=vhash)


def _line_index(examples: Iterable[Example]) -> list[dict[str, Any]]:
    return [{"line": i, "key": e.key, "category": e.category, "intent": e.intent,
             "source": e.source, "prompt_hash": e.prompt_hash, "example_hash": e.example_hash}
            for i, e in enumerate(examples, 1)]


def write_eval_suite(suite: EvalSuite, out_dir: str | Path) -> dict[str, str]:
    """Write ``eval.jsonl``, ``retention.jsonl`` (OpenAI chat lines: prompt + the reference
    reply as the last assistant message) and ``manifest.json`` into ``out_dir`` (replaced if it
    exists); returns name -> relative path (:data:`EVAL_PATHS`)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(out_dir)
    try:
        lines = {
            "eval": write_jsonl(tmp / EVAL_PATHS["eval"], map(openai_line, suite.eval),
                                "openai_chat"),
            "retention": write_jsonl(tmp / EVAL_PATHS["retention"],
                                     map(openai_line, suite.retention), "openai_chat"),
        }
        manifest = {
            "manifest_version": 1, "kind": "eval_suite", "version_hash": suite.version_hash,
            "params": suite.params, "counts": suite.counts, "exports": dict(EVAL_PATHS),
            "lines": lines,
            "items": {"eval": _line_index(suite.eval),
                      "retention": _line_index(suite.retention)},
            "files": file_digests(tmp), "checksum": dataset_checksum(tmp),
        }
        write_manifest(tmp / MANIFEST, manifest)
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(EVAL_PATHS)
