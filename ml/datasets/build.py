"""Building one training dataset version: :func:`build_dataset` (a pure function: no store, no
Dagster; the ``training_dataset`` asset reads its inputs and records its output).

Stages, in order (every candidate that does not make it is in ``DatasetBuild.dropped`` with its
``stage`` and ``reason``):

0. ``invalid`` (the conversation rules of ``ml.datasets.examples.conversation_problem``: optional
   system first, user/assistant alternating from user, prompt ending with user, no empty turn,
   non-blank completion), ``filter`` (the spec's filters and tags), ``incremental`` (with
   ``spec.incremental``: keys of the previous version, which replay may bring back),
   ``held_out`` (key or prompt hash of an evaluation item), ``too_long`` (more than
   ``spec.max_tokens`` tokens, when a token counter is given).
1. ``exact_duplicate``: same :func:`example_hash` (prompt normalised and casefolded, completion
   normalised). The keeper is the first in the *priority order*: highest quality (none last),
   then earliest timestamp (none last), then key.
2. ``near_duplicate``: question vectors with cosine >= ``spec.near_dup_threshold``, found by
   ``ml.datasets.similarity.similar_pairs`` (an in-memory LanceDB table). Walking the priority
   order, an example is dropped when an already kept one is that similar
   (``near_duplicate_of:<key>``). Vectors: ``Example.vector``, else ``vectors[key]`` (e.g.
   :func:`stored_vectors`, the ``question`` rows of ``interaction_embeddings``), else
   ``ml.embeddings.encode`` of the last user message, i.e. the same text the stored vectors embed.
3. ``over_cap``: a category above its cap (``spec.cap_for``) keeps ``cap`` examples chosen by
   diversity sampling: scikit-learn ``KMeans(n_clusters=cap, random_state=spec.seed,
   n_init=10)`` over the category's vectors (rows in key order), and from each cluster the
   example nearest its centroid (seed 003, "_select_diverse_instances").
4. ``balance``: with more than one category, no category above ``spec.max_category_share`` of
   the new examples: the largest categories are cut to the highest common bound that satisfies
   it (water-filling), by the same diversity sampling. A bound no mix can meet (fewer categories
   than ``1 / share``) is left to the balance check to report.
5. split (new examples only): sessions (``session_key``) are the unit. Each session belongs to its
   majority category (ties: the smallest name). Per category, its sessions in a seeded-hash order
   go to validation, first fit, while the category's validation count stays within
   ``round(validation_share * n)`` and at least one session stays in train. A category with a
   single session is all train. So no session is on both sides, and each category's share is
   reached as closely as whole sessions allow.
6. replay: earlier approved samples and good historical interactions, into **train only**, up to
   ``floor(replay_share * n_train_new / (1 - replay_share))`` items, i.e. at most
   ``replay_share`` of the final train split. (Replay is sized on the train split, hence after
   the split.) Eligible: valid, inside the spec's scope filters (tenants, categories, intents,
   tags; not the date, quality or source filters, which select *new* data), quality >=
   ``replay_min_quality`` (a reviewer-approved sample without a quality passes), not held out,
   not already in the set by key, example hash or prompt hash (a new correction of the same
   prompt supersedes the old answer), and not from a session that is in validation. The quota
   is spread over categories in proportion to the eligible pool (largest remainder); within a
   category items are taken in seeded-hash order, each one skipped when it is a near-duplicate
   of the set or of an item already taken; an unfilled quota is filled from the remaining pool
   in the same order. Pool items left over are not "dropped", only counted (``not_sampled``).

Reproducibility: the result depends only on the spec and the *set* of inputs (everything is
put in key order first, every random choice is a seeded hash or a seeded k-means), not on
input order. ``version_hash`` is SHA-256 of ``spec.to_json()`` and the sorted
``(key, split, example_hash)`` of every item: the same spec over the same data gives the same
hash, and any change of spec, membership, split or text changes it.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from typing import Any

import numpy as np

from ml.datasets.examples import (
    Example,
    as_examples,
    held_out_reason,
    seeded_rank,
)
from ml.datasets.similarity import similar_pairs
from ml.datasets.spec import DatasetSpec, source_matches

STAGES = ("invalid", "filter", "incremental", "held_out", "too_long", "exact_duplicate",
          "near_duplicate", "over_cap", "balance")
REPLAY_STAGES = ("invalid", "filter", "quality", "held_out", "in_dataset", "exact_duplicate",
                 "session_in_validation", "near_duplicate")
SPLITS = ("train", "validation")
N_INIT = 10
_REPLAY_CHUNK = 64


@dataclass(frozen=True)
class Dropped:
    """A candidate (``pool="candidates"``) or replay-pool item (``pool="replay"``) left out, at
    ``stage`` (one of ``STAGES`` / ``REPLAY_STAGES``) for ``reason`` (e.g. ``held_out:prompt``,
    ``near_duplicate_of:sample:12``, ``over_cap``)."""

    key: str
    stage: str
    reason: str
    pool: str
    category: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "stage": self.stage, "reason": self.reason, "pool": self.pool,
                "category": self.category, "source": self.source}


@dataclass(frozen=True)
class DatasetBuild:
    """One built dataset version.

    ``train`` / ``validation``: examples in key order, with their vectors; replay items are in
    ``train`` (their ``source`` starts with ``replay:``). ``dropped``: sorted by pool, stage
    order, key. ``counts`` / ``stats``: JSON-able (see :func:`build_dataset`)."""

    spec: DatasetSpec
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    dropped: tuple[Dropped, ...]
    counts: dict[str, Any]
    stats: dict[str, Any]
    version_hash: str

    def split_items(self) -> list[tuple[str, Example]]:
        """(split, example) of every item, train first, each split in key order."""
        return [("train", e) for e in self.train] + [("validation", e) for e in self.validation]

    def split_of(self) -> dict[str, str]:
        """key -> split."""
        return {e.key: s for s, e in self.split_items()}

    def items(self) -> list[dict[str, Any]]:
        """One mapping per item with the fields ``store.datasets.record_dataset`` takes
        (item_key, review_item_id, split, source, category, tenant_id, session_key,
        prompt_hash, example_hash)."""
        return [{"item_key": e.key, "review_item_id": e.review_item_id, "split": s,
                 "source": e.source, "category": e.category, "tenant_id": e.tenant_id,
                 "session_key": e.session_key, "prompt_hash": e.prompt_hash,
                 "example_hash": e.example_hash} for s, e in self.split_items()]


def version_hash(spec_json: str, entries: Iterable[tuple[str, str, str]]) -> str:
    """SHA-256 of the spec's canonical JSON and the sorted (key, split, example_hash) rows."""
    h = hashlib.sha256(spec_json.encode("utf-8"))
    for key, split, ehash in sorted(entries):
        h.update(f"\n{key}\t{split}\t{ehash}".encode())
    return h.hexdigest()


