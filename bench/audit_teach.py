"""Benchmark: the audit stage (``audit_candidates`` + ``audited_errors``) and the teaching stage
(``teacher_samples``) at scale, the code of an older commit against this checkout.

    python bench/audit_teach.py --sizes 10000 100000 --delta 2000 --old-ref 8f19d9f

For each size N: generated demo logs (``ml.demo.generate``, 7 days) are landed, ingested and
scored by the ingest assets and embedded by ``interaction_embeddings`` into a real DuckDB
warehouse, SQLite operational store and LanceDB. Then, for each code version (``old``: the commit
``--old-ref`` checked out into a temporary git worktree; ``new``: this checkout), on its own copy
of that home:

* run 1: the assets materialized with Dagster (ephemeral instance, in-process executor), the
  offline rules auditor and retrieval teacher, over the whole history (everything is new);
* a new landing day of ``--delta`` interactions is ingested and embedded (not timed);
* run 2: the same assets again, on top of the existing history: the per-item cost of this run is
  the figure that must not grow with the history.

Each timed step is its own process: wall time, CPU-seconds (user + system, process + children,
``resource.getrusage``) and peak RSS (``ru_maxrss`` of that process) cover the asset run only
(imports and the instance are set up before the clock starts). The embedding model is replaced by
a deterministic hashing encoder in every process (same vectors in both versions: identical texts
get identical vectors); embedding is a stage of its own, benchmarked elsewhere. Results are
published in docs/scale-audit-teach.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAYS = 7
START = "2026-11-01"
DELTA_DAY = "2026-12-01"


# ---- the worker: one step, in a process of its own, on the code under --code --------------------
def fake_encoder():
    """A deterministic bag-of-words hashing encoder with MiniLM's shape (L2-normalized)."""
    import hashlib

    import numpy as np

    from ml import embeddings

    def encode(texts, *, batch_size: int = 64):
        out = np.zeros((len(texts), embeddings.DIM), np.float32)
        for row, text in enumerate(texts):
            for word in (text or "").lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                out[row, h % embeddings.DIM] += 1.0 if (h >> 32) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    embeddings.encode = encode


def _usage() -> tuple[float, int]:
    cpu = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        cpu += r.ru_utime + r.ru_stime
    return cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(step: str, home: Path, code: Path) -> dict:
    sys.path.insert(0, str(code))
    os.environ["LEARNLOOP_HOME"] = str(home)
    for var in ("LEARNLOOP_AUDITOR", "LEARNLOOP_TEACHER"):
        os.environ.pop(var, None)
    import dagster as dg

    fake_encoder()
    from assets.audit import audit_candidates, audited_errors
    from assets.embeddings import interaction_embeddings
    from assets.ingest import ingest_interactions, raw_interactions
    from assets.quality import interaction_quality
    from assets.resources import store_resources
    from assets.teaching import teacher_samples
    from store.db import upgrade

    resources = store_resources(home)
    upgrade(resources["store"].get_url())
    with dg.instance_for_test() as instance:
        if step == "ingest":  # every landing day not ingested yet, then the embeddings
            done = home / ".ingested"
            seen = set(done.read_text().split()) if done.exists() else set()
            days = sorted(p.name[5:] for p in (home / "landing").glob("date=*"))
            for day in [d for d in days if d not in seen]:
                res = dg.materialize([raw_interactions, ingest_interactions, interaction_quality],
                                     partition_key=day, instance=instance, resources=resources)
                assert res.success
                seen.add(day)
            done.write_text("\n".join(sorted(seen)))
            assert dg.materialize([interaction_embeddings], instance=instance,
                                  resources=resources).success
            return {}
        assets = {"audit": [audit_candidates, audited_errors], "teach": [teacher_samples]}[step]
        cpu0, _ = _usage()
        t0 = time.perf_counter()
        res = dg.materialize(assets, instance=instance, resources=resources)
        wall = time.perf_counter() - t0
        cpu1, rss = _usage()
        assert res.success
        meta = {m.materialization.asset_key.to_user_string(): {
            k: v.value for k, v in m.materialization.metadata.items()
            if isinstance(v.value, (int, float, str, bool))}
            for m in res.get_asset_materialization_events()}
    if step == "audit":
        items = meta["audited_errors"]["audited"] + meta["audited_errors"]["failures"]
        extra = {"candidates": meta["audit_candidates"]["dagster/row_count"],
                 "considered": meta["audit_candidates"]["interactions"],
                 "audited": meta["audited_errors"]["audited"],
                 "items_created": meta["audited_errors"]["review_items_created"]
                 + meta["audited_errors"]["clean_review_items_created"]}
    else:
        t = meta["teacher_samples"]
        items = t["errors_needing_proposal"] + t["human_corrections_seen"]
        extra = {"errors_needing_proposal": t["errors_needing_proposal"],
                 "proposals": t["proposals"], "samples_created": t["samples_created"],
                 "human_corrections_seen": t["human_corrections_seen"]}
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu1 - cpu0, 2),
            "peak_rss_mb": round(rss / 2**20), "items": items, **extra}


