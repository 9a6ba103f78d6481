"""Validation checks over a dataset version, as pure functions returning a :class:`CheckResult`
(``passed``, ``description``, JSON-able ``metadata``, up to ``MAX_FAILURES`` failing examples).
The ``training_dataset`` asset turns each into an asset check of the same name.

* :func:`check_no_pii`: no PII left in any turn. Two detectors, as the ingest asset's
  ``check_no_residual_pii`` has: the scrubber's own rules (``ml.pii.find_pii``) and, on every
  text matching ``ml.pii.RESIDUAL_PREFILTER``, the independent Presidio pattern recognizers
  (``ml.pii_presidio.presidio_findings``). A failure names the example, the turn and the PII
  type, never the value.
* :func:`check_roles`: optional system first, then user/assistant alternating, starting with
  user and ending with the assistant completion.
* :func:`check_no_empty_turns`: no blank message and no blank completion.
* :func:`check_token_limit`: no example above ``max_tokens`` tokens (``ml.datasets.tokens``:
  :func:`resolve_tokenizer` picks the tokenizer and the result names it).
* :func:`check_no_leakage`: nothing of validation is in train: no shared session, example hash or
  prompt hash, and no validation question with a train question at cosine >=
  ``threshold`` (the same LanceDB neighbour search as the build's near-duplicate stage).
* :func:`check_no_held_out`: no evaluation item (by key or prompt hash).
* :func:`check_min_size`: at least ``min_size`` train examples.
* :func:`check_category_balance`: among the new (non-replay) examples, no category above its
  cap, and with more than one category none above ``max_category_share``.

:func:`run_checks` runs all of them over a :class:`~ml.datasets.build.DatasetBuild`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.datasets.build import DatasetBuild, vector_matrix, with_vectors
from ml.datasets.examples import Example, empty_turns, role_problem
from ml.datasets.similarity import similar_pairs
from ml.datasets.spec import DatasetSpec
from ml.datasets.tokens import ResolvedTokenizer, resolve_tokenizer, token_counter

__all__ = ["CheckResult", "check_category_balance", "check_min_size", "check_no_empty_turns",
           "check_no_held_out", "check_no_leakage", "check_no_pii", "check_roles",
           "check_token_limit", "resolve_tokenizer", "run_checks"]

MAX_FAILURES = 20


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    failures: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "description": self.description,
                "metadata": self.metadata, "failures": list(self.failures)}


def _result(name: str, failures: list[dict[str, Any]], ok: str, bad: str,
            metadata: dict[str, Any]) -> CheckResult:
    passed = not failures
    return CheckResult(name, passed, ok if passed else bad,
                       {**metadata, "failures": len(failures)},
                       tuple(failures[:MAX_FAILURES]))


def _turns(ex: Example) -> list[tuple[str, str]]:
    """(turn name, text) of every message and the completion."""
    return [(f"messages[{i}]", m["content"]) for i, m in enumerate(ex.messages)] + \
           [("completion", ex.completion)]


# ---- PII --------------------------------------------------------------------------------------

def check_no_pii(examples: Iterable[Example]) -> CheckResult:
    from ml.pii import PII_TYPES, RESIDUAL_PREFILTER, find_pii

    prefilter = re.compile(RESIDUAL_PREFILTER)
    failures: list[dict[str, Any]] = []
    by_type: Counter = Counter()
    n_examples = n_texts = handed = 0
    presidio = None
    for ex in examples:
        n_examples += 1
        for turn, text in _turns(ex):
            n_texts += 1
            found = {(t, "ml.pii") for t, _ in find_pii(text)}
            if prefilter.search(text):
                handed += 1
                if presidio is None:
                    from ml.pii_presidio import presidio_findings as presidio
                found |= {(t, "presidio") for t, _ in presidio(text)}
            for pii_type, detector in sorted(found):
                by_type[pii_type] += 1
                failures.append({"key": ex.key, "turn": turn, "pii_type": pii_type,
                                 "detector": detector})
    return _result(
        "check_no_pii", failures,
        "No PII in any turn (ml.pii rules and Presidio's pattern recognizers).",
        f"PII found in {len({f['key'] for f in failures})} examples.",
        {"examples": n_examples, "texts": n_texts, "texts_to_presidio": handed,
         "by_type": {t: by_type[t] for t in PII_TYPES if by_type[t]}})


# ---- conversation shape -----------------------------------------------------------------------

def check_roles(examples: Iterable[Example]) -> CheckResult:
    failures = []
    n = 0
    for ex in examples:
        n += 1
        why = role_problem([m.get("role") for m in ex.conversation()], ends_with="assistant")
        if why:
            failures.append({"key": ex.key, "problem": why})
    return _result("check_roles", failures,
                   "Every example: optional system first, then user/assistant alternating, "
                   "starting with user, ending with the assistant completion.",
                   f"{len(failures)} examples have roles out of order.", {"examples": n})


def check_no_empty_turns(examples: Iterable[Example]) -> CheckResult:
    failures = []
    n = 0
    for ex in examples:
        n += 1
        empty = empty_turns(ex.conversation())
        if empty:
            names = ["completion" if i == len(ex.messages) else f"messages[{i}]" for i in empty]
            failures.append({"key": ex.key, "turns": names})
    return _result("check_no_empty_turns", failures, "No empty turn in any example.",
                   f"{len(failures)} examples have an empty turn.", {"examples": n})


def check_token_limit(examples: Iterable[Example], tokenizer: Any, max_tokens: int | None
                      ) -> CheckResult:
    """``tokenizer``: a :class:`ResolvedTokenizer`, a Hugging Face tokenizer or a callable
    text -> int (``ml.datasets.tokens.token_counter``)."""
    count = token_counter(tokenizer)
    name = (f"{tokenizer.source}:{tokenizer.name}" if isinstance(tokenizer, ResolvedTokenizer)
            else getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__)
    sizes: list[tuple[int, str]] = [(count(ex.conversation()), ex.key) for ex in examples]
    over = sorted(((n, k) for n, k in sizes if max_tokens is not None and n > max_tokens),
                  reverse=True)
    failures = [{"key": k, "tokens": n} for n, k in over]
    longest = max((n for n, _ in sizes), default=0)
    return _result("check_token_limit", failures,
                   f"Every example fits in {max_tokens} tokens (tokenizer {name})."
                   if max_tokens is not None else f"No token limit set (tokenizer {name}).",
                   f"{len(failures)} examples exceed {max_tokens} tokens (tokenizer {name}).",
                   {"tokenizer": name, "max_tokens": max_tokens, "longest": longest,
                    "mean": round(sum(n for n, _ in sizes) / len(sizes), 2) if sizes else 0.0,
                    "examples": len(sizes)})


# ---- leakage and held-out ---------------------------------------------------------------------

def check_no_leakage(train: Sequence[Example], validation: Sequence[Example], *,
                     threshold: float, vectors: Any = None) -> CheckResult:
    """Examples without a vector get one as in the build (``vectors[key]``, else MiniLM)."""
    failures: list[dict[str, Any]] = []
    train_sessions = {e.session_key for e in train}
    train_examples = {e.example_hash: e.key for e in train}
    train_prompts = {e.prompt_hash: e.key for e in train}
    exact = prompts = sessions = 0
    for ex in validation:
        if ex.session_key in train_sessions:
            sessions += 1
            failures.append({"key": ex.key, "kind": "session", "session_key": ex.session_key})
        if ex.example_hash in train_examples:
            exact += 1
            failures.append({"key": ex.key, "kind": "example_hash",
                             "train_key": train_examples[ex.example_hash]})
        elif ex.prompt_hash in train_prompts:
            prompts += 1
            failures.append({"key": ex.key, "kind": "prompt_hash",
                             "train_key": train_prompts[ex.prompt_hash]})
    near = 0
    if train and validation:
        tally: Counter = Counter()
        tv = with_vectors(list(train), vectors, tally)
        vv = with_vectors(list(validation), vectors, tally)
        for a, b, s in similar_pairs(vector_matrix(vv), vector_matrix(tv), threshold=threshold):
            if vv[a].example_hash == tv[b].example_hash or vv[a].prompt_hash == tv[b].prompt_hash:
                continue  # already reported as exact
            near += 1
            failures.append({"key": vv[a].key, "kind": "near_duplicate",
                             "train_key": tv[b].key, "similarity": round(s, 4)})
    return _result("check_no_leakage", failures,
                   f"No validation example shares a session, an example or a prompt with train, "
                   f"and none is within cosine {threshold:g} of a train question.",
                   f"Validation leaks into train: {sessions} shared sessions, {exact} identical "
                   f"examples, {prompts} identical prompts, {near} near-duplicate pairs.",
                   {"sessions": sessions, "example_hash": exact, "prompt_hash": prompts,
                    "near_duplicate_pairs": near, "threshold": threshold,
                    "train": len(train), "validation": len(validation)})


def check_no_held_out(examples: Iterable[Example], held_out: Any) -> CheckResult:
    keys = getattr(held_out, "keys", frozenset()) if held_out is not None else frozenset()
    prompts = getattr(held_out, "prompt_hashes", frozenset()) if held_out is not None \
        else frozenset()
    failures = []
    n = 0
    for ex in examples:
        n += 1
        if ex.key in keys:
            failures.append({"key": ex.key, "by": "key"})
        elif ex.prompt_hash in prompts:
            failures.append({"key": ex.key, "by": "prompt_hash"})
    return _result("check_no_held_out", failures,
                   "No evaluation item (by key or prompt hash) is in the dataset.",
                   f"{len(failures)} evaluation items are in the dataset.",
                   {"examples": n, "held_out_keys": len(keys),
                    "held_out_prompts": len(prompts)})


# ---- size and balance -------------------------------------------------------------------------

def check_min_size(train: Sequence[Example], min_size: int) -> CheckResult:
    n = len(train)
    ok = n >= min_size
    return CheckResult("check_min_size", ok,
                       f"{n} train examples (at least {min_size} required).",
                       {"train": n, "min_size": min_size},
                       () if ok else ({"train": n, "short_by": min_size - n},))


def check_category_balance(examples: Iterable[Example], spec: DatasetSpec) -> CheckResult:
    """Over the new examples (replay items, ``source`` ``replay:*``, are skipped: replay is
    bounded by ``replay_share`` instead)."""
    counts = Counter(e.category for e in examples if not e.is_replay)
    total = sum(counts.values())
    failures = []
    for cat, n in sorted(counts.items()):
        cap = spec.cap_for(cat)
        if cap is not None and n > cap:
            failures.append({"category": cat, "count": n, "cap": cap})
    share_bound = spec.max_category_share
    if share_bound is not None and len(counts) > 1:
        for cat, n in sorted(counts.items()):
            if n / total > share_bound + 1e-9:
                failures.append({"category": cat, "share": round(n / total, 4),
                                 "max_category_share": share_bound})
    return _result("check_category_balance", failures,
                   "Every category within its cap and the category share bound.",
                   f"{len(failures)} category bounds exceeded.",
                   {"categories": dict(sorted(counts.items())), "new_examples": total,
                    "max_category_share": share_bound,
                    "shares": {c: round(n / total, 4) for c, n in sorted(counts.items())}
                    if total else {}})


def run_checks(build: DatasetBuild, held_out: Any, tokenizer: Any = None,
               *, vectors: Any = None) -> dict[str, CheckResult]:
    """Every check over ``build`` (check name -> result). ``tokenizer`` is required when the
    spec sets ``max_tokens`` (e.g. ``resolve_tokenizer(base_model, home)``)."""
    spec = build.spec
    if spec.max_tokens is not None and tokenizer is None:
        raise ValueError("run_checks: the spec sets max_tokens, so a tokenizer is required "
                         "(see ml.datasets.tokens.resolve_tokenizer)")
    every = list(build.train) + list(build.validation)
    results = [
        check_no_pii(every),
        check_roles(every),
        check_no_empty_turns(every),
        check_no_leakage(build.train, build.validation, threshold=spec.near_dup_threshold,
                         vectors=vectors),
        check_no_held_out(every, held_out),
        check_min_size(build.train, spec.min_size),
        check_category_balance(every, spec),
    ]
    if tokenizer is not None:
        results.append(check_token_limit(every, tokenizer, spec.max_tokens))
    return {r.name: r for r in results}