# ---- vectors ----------------------------------------------------------------------------------

def interaction_ref(ex: Example) -> tuple[str, str] | None:
    """(tenant_id, interaction_id) of the interaction ``ex`` came from: ``interaction_id``, else
    parsed from an ``interaction:<tenant>/<id>`` key."""
    if ex.interaction_id:
        return ex.tenant_id, ex.interaction_id
    if ex.key.startswith("interaction:"):
        tenant, sep, iid = ex.key[len("interaction:"):].partition("/")
        if sep and iid:
            return tenant, iid
    return None


def stored_vectors(db: Any, examples: Iterable[Example | Mapping[str, Any]]
                   ) -> dict[str, np.ndarray]:
    """key -> the stored question vector (``interaction_embeddings``, ``kind = 'question'``) of
    each example's interaction, for the examples whose interaction has one. ``db``: a LanceDB
    connection (``ml.embeddings.connect``)."""
    from ml.embeddings import read_question_vectors

    exs = as_examples(examples, "examples")
    refs = {ex.key: ref for ex in exs if (ref := interaction_ref(ex)) is not None}
    found = read_question_vectors(db, sorted(set(refs.values())))
    return {key: found[ref] for key, ref in refs.items() if ref in found}


def with_vectors(examples: Sequence[Example], vectors: Mapping[str, Any] | None,
                 tally: Counter) -> list[Example]:
    """``examples`` with a vector each: their own, else ``vectors[key]``, else MiniLM of the last
    user message (counted in ``tally`` as given / mapped / encoded)."""
    out: list[Example | None] = []
    todo: list[int] = []
    for ex in examples:
        if ex.vector is not None:
            tally["given"] += 1
            out.append(ex)
        elif vectors is not None and ex.key in vectors:
            tally["mapped"] += 1
            out.append(ex.with_vector(np.asarray(vectors[ex.key], dtype=np.float32)))
        else:
            todo.append(len(out))
            out.append(None)
    if todo:
        from ml.embeddings import encode

        encoded = encode([examples[i].question for i in todo])
        for i, v in zip(todo, encoded, strict=True):
            out[i] = examples[i].with_vector(v)
        tally["encoded"] += len(todo)
    done = [e for e in out if e is not None]
    dims = {int(e.vector.shape[0]) for e in done}
    if len(dims) > 1:
        raise ValueError(f"example vectors have different dimensions {sorted(dims)}")
    return done