# ---- the operational-store writes alone: the per-item path against the bulk one --------------------
def store_writes(url: str, n: int, batch: int = 50) -> list[dict]:
    """``n`` audited interactions (a third flagged) saved in batches of ``batch`` the old way
    (``record_attempt`` and ``repo.create_item`` per item: a lookup, a savepoint and a flush
    each) and the bulk way (``save_audit_batch``), then ``n // 3`` sample items one by one
    (``create_item``) and in one ``create_samples`` call, each on a fresh store at ``url``."""
    from sqlalchemy import text

    from store import repo
    from store.audit import error_dedup_key, record_attempt, save_audit_batch
    from store.db import engine_for, session_scope, upgrade
    from store.teaching import create_samples, sample_dedup_key

    def item(i: int) -> dict:
        return dict(actor="auditor:rules", tenant_id="acme", interaction_id=f"i{i}",
                    session_id="s", messages=[{"role": "user", "content": f"question {i}"}],
                    original_response=f"reply {i} " * 40, confidence=0.8, auditor="rules",
                    prompt_version="rules-v1", category="factual_error", severity="high",
                    explanation="wrong", tags=["auditor:rules"], extra={"signals": ["x"]})

    def reset() -> None:
        if url.startswith("sqlite"):
            Path(url.split("///", 1)[1]).unlink(missing_ok=True)
            engine_for.cache_clear()
        else:
            with engine_for(url).begin() as c:
                c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        upgrade(url)

    def timed(label: str, fn) -> dict:
        reset()
        cpu0, _ = _usage()
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        cpu1, _ = _usage()
        return {"what": label, "n": n, "dialect": url.split(":")[0], "wall_s": round(wall, 2),
                "cpu_s": round(cpu1 - cpu0, 2), "load_1m": round(os.getloadavg()[0], 2)}

    A = {"auditor": "rules", "prompt_version": "rules-v1"}

    def audit_old() -> None:
        for start in range(0, n, batch):
            with session_scope(url) as s:
                for i in range(start, min(n, start + batch)):
                    record_attempt(s, interaction_id=f"i{i}", tenant_id="acme", status="ok",
                                   is_error=i % 3 == 0, reason=None, **A)
                    if i % 3 == 0:
                        repo.create_item(s, kind="error", dedup_key=error_dedup_key(
                            "acme", f"i{i}", **A), **item(i))

    def audit_new() -> None:
        for start in range(0, n, batch):
            ids = range(start, min(n, start + batch))
            with session_scope(url) as s:
                save_audit_batch(s, verdicts=[{"interaction_id": f"i{i}", "tenant_id": "acme",
                                               "is_error": i % 3 == 0} for i in ids],
                                 items=[item(i) for i in ids if i % 3 == 0], failures=[],
                                 max_attempts=5, **A)

    def sample(i: int) -> dict:
        return dict(actor="teacher:retrieval", tenant_id="acme", interaction_id=f"i{i}",
                    original_response="bad", proposed_response=f"better reply {i} " * 30,
                    source="retrieval", messages=[{"role": "user", "content": "q"}])

    def teach_old() -> None:
        with session_scope(url) as s:
            for i in range(n // 3):
                repo.create_item(s, kind="sample", dedup_key=sample_dedup_key("acme", f"i{i}"),
                                 **sample(i))

    def teach_new() -> None:
        with session_scope(url) as s:
            create_samples(s, [sample(i) for i in range(n // 3)])

    return [timed("save_audit_batch per item (old)", audit_old),
            timed("save_audit_batch bulk (new)", audit_new),
            timed("create_samples per item (old)", teach_old),
            timed("create_samples bulk (new)", teach_new)]


# ---- the driver -----------------------------------------------------------------------------------
def run_step(step: str, home: Path, code: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, __file__, "--worker", step, "--home", str(home),
                          "--code", str(code)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"step {step} on {code} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def land(home: Path, n: int, seed: int, days: int, start: str) -> None:
    from ml.demo.generate import generate

    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=home))
    generate(tmp, n, seed=seed, days=days, start=start)
    (home / "landing").mkdir(parents=True, exist_ok=True)
    for day in tmp.glob("date=*"):
        shutil.move(str(day), home / "landing" / day.name)
    truth = home / "landing" / "truth.jsonl"
    with open(truth, "a", encoding="utf-8") as f:
        f.write((tmp / "truth.jsonl").read_text(encoding="utf-8"))
    shutil.rmtree(tmp)


def old_checkout(ref: str, where: Path) -> Path:
    if (where / ".git").exists():  # left by an interrupted run: reused
        return where
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), ref],
                   check=True)
    return where


