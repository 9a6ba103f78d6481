"""Embedding backends on the same texts: throughput, memory, and agreement with MiniLM for each
stage that reads the vectors (docs/embeddings.md publishes the figures).

Texts, per profile (distinct texts only):

* ``real``: the questions (last user turn) and replies of OpenAssistant oasst1-en100 and
  Anthropic HH-RLHF helpful-base test (``../shared/data/``, or ``--data``): real, long, unique.
* ``generated``: ``ml.demo.generate`` records (the demo's template logs).

Each backend runs in its own child process (``--worker``), so its CPU-seconds
(``resource.getrusage``, user + system) and peak RSS are its own: load (incl. a first-use
distillation of the static model when its folder is empty), then questions, then replies, each
encoded in one call (sorted by length into batches of ``--batch-size``). ``minilm`` is the fp32
reference; ``minilm/bf16`` the same model under bfloat16 autocast (the default where the CPU has
AMX: ``LEARNLOOP_EMBEDDINGS_PRECISION``); ``minilm/unsorted`` the naive path for comparison
(fp32, batches of 32 texts in arrival order, one call each).

Agreement with MiniLM (its vectors from the ``minilm`` worker), per stage:

* retrieval teacher and dataset dedup (question vectors): recall@10 of MiniLM's 10 nearest
  neighbours of each question (exact cosine, itself excluded); and the Jaccard overlap of the
  question pairs above the stage's threshold (teacher 0.80, dedup 0.95), thresholds as they are;
* auditor (``qa_relevance`` = cosine of question and reply): Pearson and Spearman correlation with
  MiniLM's, and agreement of the low-relevance flag (``< 0.08``, ``ml.audit.rules``): the share of
  MiniLM's flags the backend also raises (recall) and of its flags MiniLM raises (precision).

Run: ``python bench/embeddings.py [--limit N] [--backends minilm,minilm-int8,static]
[--json OUT]``. The load average is printed with the table (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

OASST = "oasst1-en100/en_100_tree.jsonl"
HH = "hh-rlhf-helpful-base/test.jsonl.gz"
TEACHER_THRESHOLD, DEDUP_THRESHOLD, RELEVANCE_THRESHOLD = 0.80, 0.95, 0.08
BACKENDS = ("minilm", "minilm/bf16", "minilm/unsorted", "minilm-int8", "static")


# ---- texts -------------------------------------------------------------------------------------
def _pairs(records) -> list[tuple[str, str]]:
    out = []
    for rec in records:
        users = [m["content"] for m in rec.get("messages") or [] if m.get("role") == "user"]
        if users and users[-1].strip() and (rec.get("response") or "").strip():
            out.append((users[-1], rec["response"]))
    return out


def real_pairs(data: Path) -> list[tuple[str, str]]:
    from ml.importers import Accepted, read_hh_rlhf, read_oasst

    recs = [a.record for a in read_oasst(data / OASST) if isinstance(a, Accepted)]
    recs += [a.record for a in read_hh_rlhf(data / HH) if isinstance(a, Accepted)]
    return _pairs(recs)


def generated_pairs(n: int) -> list[tuple[str, str]]:
    from ml.demo.generate import generate_records

    records = []
    for line in generate_records(n, seed=7):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the generator's deliberately malformed lines
            continue
    return _pairs(r for r in records if isinstance(r, dict))


def distinct(pairs: list[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """Pairs with a question not seen before, at most ``limit``."""
    seen: set[str] = set()
    out = []
    for q, a in pairs:
        if q not in seen:
            seen.add(q)
            out.append((q, a))
        if len(out) == limit:
            break
    return out


# ---- worker ------------------------------------------------------------------------------------
def _usage() -> tuple[float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def worker(backend: str, texts_file: Path, out: Path, batch_size: int) -> None:
    from ml import embedding_backends as eb

    texts = json.loads(texts_file.read_text())
    result: dict = {}
    wall, cpu = time.perf_counter(), _usage()[0]
    name = backend.split("/")[0]
    if name == "minilm":  # the reference computes in fp32 whatever the machine's default
        be = eb.MiniLM(dtype="bf16" if backend == "minilm/bf16" else "fp32")
    else:
        be = eb.get_backend(name)
    result["load"] = {"wall": time.perf_counter() - wall, "cpu": _usage()[0] - cpu}
    for part in ("questions", "replies"):
        items = texts[part]
        wall, cpu = time.perf_counter(), _usage()[0]
        if backend.endswith("/unsorted"):  # the naive path: small batches in arrival order
            vecs = np.concatenate([be.encode(items[i:i + 32], batch_size=32)
                                   for i in range(0, len(items), 32)])
        else:
            vecs = be.encode(items, batch_size=batch_size)
        result[part] = {"wall": time.perf_counter() - wall, "cpu": _usage()[0] - cpu,
                        "n": len(items)}
        np.save(out / f"{part}.npy", vecs)
    result["peak_rss"] = _usage()[1]
    result["model"] = be.model
    (out / "result.json").write_text(json.dumps(result))


def run_worker(backend: str, texts_file: Path, out: Path, batch_size: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--worker", backend, "--texts", str(texts_file),
                    "--out", str(out), "--batch-size", str(batch_size)], check=True,
                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    result = json.loads((out / "result.json").read_text())
    result["q"] = np.load(out / "questions.npy")
    result["a"] = np.load(out / "replies.npy")
    return result


# ---- agreement ---------------------------------------------------------------------------------
def knn(vecs: np.ndarray, k: int) -> np.ndarray:
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def recall_at_k(ref: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    a, b = knn(ref, k), knn(other, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def pair_jaccard(ref: np.ndarray, other: np.ndarray, threshold: float) -> tuple[float | None, int,
                                                                                  int]:
    iu = np.triu_indices(len(ref), 1)
    p = (ref @ ref.T)[iu] >= threshold
    q = (other @ other.T)[iu] >= threshold
    union = int((p | q).sum())
    return (int((p & q).sum()) / union if union else None), int(p.sum()), int(q.sum())


def _rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x)] = np.arange(len(x))
    return r


def relevance_agreement(ref_q, ref_a, q, a) -> dict:
    r = np.einsum("ij,ij->i", ref_q, ref_a)
    s = np.einsum("ij,ij->i", q, a)
    fr, fs = r < RELEVANCE_THRESHOLD, s < RELEVANCE_THRESHOLD
    return {"pearson": float(np.corrcoef(r, s)[0, 1]),
            "spearman": float(np.corrcoef(_rank(r), _rank(s))[0, 1]),
            "minilm_flags": int(fr.sum()), "flags": int(fs.sum()),
            "flag_recall": float((fr & fs).sum() / fr.sum()) if fr.sum() else None,
            "flag_precision": float((fr & fs).sum() / fs.sum()) if fs.sum() else None,
            "mean": float(s.mean())}


# ---- per-item cost against history -----------------------------------------------------------
def history_cost(sizes: list[int], tmp: Path, new: int = 2000) -> list[dict]:
    """The bookkeeping cost of embedding one new landing day of ``new`` interactions next to a
    history of ``size`` question rows (random vectors, 10,000 per day): the old path (read
    every embedded id, anti-join) against ``embed_day`` (reads only the day's rows). The
    embedding itself is left out (the static backend, and its time subtracted)."""
    import polars as pl
    import pyarrow as pa

    from ml import embeddings

    os.environ["LEARNLOOP_EMBEDDINGS_QUESTION_BACKEND"] = "static"
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        db = embeddings.connect(str(tmp / f"history-{size}"))
        table = embeddings.open_embeddings(db)
        model = embeddings.model_for("question")
        for start in range(0, size, 50_000):
            n = min(50_000, size - start)
            ids = [f"h{i}" for i in range(start, start + n)]
            vecs = rng.standard_normal((n, embeddings.DIM), dtype=np.float32)
            table.add(pa.table({
                "interaction_id": ids, "tenant_id": ["t"] * n,
                "partition_date": [f"2025-{1 + (i // 10_000) // 28 % 12:02d}-"
                                   f"{1 + (i // 10_000) % 28:02d}" for i in range(start, start + n)],
                "question": ["q"] * n,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)),
                                                            embeddings.DIM),
                "response_vector": pa.nulls(n, pa.list_(pa.float32(), embeddings.DIM)),
                "qa_relevance": pa.nulls(n, pa.float64()), "model": [model] * n,
                "kind": ["question"] * n, "answer": pa.nulls(n, pa.string()),
                "origin": pa.nulls(n, pa.string()), "item_id": pa.nulls(n, pa.int64())},
                schema=embeddings.embeddings_schema()))
        embeddings.ensure_scalar_indexes(table)
        frame = pl.DataFrame({"tenant_id": ["t"] * new,
                              "interaction_id": [f"n{i}" for i in range(new)],
                              "user_message": [f"Where is my order {i}?" for i in range(new)]})
        embeddings.encode(frame["user_message"].to_list())  # warm the model and the cache
        c0 = _usage()[0]
        have = embeddings.embedded_ids(table)  # the old path's read
        done = pl.DataFrame(sorted(have), schema={"tenant_id": pl.String,
                                                  "interaction_id": pl.String}, orient="row")
        frame.join(done, on=["tenant_id", "interaction_id"], how="anti")
        old = _usage()[0] - c0
        c0 = _usage()[0]
        result = embeddings.embed_day(db, "2026-06-01", frame)
        day = _usage()[0] - c0
        assert result.added == new
        rows.append({"history": size, "old_read_cpu_s": old, "embed_day_cpu_s": day,
                     "new": new})
        print(f"  history {size}: old path {old:.2f} CPU-s, embed_day {day:.2f} CPU-s "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    return rows


# ---- main --------------------------------------------------------------------------------------
def _fmt(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def bench_profile(name: str, pairs: list[tuple[str, str]], backends: list[str], tmp: Path,
                  batch_size: int) -> list[dict]:
    texts = {"questions": [q for q, _ in pairs], "replies": [a for _, a in pairs]}
    texts_file = tmp / f"{name}.json"
    texts_file.write_text(json.dumps(texts))
    mean_chars = {k: sum(map(len, v)) / len(v) for k, v in texts.items()}
    print(f"\n## {name}: {len(pairs)} distinct questions (mean {mean_chars['questions']:.0f} "
          f"chars) and their replies (mean {mean_chars['replies']:.0f} chars)", flush=True)
    results = {}
    for b in backends:
        results[b] = run_worker(b, texts_file, tmp / name / b.replace("/", "-"), batch_size)
        print(f"  {b}: done (load average {os.getloadavg()[0]:.1f})", flush=True)
    ref = results["minilm"]
    rows = []
    for b in backends:
        r = results[b]
        row = {"profile": name, "backend": b, "model": r["model"], "n": len(pairs),
               "load_cpu_s": r["load"]["cpu"], "peak_rss_mb": r["peak_rss"] / 2**20}
        for part in ("questions", "replies"):
            p = r[part]
            row[f"{part}_per_cpu_s"] = p["n"] / p["cpu"] if p["cpu"] > 0 else None
            row[f"{part}_per_wall_s"] = p["n"] / p["wall"] if p["wall"] > 0 else None
        row["recall_at_10"] = recall_at_k(ref["q"], r["q"])
        row["teacher_pairs_jaccard"], row["teacher_pairs_minilm"], row["teacher_pairs"] = \
            pair_jaccard(ref["q"], r["q"], TEACHER_THRESHOLD)
        row["dedup_pairs_jaccard"], row["dedup_pairs_minilm"], row["dedup_pairs"] = \
            pair_jaccard(ref["q"], r["q"], DEDUP_THRESHOLD)
        row["relevance"] = relevance_agreement(ref["q"], ref["a"], r["q"], r["a"])
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = ("| profile | backend | q/CPU-s | q/wall-s | reply/CPU-s | reply/wall-s | load CPU-s "
            "| peak RSS MB | recall@10 | pairs>=0.80 J | pairs>=0.95 J | rel. pearson "
            "| rel. spearman | flags (MiniLM) | flag recall | flag precision |")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        rel = r["relevance"]
        print(f"| {r['profile']} | {r['backend']} | {_fmt(r['questions_per_cpu_s'], 0)} "
              f"| {_fmt(r['questions_per_wall_s'], 0)} | {_fmt(r['replies_per_cpu_s'], 0)} "
              f"| {_fmt(r['replies_per_wall_s'], 0)} | {_fmt(r['load_cpu_s'], 1)} "
              f"| {r['peak_rss_mb']:.0f} | {_fmt(r['recall_at_10'])} "
              f"| {_fmt(r['teacher_pairs_jaccard'])} ({r['teacher_pairs']}/"
              f"{r['teacher_pairs_minilm']}) | {_fmt(r['dedup_pairs_jaccard'])} "
              f"({r['dedup_pairs']}/{r['dedup_pairs_minilm']}) | {_fmt(rel['pearson'])} "
              f"| {_fmt(rel['spearman'])} | {rel['flags']} ({rel['minilm_flags']}) "
              f"| {_fmt(rel['flag_recall'])} | {_fmt(rel['flag_precision'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--limit", type=int, default=2000, help="distinct questions per profile")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--profiles", default="real,generated", help="'' for none")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--history", default="", help="history sizes (question rows) for the "
                                                   "per-item cost check, e.g. 20000,200000")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--texts", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.texts, args.out, args.batch_size)
        return
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "minilm" not in backends:
        backends.insert(0, "minilm")  # the reference
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backends {unknown}; known: {list(BACKENDS)}")
    print(f"# embeddings benchmark: {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.1f}, batch size {args.batch_size}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    rows: list[dict] = []
    history: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        for profile in [p.strip() for p in args.profiles.split(",") if p.strip()]:
            if profile == "real":
                pairs = distinct(real_pairs(args.data), args.limit)
            elif profile == "generated":
                pairs = distinct(generated_pairs(args.limit * 20), args.limit)
            else:
                raise SystemExit(f"unknown profile {profile!r}: real or generated")
            rows += bench_profile(profile, pairs, backends, Path(tmp), args.batch_size)
        if args.history:
            print("\n## bookkeeping of one new day (2,000 interactions) against history")
            history = history_cost([int(x) for x in args.history.split(",")], Path(tmp))
    if rows:
        print_table(rows)
    print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({"backends": rows, "history": history}, indent=2))


if __name__ == "__main__":
    main()