def vector_matrix(examples: Sequence[Example]) -> np.ndarray:
    """The examples' vectors as rows (float32)."""
    if not examples:
        return np.zeros((0, 1), dtype=np.float32)
    return np.stack([e.vector for e in examples]).astype(np.float32)


# ---- ordering ---------------------------------------------------------------------------------

_LATEST = datetime.max.replace(tzinfo=UTC)


def priority(ex: Example) -> tuple:
    """The keeper order among duplicates: highest quality first (none last), then the earliest
    timestamp (none last), then key."""
    return (-(ex.quality if ex.quality is not None else -math.inf), ex.timestamp or _LATEST,
            ex.key)


# ---- filters ----------------------------------------------------------------------------------

def filter_reason(ex: Example, spec: DatasetSpec, *, scope_only: bool = False) -> str | None:
    """Why the spec's filters leave ``ex`` out (None: it passes). ``scope_only``: only the
    tenant, category, intent and tag filters (what replay obeys)."""
    f = spec.filters
    if f.tenants and ex.tenant_id not in f.tenants:
        return "filter:tenant"
    if f.categories and ex.category not in f.categories:
        return "filter:category"
    if f.intents and ex.intent not in f.intents:
        return "filter:intent"
    hit = sorted(set(ex.tags) & set(spec.exclude_tags))
    if hit:
        return f"filter:exclude_tag:{hit[0]}"
    if scope_only:
        return None
    if spec.include_tags and not set(ex.tags) & set(spec.include_tags):
        return "filter:include_tags"
    if f.sources and not source_matches(ex.source, f.sources):
        return "filter:source"
    if f.date_from or f.date_to:
        if ex.timestamp is None:
            return "filter:date"
        if f.date_from and ex.timestamp < datetime.combine(f.date_from, time.min, UTC):
            return "filter:date"
        if f.date_to and ex.timestamp > datetime.combine(f.date_to, time.max, UTC):
            return "filter:date"
    if f.quality_min is not None or f.quality_max is not None:
        if ex.quality is None:
            return "filter:quality"
        if f.quality_min is not None and ex.quality < f.quality_min:
            return "filter:quality"
        if f.quality_max is not None and ex.quality > f.quality_max:
            return "filter:quality"
    return None


# ---- diversity sampling -----------------------------------------------------------------------