def per_item(r: dict) -> float:
    return round(1000 * r["cpu_s"] / r["items"], 3) if r["items"] else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--delta", type=int, default=2_000, help="interactions of the new day")
    p.add_argument("--old-ref", default="8f19d9f", help="commit of the old path")
    p.add_argument("--versions", nargs="+", default=["old", "new"])
    p.add_argument("--steps", nargs="+", default=["audit", "teach"], choices=["audit", "teach"])
    p.add_argument("--work", default="", help="folder for the homes (default: a temp dir)")
    p.add_argument("--store-only", type=int, default=0, metavar="N",
                   help="only time the store writes of N audited interactions, old and new")
    p.add_argument("--store-url", default="", help="with --store-only: the store (default: a "
                   "SQLite file; e.g. postgresql://postgres@127.0.0.1:5432/bench)")
    p.add_argument("--worker", default="")
    p.add_argument("--home", default="")
    p.add_argument("--code", default="")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.home), Path(args.code))))
        return

    sys.path.insert(0, str(ROOT))
    if args.store_only:
        url = args.store_url or f"sqlite:///{tempfile.mkdtemp()}/store.db"
        for r in store_writes(url, args.store_only):
            print(json.dumps(r), flush=True)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-audit-teach-"))
    work.mkdir(parents=True, exist_ok=True)
    codes = {"new": ROOT}
    if "old" in args.versions:
        codes["old"] = old_checkout(args.old_ref, work / "old-code")
    results = []
    try:
        for n in args.sizes:
            base = work / f"base-{n}"
            if not (base / ".ingested").exists():
                land(base, n, seed=11, days=DAYS, start=START)
                run_step("ingest", base, ROOT)
            for version in args.versions:
                home = work / f"{version}-{n}"
                shutil.rmtree(home, ignore_errors=True)
                shutil.copytree(base, home)
                for run in (1, 2):
                    if run == 2:
                        land(home, args.delta, seed=29, days=1, start=DELTA_DAY)
                        run_step("ingest", home, ROOT)
                    for step in args.steps:
                        load = os.getloadavg()[0]
                        r = run_step(step, home, codes[version])
                        r.update(size=n, version=version, run=run, step=step,
                                 load_1m=round(load, 2), cpu_ms_per_item=per_item(r))
                        results.append(r)
                        print(json.dumps(r), flush=True)
                shutil.rmtree(home, ignore_errors=True)
    finally:
        if "old" in codes:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(codes["old"])], check=False)
    print()
    print(f"{'size':>7} {'step':>5} {'run':>3} {'version':>7} {'items':>6} {'wall s':>8} "
          f"{'CPU s':>8} {'RSS MB':>7} {'CPU ms/item':>11} {'load':>5}")
    for r in results:
        print(f"{r['size']:>7} {r['step']:>5} {r['run']:>3} {r['version']:>7} {r['items']:>6} "
              f"{r['wall_s']:>8} {r['cpu_s']:>8} {r['peak_rss_mb']:>7} "
              f"{r['cpu_ms_per_item']:>11} {r['load_1m']:>5}")
    print()
    for n in args.sizes:
        for step in ("audit", "teach"):
            for run in (1, 2):
                pair = {r["version"]: r for r in results
                        if (r["size"], r["step"], r["run"]) == (n, step, run)}
                if {"old", "new"} <= set(pair) and pair["new"]["cpu_s"]:
                    print(f"{n:>7} {step:>5} run {run}: speed-up per CPU-second "
                          f"{pair['old']['cpu_s'] / pair['new']['cpu_s']:.1f}x, wall "
                          f"{pair['old']['wall_s'] / pair['new']['wall_s']:.1f}x")


if __name__ == "__main__":
    main()
