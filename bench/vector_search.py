"""Benchmark: vector search on LanceDB ``interaction_embeddings`` at 200k rows (issue 13, item 2).

    python bench/vector_search.py [--n 200000] [--approved 3000] [--queries 200]

Builds a table with the schema of ``ml.embeddings`` holding ``--n`` ``question`` rows (appended in
5,000-row batches like the embeddings asset, so the table has the fragments of a real one) and
``--approved`` ``approved_reply`` rows over 4 tenants, then measures:

* exact (flat) search, unfiltered top-10 and the retrieval teacher's filtered search (``kind =
  'approved_reply' AND tenant_id = ... AND interaction_id != ...``), one query at a time (today's
  path) and batched (several query vectors in one LanceDB search), before and after
  ``ml.vector_index.maintain`` (compaction + scalar indexes on kind / tenant_id / interaction_id);
* for each ANN index type (IVF_PQ, IVF_HNSW_SQ, IVF_FLAT): build time, recall@10 of the unfiltered
  top-10 against the exact top-10 (numpy, float64), query cost one by one and batched, and the
  recall of the teacher's filtered search with the index present (prefilter) against exact;
* the cost of ``maintain`` after one more 5,000-row append with an index present (delta).

Every figure is wall time, CPU-seconds (this process, all threads, + children) per query, and the
process's peak RSS so far, with the 1-minute load average next to it (2 shared vCPUs).

Vectors. MiniLM on this CPU embeds ~100 texts/s, so 200k real embeddings would take half an hour;
instead ``--real`` real user questions (OpenAssistant oasst1-en100 prompts, Anthropic HH-RLHF
helpful-base human turns, the demo generator's support questions) are embedded once with
``ml.embeddings.encode`` (cached under ``--cache``), split into *bases* and held-out *queries*, and
each table row is a synthetic paraphrase of a base: ``normalise((1 - a) * base + a * neighbour +
s * d)`` where ``neighbour`` is one of the base's 10 nearest real questions, ``a ~ U(0, 0.35)``,
and ``d`` is the difference of two random real questions (normalised), ``s ~ U(0.2, 0.6)``. The
rows thus lie in the directions real MiniLM questions vary in (not isotropic noise), cluster
around real questions as repeated support questions do (median cosine to the base ~0.9), and a
held-out real question's neighbours are the paraphrases of the real questions near it. The
approved rows are made the same way from their own bases. Results: docs/vector-search.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml import embeddings  # noqa: E402
from ml.teacher.retrieval import SEARCH_K, RetrievalTeacher  # noqa: E402
from ml.vector_index import IndexPolicy, maintain  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TENANTS = ("acme", "globex", "initech", "umbrella")
APPEND_ROWS = 5_000
SCALAR = dict(bitmap_columns=("kind",), btree_columns=("tenant_id", "interaction_id"))


# ---- measuring ---------------------------------------------------------------------------------
def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024


ROWS: list[dict] = []


def measure(name: str, fn: Callable[[], object], *, per: int = 1,
            truth: list[list[str]] | None = None, note: str = "") -> object:
    """Run ``fn`` once, print and keep its figures; with ``truth``, the recall of its result."""
    load = os.getloadavg()[0]
    c0, w0 = cpu_seconds(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
    recall_at = None if truth is None else recall(out, truth)  # type: ignore[arg-type]
    row = {"step": name, "n": per, "wall_s": wall, "cpu_s": cpu, "cpu_ms_per": 1000 * cpu / per,
           "per_cpu_s": per / cpu if cpu > 0 else float("inf"), "recall10": recall_at,
           "rss_mib": peak_rss_mib(), "load": load, "note": note}
    ROWS.append(row)
    rec = "" if recall_at is None else f"  recall {recall_at:.3f}"
    print(f"{name:<58} {per:>5} x  wall {wall:8.3f}s  cpu {cpu:8.3f}s  "
          f"{row['cpu_ms_per']:8.2f} cpu-ms each{rec}  peak RSS {row['rss_mib']:.0f} MiB  "
          f"load {load:.2f} {note}", flush=True)
    return out


# ---- real texts and synthetic rows ----------------------------------------------------------------
def real_questions(limit: int) -> list[str]:
    """User questions from the three real/realistic sources, de-duplicated, in a fixed order."""
    texts: list[str] = []
    with open(DATA / "oasst1-en100" / "en_100_tree.jsonl", encoding="utf-8") as fh:
        for line in fh:
            tree = json.loads(line)
            stack = [tree["prompt"]]
            while stack:
                m = stack.pop()
                if m.get("role") == "prompter":
                    texts.append(m["text"])
                stack.extend(m.get("replies") or [])
    with gzip.open(DATA / "hh-rlhf-helpful-base" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            for turn in json.loads(line)["chosen"].split("\n\nHuman: ")[1:]:
                texts.append(turn.split("\n\nAssistant:")[0])
    from ml.demo.generate import generate_records

    for line in generate_records(6_000, 13):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the generator's deliberately malformed lines
        users = [m["content"] for m in rec.get("messages", []) if m.get("role") == "user"]
        texts.extend(users[-1:])
    seen: dict[str, None] = {}
    for t in texts:
        t = " ".join(str(t).split())[:1000]
        if len(t) >= 8:
            seen.setdefault(t, None)
    out = list(seen)
    rng = np.random.default_rng(7)
    rng.shuffle(out)
    return out[:limit]


def real_vectors(limit: int, cache: Path) -> np.ndarray:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"real_questions_{embeddings.MODEL_NAME}_{limit}.npy"
    if path.exists():
        print(f"real vectors: {path} (cached)")
        return np.load(path)
    texts = real_questions(limit)
    measure(f"embed {len(texts)} real questions (MiniLM, once, cached)",
            lambda: np.save(path, embeddings.encode(texts)), per=len(texts))
    return np.load(path)


def synthesise(bases: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator
               ) -> np.ndarray:
    """``n`` paraphrase-like vectors around ``bases`` (see the module docstring)."""
    sims = bases @ bases.T
    np.fill_diagonal(sims, -1)
    near = np.argsort(-sims, axis=1)[:, :10]
    b = rng.integers(0, len(bases), n)
    nb = near[b, rng.integers(0, near.shape[1], n)]
    a = rng.uniform(0, 0.35, n)[:, None].astype(np.float32)
    d = pool[rng.integers(0, len(pool), n)] - pool[rng.integers(0, len(pool), n)]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    s = rng.uniform(0.2, 0.6, n)[:, None].astype(np.float32)
    v = (1 - a) * bases[b] + a * bases[nb] + s * d
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def arrow_rows(vecs: np.ndarray, kind: str, start: int) -> pa.Table:
    n = len(vecs)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), embeddings.DIM)
    approved = kind == embeddings.KIND_APPROVED_REPLY
    return pa.table({
        "interaction_id": [f"{kind[0]}{start + i}" for i in range(n)],
        "tenant_id": [TENANTS[(start + i) % len(TENANTS)] for i in range(n)],
        "partition_date": ["2026-12-01"] * n,
        "question": [f"question {start + i}" for i in range(n)],
        "vector": flat, "response_vector": flat,
        "qa_relevance": pa.array([0.5] * n, pa.float64()),
        "model": [embeddings.MODEL_NAME] * n, "kind": [kind] * n,
        "answer": [f"answer {start + i}" if approved else None for i in range(n)],
        "origin": ["sample_item" if approved else None] * n,
        "item_id": pa.array([start + i if approved else None for i in range(n)], pa.int64()),
    }, schema=embeddings.embeddings_schema())


# ---- searches ------------------------------------------------------------------------------------
def exact_top(matrix: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> list[list[str]]:
    sims = queries.astype(np.float64) @ matrix.astype(np.float64).T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in top]


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth,
                                                                                   strict=True)]))


def _query(table, vec, k, where=None, tune=None):
    q = table.search(vec, vector_column_name="vector").distance_type("cosine").limit(k)
    if where:
        q = q.where(where, prefilter=True)
    if tune:
        q = tune(q)
    return q.select(["interaction_id", "_distance"])


def one_by_one(table, queries, k, where=None, tune=None) -> list[list[str]]:
    out = []
    for i, v in enumerate(queries):
        w = where(i) if callable(where) else where
        out.append(_query(table, v, k, w, tune).to_arrow().column("interaction_id").to_pylist())
    return out


def batched(table, queries, k, where=None, tune=None, batch=256) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in queries]
    for s in range(0, len(queries), batch):
        part = list(queries[s:s + batch])
        res = _query(table, part if len(part) > 1 else part[0], k, where, tune).to_arrow()
        owners = (res.column("query_index").to_pylist() if "query_index" in res.column_names
                  else [0] * res.num_rows)
        for o, iid in zip(owners, res.column("interaction_id").to_pylist(), strict=True):
            out[s + o].append(iid)
    return out


def teacher_where(tenant: str, iid: str | None = None) -> str:
    w = f"kind = '{embeddings.KIND_APPROVED_REPLY}' AND tenant_id = '{tenant}'"
    return w + (f" AND interaction_id != '{iid}'" if iid else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="question rows")
    ap.add_argument("--approved", type=int, default=3_000, help="approved_reply rows")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--one-by-one", type=int, default=100,
                    help="queries timed one at a time (the slow path)")
    ap.add_argument("--real", type=int, default=6_000, help="real questions embedded")
    ap.add_argument("--index-types", default="IVF_PQ,IVF_HNSW_SQ,IVF_FLAT")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "LEARNLOOP_BENCH_CACHE", Path.home() / ".cache" / "learnloop-bench")))
    ap.add_argument("--dir", type=Path, default=None, help="LanceDB directory (default: temp)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = ap.parse_args()
    os.environ.setdefault("LANCE_LOG", "error")
    print(f"machine: {platform.machine()}, {os.cpu_count()} vCPU, {platform.platform()}, "
          f"python {sys.version.split()[0]}, load average {os.getloadavg()}")
    rng = np.random.default_rng(13)
    real = real_vectors(args.real, args.cache)
    real = real[np.linalg.norm(real, axis=1) > 0]
    nq = args.queries
    queries, rest = real[:nq], real[nq:]
    approved_bases, bases = rest[:len(rest) // 5], rest[len(rest) // 5:]
    questions = synthesise(bases, real, args.n, rng)
    approved = synthesise(approved_bases, real, args.approved, rng)
    cos_base = float(np.median(np.max(questions[:2000] @ bases.T, axis=1)))
    print(f"{len(real)} real questions: {nq} held-out queries, {len(bases)} bases for {args.n} "
          f"question rows, {len(approved_bases)} for {args.approved} approved rows; median "
          f"cosine of a row to its nearest base {cos_base:.3f}")

    root = args.dir or Path(tempfile.mkdtemp(prefix="vector_search_"))
    shutil.rmtree(root / "db", ignore_errors=True)
    db = embeddings.connect(str(root / "db"))
    table = embeddings.open_embeddings(db)

    def load() -> None:
        for s in range(0, args.n, APPEND_ROWS):
            table.add(arrow_rows(questions[s:s + APPEND_ROWS], embeddings.KIND_QUESTION, s))
        table.add(arrow_rows(approved, embeddings.KIND_APPROVED_REPLY, 0))

    measure(f"write {args.n} + {args.approved} rows ({APPEND_ROWS}-row appends)", load,
            per=args.n + args.approved)
    all_vecs = np.concatenate([questions, approved])
    all_ids = ([f"q{i}" for i in range(args.n)] + [f"a{i}" for i in range(args.approved)])
    truth = exact_top(all_vecs, all_ids, queries, 10)
    # the teacher's filtered truth: approved rows of the query's tenant
    tenant_of = [TENANTS[i % len(TENANTS)] for i in range(nq)]
    a_ids = [f"a{i}" for i in range(args.approved)]
    a_tenant = np.array([TENANTS[i % len(TENANTS)] for i in range(args.approved)])
    k_t = SEARCH_K + 1
    t_truth = []
    for i in range(nq):
        mask = a_tenant == tenant_of[i]
        t_truth += exact_top(approved[mask], [x for x, m in zip(a_ids, mask, strict=True) if m],
                             queries[i:i + 1], k_t)
    m1 = min(args.one_by_one, nq)

    def by_tenant(tune=None) -> list[list[str]]:
        """The teacher's filtered search, batched per tenant (own id left out afterwards)."""
        out: list[list[str]] = [[] for _ in range(nq)]
        for tenant in TENANTS:
            idx = [i for i in range(nq) if tenant_of[i] == tenant]
            found = batched(table, queries[idx], k_t, teacher_where(tenant), tune)
            for i, hits in zip(idx, found, strict=True):
                out[i] = hits
        return out

    def today(n: int) -> list[list[str]]:
        """Today's teacher query: one search per row, every column, sorted by distance."""
        out = []
        for i in range(n):
            hits = (table.search(queries[i], vector_column_name="vector").distance_type("cosine")
                    .limit(k_t).where(teacher_where(tenant_of[i], f"x{i}"), prefilter=True)
                    .to_list())
            out.append([h["interaction_id"] for h in sorted(hits, key=lambda h: h["_distance"])])
        return out

    t_rows = [{"interaction_id": f"x{i}", "tenant_id": tenant_of[i]} for i in range(nq)]

    def teacher_batched() -> list[list[str]]:  # a fresh handle sees the latest indexes
        hits = RetrievalTeacher(db)._search_batched(t_rows, list(queries))
        return [[h["interaction_id"] for h in found or []] for found in hits]

    def teacher_one_by_one(n: int) -> list[list[str]]:
        teacher = RetrievalTeacher(db)
        return [[h["interaction_id"] for h in teacher._search_one(t_rows[i], queries[i]) or []]
                for i in range(n)]

    def teacher_steps(label: str) -> None:
        measure(f"teacher query one by one{label}", lambda: today(m1), per=m1,
                truth=t_truth[:m1])
        measure(f"RetrievalTeacher._search_one{label}", lambda: teacher_one_by_one(m1), per=m1,
                truth=t_truth[:m1])
        measure(f"RetrievalTeacher._search_batched{label}", teacher_batched, per=nq,
                truth=t_truth)

    print("-- no index, fragments as appended (today)")
    measure("exact top-10, one by one", lambda: one_by_one(table, queries[:m1], 10), per=m1,
            truth=truth[:m1])
    measure("exact top-10, batched", lambda: batched(table, queries, 10), per=nq, truth=truth)
    teacher_steps(" (today: no scalar index)")

    print("-- maintain(): compaction + scalar indexes (no ANN index)")
    done = measure("maintain (compact, bitmap kind, btree tenant_id/interaction_id)",
                   lambda: maintain(table, IndexPolicy(ann_min_rows=None, **SCALAR)))
    print(f"   {done}")
    measure("exact top-10, batched (compacted)", lambda: batched(table, queries, 10), per=nq,
            truth=truth)
    teacher_steps(" (scalar indexes)")
    ids = [f"q{i}" for i in range(0, args.n, max(1, args.n // 500))][:500]
    in_list = ", ".join(f"'{x}'" for x in ids)
    measure("read 500 question vectors by interaction_id IN (...)", lambda: table.search().where(
        f"kind = 'question' AND interaction_id IN ({in_list})").select(["vector"]).limit(None)
        .to_arrow(), per=1)

    tunings: dict[str, list[tuple[str, Callable | None]]] = {
        "IVF_PQ": [("nprobes 20", None),
                   ("nprobes 20, refine x5", lambda q: q.nprobes(20).refine_factor(5)),
                   ("nprobes 40, refine x10", lambda q: q.nprobes(40).refine_factor(10))],
        "IVF_HNSW_SQ": [("nprobes 20, ef 1.5k", None),
                        ("nprobes 20, ef 100", lambda q: q.nprobes(20).ef(100)),
                        ("nprobes 40, ef 200", lambda q: q.nprobes(40).ef(200))],
        "IVF_FLAT": [("nprobes 20", None), ("nprobes 40", lambda q: q.nprobes(40))],
    }
    for itype in [t.strip() for t in args.index_types.split(",") if t.strip()]:
        policy = IndexPolicy(index_type=itype, **SCALAR)
        rows = table.count_rows()
        print(f"-- {itype}: {policy.vector_config(rows)}")
        measure(f"{itype}: build on {rows} rows", lambda p=policy, r=rows: table.create_index(
            "vector", config=p.vector_config(r), replace=True))
        for label, tune in tunings[itype]:
            measure(f"{itype} {label}: top-10 one by one",
                    lambda t=tune: one_by_one(table, queries[:m1], 10, tune=t), per=m1,
                    truth=truth[:m1])
            measure(f"{itype} {label}: top-10 batched",
                    lambda t=tune: batched(table, queries, 10, tune=t), per=nq, truth=truth)
        measure(f"{itype}: teacher filter batched, ANN prefilter", by_tenant, per=nq,
                truth=t_truth)
        measure(f"{itype}: RetrievalTeacher._search_batched (exact)", teacher_batched, per=nq,
                truth=t_truth)
    # one more day-batch with the last index present: the delta path of maintain()
    extra = synthesise(bases, real, APPEND_ROWS, rng)
    table.add(arrow_rows(extra, embeddings.KIND_QUESTION, args.n))
    done = measure(f"append {APPEND_ROWS} rows, then maintain (delta index + compaction)",
                   lambda: maintain(table, IndexPolicy(ann_min_rows=args.n // 2, **SCALAR)))
    print(f"   {done}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB; load average {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(ROWS, indent=1))
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