def diverse_subset(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """``n`` of ``examples`` (n < len): k-means with ``n`` clusters over their vectors (rows in
    key order, ``random_state=seed``, ``n_init=10``), and from each cluster the example nearest
    its centroid. Should a cluster come out empty, the remaining places go to the unpicked
    examples nearest their own centroid."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    rows = sorted(examples, key=lambda e: e.key)
    if n >= len(rows):
        return rows
    x = vector_matrix(rows).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=n, random_state=seed, n_init=N_INIT).fit(x)
    labels = km.labels_
    dist = np.linalg.norm(x - km.cluster_centers_[labels], axis=1)
    picked: list[int] = []
    for c in range(n):
        members = np.flatnonzero(labels == c)
        if len(members):
            picked.append(int(members[np.argmin(dist[members])]))  # first index on ties
    if len(picked) < n:
        rest = sorted((i for i in range(len(rows)) if i not in set(picked)),
                      key=lambda i: (dist[i], rows[i].key))
        picked.extend(rest[:n - len(picked)])
    return sorted((rows[i] for i in picked), key=lambda e: e.key)


def balance_bound(sizes: Mapping[str, int], share: float) -> int | None:
    """The largest per-category size T such that cutting every category to min(size, T) leaves
    none above ``share`` of the total; None when no cut is needed or no cut can do it (fewer
    categories than 1 / share)."""
    if len(sizes) < 2 or len(sizes) * share < 1 - 1e-12:
        return None
    total = sum(sizes.values())
    if max(sizes.values()) <= share * total + 1e-9:
        return None
    bound = max(sizes.values())
    while True:
        kept = sum(min(s, bound) for s in sizes.values())
        new = math.floor(share * kept + 1e-9)
        if new >= bound:
            return bound
        bound = new


# ---- split ------------------------------------------------------------------------------------

def split_sessions(examples: Sequence[Example], validation_share: float, seed: int
                   ) -> tuple[list[Example], list[Example]]:
    """(train, validation): whole sessions, stratified by category (the rule in the module
    docstring)."""
    sessions: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        sessions[ex.session_key].append(ex)
    by_category: dict[str, list[str]] = defaultdict(list)
    for skey, items in sessions.items():
        counts = Counter(e.category for e in items)
        top = max(counts.values())
        by_category[min(c for c, n in counts.items() if n == top)].append(skey)
    validation: set[str] = set()
    for _cat, skeys in sorted(by_category.items()):
        if len(skeys) < 2 or validation_share <= 0:
            continue
        n = sum(len(sessions[s]) for s in skeys)
        target = math.floor(validation_share * n + 0.5)
        taken = 0
        for skey in sorted(skeys, key=lambda s: (seeded_rank(seed, "split", s), s)):
            size = len(sessions[skey])
            if taken + size <= target and n - taken - size >= 1:
                validation.add(skey)
                taken += size
            if taken >= target:
                break
    train = sorted((e for e in examples if e.session_key not in validation), key=lambda e: e.key)
    val = sorted((e for e in examples if e.session_key in validation), key=lambda e: e.key)
    return train, val


# ---- replay -----------------------------------------------------------------------------------

def largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``total`` spread over the keys in proportion to ``weights`` (largest remainder; ties by
    key), never more than a key's weight."""
    weights = {k: w for k, w in weights.items() if w > 0}
    whole = sum(weights.values())
    if not whole or total <= 0:
        return dict.fromkeys(weights, 0)
    total = min(total, whole)
    exact = {k: total * w / whole for k, w in weights.items()}
    out = {k: min(weights[k], math.floor(v)) for k, v in exact.items()}
    left = total - sum(out.values())
    for k in sorted(weights, key=lambda k: (-(exact[k] - math.floor(exact[k])), k)):
        if left <= 0:
            break
        if out[k] < weights[k]:
            out[k] += 1
            left -= 1
    return out


def _take_replay(ordered: Sequence[Example], quota: int, chosen: list[Example],
                 base: list[Example], threshold: float, vectors: Mapping[str, Any] | None,
                 tally: Counter, drop: Callable[[Example, str, str], None],
                 taken_hashes: set[str]) -> int:
    """Walk ``ordered`` in chunks, appending to ``chosen`` until ``quota`` items are taken; skip
    exact and near-duplicates of ``base`` + ``chosen``. Returns how many items were looked at."""
    looked = 0
    i = 0
    want = quota
    while want > 0 and i < len(ordered):
        chunk = with_vectors(ordered[i:i + max(_REPLAY_CHUNK, 2 * want)], vectors, tally)
        i += len(chunk)
        known = base + chosen
        near_known: dict[int, tuple[float, str]] = {}
        if known:
            for a, b, s in similar_pairs(vector_matrix(chunk), vector_matrix(known), threshold=threshold):
                cand = (s, known[b].key)
                if a not in near_known or (-cand[0], cand[1]) < (-near_known[a][0],
                                                                 near_known[a][1]):
                    near_known[a] = cand
        within: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for a, b, s in similar_pairs(vector_matrix(chunk), threshold=threshold):
            if b < a:
                within[a].append((b, s))
        accepted: set[int] = set()
        for j, ex in enumerate(chunk):
            if want <= 0:
                break
            looked += 1
            if ex.example_hash in taken_hashes:
                drop(ex, "exact_duplicate", "exact_duplicate_of_replay")
                continue
            if j in near_known:
                drop(ex, "near_duplicate", f"near_duplicate_of:{near_known[j][1]}")
                continue
            earlier = [(s, chunk[b].key) for b, s in within[j] if b in accepted]
            if earlier:
                best = min(earlier, key=lambda t: (-t[0], t[1]))
                drop(ex, "near_duplicate", f"near_duplicate_of:{best[1]}")
                continue
            accepted.add(j)
            chosen.append(ex)
            taken_hashes.add(ex.example_hash)
            want -= 1
    return looked


# ---- the build --------------------------------------------------------------------------------

def build_dataset(candidates: Iterable[Example | Mapping[str, Any]],
                  replay_pool: Iterable[Example | Mapping[str, Any]],
                  spec: DatasetSpec, held_out: Any = None, *,
                  vectors: Mapping[str, Any] | None = None,
                  previous_keys: Iterable[str] = (),
                  count_tokens: Callable[[Sequence[Mapping[str, str]]], int] | None = None,
                  ) -> DatasetBuild:
    """Build a dataset version (stages and guarantees: the module docstring).

    ``candidates`` and ``replay_pool``: :class:`Example` objects or mappings of their fields.
    ``held_out``: an object with ``keys`` and ``prompt_hashes`` (``ml.datasets.HeldOut``,
    ``store.datasets.held_out``) or None. ``vectors``: key -> question vector for examples
    without ``vector`` (e.g. :func:`stored_vectors`); the rest are encoded with MiniLM.
    ``previous_keys``: the keys of the previous version (used with ``spec.incremental``).
    ``count_tokens``: conversation -> tokens (``ml.datasets.tokens.token_counter``), for
    ``spec.max_tokens``.

    ``counts``: ``input`` (candidates, replay_pool), ``after`` (examples left after each
    stage), ``dropped`` / ``replay_dropped`` (per stage), ``splits`` (train, validation,
    replay), ``by_category`` / ``by_source`` (per split, replay counted in train and in
    ``replay``), ``vectors`` (given, mapped, encoded), ``replay`` (target, eligible, added,
    not_sampled), ``balance`` (bound, feasible). ``stats``: ``category_mix``, ``quality``,
    ``mean_prompt_chars``, ``mean_completion_chars``, ``mean_turns``, ``replay_share``.
    """
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"spec must be a DatasetSpec, got {type(spec).__name__}")
    cands = sorted(as_examples(candidates, "candidates"), key=lambda e: e.key)
    pool = sorted(as_examples(replay_pool, "replay_pool"), key=lambda e: e.key)
    previous = frozenset(previous_keys) if spec.incremental else frozenset()
    dropped: list[Dropped] = []
    after: dict[str, int] = {}
    tally: Counter = Counter()

    def drop(ex: Example, stage: str, reason: str, pool_name: str = "candidates") -> None:
        dropped.append(Dropped(ex.key, stage, reason, pool_name, ex.category, ex.source))

    # 0. validity, filters, incremental, held out, length
    kept: list[Example] = []
    for ex in cands:
        why = ex.problem()
        if why:
            drop(ex, "invalid", f"invalid: {why}")
        elif reason := filter_reason(ex, spec):
            drop(ex, "filter", reason)
        elif ex.key in previous:
            drop(ex, "incremental", "in_previous_version")
        elif reason := held_out_reason(ex, held_out):
            drop(ex, "held_out", reason)
        elif count_tokens is not None and spec.max_tokens is not None \
                and (n := count_tokens(ex.conversation())) > spec.max_tokens:
            drop(ex, "too_long", f"over_max_tokens:{n}")
        else:
            kept.append(ex)
    after["eligible"] = len(kept)

    # 1. exact duplicates
    kept.sort(key=priority)
    first: dict[str, Example] = {}
    unique: list[Example] = []
    for ex in kept:
        if ex.example_hash in first:
            drop(ex, "exact_duplicate", f"exact_duplicate_of:{first[ex.example_hash].key}")
        else:
            first[ex.example_hash] = ex
            unique.append(ex)
    after["exact_duplicate"] = len(unique)

    # 2. near duplicates (unique is in priority order)
    unique = with_vectors(unique, vectors, tally)
    neighbours: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for a, b, s in similar_pairs(vector_matrix(unique), threshold=spec.near_dup_threshold):
        neighbours[a].append((b, s))
    alive: list[Example] = []
    kept_idx: set[int] = set()
    for i, ex in enumerate(unique):
        earlier = [(s, unique[j].key) for j, s in neighbours[i] if j < i and j in kept_idx]
        if earlier:
            nearest = min(earlier, key=lambda t: (-t[0], t[1]))[1]
            drop(ex, "near_duplicate", f"near_duplicate_of:{nearest}")
        else:
            kept_idx.add(i)
            alive.append(ex)
    after["near_duplicate"] = len(alive)

    # 3. category caps (diversity sampling)
    by_cat: dict[str, list[Example]] = defaultdict(list)
    for ex in alive:
        by_cat[ex.category].append(ex)
    for cat in sorted(by_cat):
        cap = spec.cap_for(cat)
        if cap is not None and len(by_cat[cat]) > cap:
            keep = diverse_subset(by_cat[cat], cap, spec.seed)
            keys = {e.key for e in keep}
            for ex in sorted(by_cat[cat], key=lambda e: e.key):
                if ex.key not in keys:
                    drop(ex, "over_cap", f"over_cap:{cap}")
            by_cat[cat] = keep
    after["over_cap"] = sum(len(v) for v in by_cat.values())

    # 4. balance
    bound = None
    feasible = True
    if spec.max_category_share is not None and len(by_cat) > 1:
        sizes = {c: len(v) for c, v in by_cat.items()}
        feasible = len(sizes) * spec.max_category_share >= 1 - 1e-12
        bound = balance_bound(sizes, spec.max_category_share)
        if bound is not None:
            for cat in sorted(by_cat):
                if len(by_cat[cat]) > bound:
                    keep = diverse_subset(by_cat[cat], bound, spec.seed)
                    keys = {e.key for e in keep}
                    for ex in sorted(by_cat[cat], key=lambda e: e.key):
                        if ex.key not in keys:
                            drop(ex, "balance", f"over_max_category_share:{bound}")
                    by_cat[cat] = keep
    new = sorted((e for v in by_cat.values() for e in v), key=lambda e: e.key)
    after["balance"] = len(new)

    # 5. split the new examples by session
    train, validation = split_sessions(new, spec.validation_share, spec.seed)

    # 6. replay into train
    target = math.floor(spec.replay_share * len(train) / (1 - spec.replay_share) + 1e-9)
    in_set_keys = {e.key for e in new}
    in_set_hashes = {e.example_hash for e in new}
    in_set_prompts = {e.prompt_hash for e in new}
    val_sessions = {e.session_key for e in validation}
    eligible: list[Example] = []

    def rdrop(ex: Example, stage: str, reason: str) -> None:
        drop(ex, stage, reason, "replay")

    for ex in pool:
        why = ex.problem()
        if why:
            rdrop(ex, "invalid", f"invalid: {why}")
        elif reason := filter_reason(ex, spec, scope_only=True):
            rdrop(ex, "filter", reason)
        elif (ex.quality is None and ex.source != "replay:approved") or \
                (ex.quality is not None and ex.quality < spec.replay_min_quality):
            rdrop(ex, "quality", f"below_replay_min_quality:{spec.replay_min_quality:g}")
        elif reason := held_out_reason(ex, held_out):
            rdrop(ex, "held_out", reason)
        elif ex.key in in_set_keys:
            rdrop(ex, "in_dataset", "key_in_dataset")
        elif ex.example_hash in in_set_hashes:
            rdrop(ex, "exact_duplicate", "example_in_dataset")
        elif ex.prompt_hash in in_set_prompts:
            rdrop(ex, "exact_duplicate", "prompt_in_dataset")
        elif ex.session_key in val_sessions:
            rdrop(ex, "session_in_validation", "session_in_validation")
        else:
            eligible.append(ex)
    chosen: list[Example] = []
    looked: set[str] = set()
    if target > 0 and eligible:
        pool_cat: dict[str, list[Example]] = defaultdict(list)
        for ex in eligible:
            pool_cat[ex.category].append(ex)
        quotas = largest_remainder(target, {c: len(v) for c, v in pool_cat.items()})
        taken_hashes: set[str] = set()

        def replay_order(items: Iterable[Example]) -> list[Example]:
            return sorted(items, key=lambda e: (seeded_rank(spec.seed, "replay", e.key), e.key))

        for cat in sorted(pool_cat):  # each category's quota
            ordered = replay_order(pool_cat[cat])
            seen = _take_replay(ordered, quotas.get(cat, 0), chosen, new,
                                spec.near_dup_threshold, vectors, tally, rdrop, taken_hashes)
            looked.update(e.key for e in ordered[:seen])
        if len(chosen) < target:  # quotas a category could not fill: from the rest of the pool
            rest = replay_order(e for e in eligible if e.key not in looked)
            _take_replay(rest, target - len(chosen), chosen, new, spec.near_dup_threshold,
                         vectors, tally, rdrop, taken_hashes)
    replay = sorted((replace(e, source=e.source if e.is_replay else f"replay:{e.source}")
                     for e in chosen), key=lambda e: e.key)
    final_train = sorted(train + replay, key=lambda e: e.key)

    dropped.sort(key=lambda d: (d.pool != "candidates",
                                (STAGES if d.pool == "candidates" else REPLAY_STAGES).index(d.stage),
                                d.key))
    counts = _counts(cands, pool, dropped, after, final_train, validation, replay, tally,
                     target, len(eligible), bound, feasible)
    stats = dataset_stats(final_train, validation)
    vhash = version_hash(spec.to_json(), [(e.key, "train", e.example_hash) for e in final_train]
                         + [(e.key, "validation", e.example_hash) for e in validation])
    return DatasetBuild(spec=spec, train=tuple(final_train), validation=tuple(validation),
                        dropped=tuple(dropped), counts=counts, stats=stats, version_hash=vhash)


def _per(examples: Iterable[tuple[str, Example]], attr: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split, ex in examples:
        row = out.setdefault(getattr(ex, attr), {"train": 0, "validation": 0, "replay": 0})
        row[split] += 1
        if split == "train" and ex.is_replay:
            row["replay"] += 1
    return dict(sorted(out.items()))


def _counts(cands: list[Example], pool: list[Example], dropped: list[Dropped],
            after: dict[str, int], train: list[Example], validation: list[Example],
            replay: list[Example], tally: Counter, target: int, eligible: int,
            bound: int | None, feasible: bool) -> dict[str, Any]:
    cand_drops = Counter(d.stage for d in dropped if d.pool == "candidates")
    pool_drops = Counter(d.stage for d in dropped if d.pool == "replay")
    both = [("train", e) for e in train] + [("validation", e) for e in validation]
    rejected_in_walk = pool_drops["near_duplicate"] + sum(
        1 for d in dropped if d.pool == "replay" and d.reason == "exact_duplicate_of_replay")
    return {
        "input": {"candidates": len(cands), "replay_pool": len(pool)},
        "after": after,
        "dropped": {s: cand_drops[s] for s in STAGES},
        "replay_dropped": {s: pool_drops[s] for s in REPLAY_STAGES},
        "splits": {"train": len(train), "validation": len(validation), "replay": len(replay)},
        "by_category": _per(both, "category"),
        "by_source": _per(both, "source"),
        "vectors": {k: tally[k] for k in ("given", "mapped", "encoded")},
        "replay": {"target": target, "eligible": eligible, "added": len(replay),
                   "not_sampled": max(0, eligible - len(replay) - rejected_in_walk)},
        "balance": {"bound": bound, "feasible": feasible},
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _mean(xs: Sequence[float]) -> float:
    return round(statistics.fmean(xs), 4) if xs else 0.0


def dataset_stats(train: Sequence[Example], validation: Sequence[Example]) -> dict[str, Any]:
    """Category mix (shares), quality distribution, mean prompt / completion length (characters)
    and turns, replay share of train; overall and per split. Numbers rounded to 4 decimals."""
    def block(examples: Sequence[Example]) -> dict[str, Any]:
        n = len(examples)
        cats = Counter(e.category for e in examples)
        qs = sorted(e.quality for e in examples if e.quality is not None)
        quality: dict[str, Any] = {"count": len(qs), "missing": n - len(qs)}
        if qs:
            quality.update({"mean": round(statistics.fmean(qs), 4), "min": round(qs[0], 4),
                            "p25": round(_quantile(qs, 0.25), 4),
                            "median": round(_quantile(qs, 0.5), 4),
                            "p75": round(_quantile(qs, 0.75), 4), "max": round(qs[-1], 4)})
        return {
            "n": n,
            "category_mix": {c: round(k / n, 4) for c, k in sorted(cats.items())},
            "quality": quality,
            "mean_prompt_chars": _mean([sum(len(m["content"]) for m in e.messages)
                                       for e in examples]),
            "mean_completion_chars": _mean([len(e.completion) for e in examples]),
            "mean_turns": _mean([len(e.messages) + 1 for e in examples]),
        }
    everything = list(train) + list(validation)
    out = block(everything)
    out["replay_share"] = round(sum(e.is_replay for e in train) / len(train), 4) if train else 0.0
    out["splits"] = {"train": block(train), "validation": block(validation)}
    return out
