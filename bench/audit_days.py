"""Benchmark: the audit partitioned by landing day, days side by side against one run of all days.

    python bench/audit_days.py --n-per-day 20000 --days 2 [--corpus ../shared/data] \
        [--admin-url postgresql://postgres@127.0.0.1:5432/test]

The warehouse is a DuckLake (catalog: a new database on the PostgreSQL of ``--admin-url``, data
files under the home), where the warehouse pool admits several writers. For each mode, on a fresh
home and lake: ``--days`` landing days of the realistic profile (``ml.demo.realistic``) are written,
ingested and embedded (not timed); then the audit (``audit_candidates`` + ``audited_errors``, the
offline rules auditor) is timed:

* ``one run``: one process, one run over the range of the days (what ``learnloop run`` does);
* ``side by side``: one process per day, all started at once, each a run of one partition (what
  ``audit_days_sensor`` requests and the run queue starts).

``--threads-side N`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads) of each side-by-side
process: by default each takes every core, so two of them oversubscribe the machine.

Per mode: wall seconds, CPU-seconds (every process, ``RUSAGE_CHILDREN``), peak RSS of the process
tree, and the verdicts written (both modes must write the same number). Each process includes
starting Python and loading the code location and MiniLM: what a run pays.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chain import TreePeak  # noqa: E402

START = "2026-11-02"


def child(stage: str, day: str) -> int:
    """One process: ingest a day, embed, or audit (``day`` = a partition key or ``all``)."""
    import dagster as dg

    from ml.config import Settings
    from orchestration import runner
    from orchestration.definitions import defs
    from store.db import upgrade

    settings = Settings()
    upgrade(settings.store)
    instance = runner.instance_for(settings)
    if stage == "ingest":
        return 1 if runner.run_ingest(defs, instance, [day]) else 0
    job = defs.resolve_job_def("audit_job")
    if stage == "embed":
        keys, kwargs = ["interaction_embeddings"], {}
    elif day == "all":
        keys, kwargs = ["audit_candidates", "audited_errors"], {
            "tags": runner.all_days_tags(settings)}
    else:
        keys, kwargs = ["audit_candidates", "audited_errors"], {"partition_key": day}
    result = job.execute_in_process(instance=instance, raise_on_error=False,
                                    asset_selection=[dg.AssetKey(k) for k in keys], **kwargs)
    return 0 if result.success else 1


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _start(stage: str, day: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "audit_days.py"), "--child",
                             stage, day], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait(procs: list[subprocess.Popen], what: str) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {p.returncode}):\n{err[-3000:]}")


class Group:
    """Peak RSS of several process trees together."""

    def __init__(self, procs):
        self.peaks = [TreePeak(p.pid) for p in procs]

    def stop(self) -> int:
        return sum(t.stop() for t in self.peaks)  # upper bound: the trees' peaks added


def run_mode(mode: str, args) -> dict:
    import psycopg
    from sqlalchemy.engine import make_url

    from ml.demo.realistic import builtin_corpus, load_corpus, write_realistic

    home = Path(tempfile.mkdtemp(prefix=f"learnloop-audit-days-{mode.replace(' ', '-')}-"))
    db = f"ll_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{db}"')
    u = make_url(args.admin_url).set(database=db)
    conninfo = " ".join(f"{k}={v}" for k, v in {"dbname": u.database, "host": u.host,
                                                "port": u.port, "user": u.username}.items()
                        if v is not None)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEARNLOOP_", "DAGSTER_"))}
    env.update({"LEARNLOOP_HOME": str(home), "TQDM_DISABLE": "1",
                "LEARNLOOP_HASH_KEY": "bench-hash-key",
                "LEARNLOOP_WAREHOUSE_URL": f"ducklake:postgres:{conninfo}",
                "LEARNLOOP_WAREHOUSE_DATA_PATH": str(home / "lake-data") + "/"})
    days = [(date.fromisoformat(START) + timedelta(days=d)).isoformat()
            for d in range(args.days)]
    timed_env = dict(env)
    if mode == "side by side" and args.threads_side:
        timed_env["OMP_NUM_THREADS"] = str(args.threads_side)
    try:
        corpus = load_corpus(args.corpus) if args.corpus else builtin_corpus()
        write_realistic(home / "landing", args.n_per_day * args.days, args.seed, corpus=corpus,
                        days=args.days, start=START)
        for day in days:
            _wait([_start("ingest", day, env)], f"ingest of {day}")
        _wait([_start("embed", "all", env)], "embeddings")
        cpu0, t0 = _cpu_children(), time.perf_counter()
        procs = ([_start("audit", "all", timed_env)] if mode == "one run"
                 else [_start("audit", d, timed_env) for d in days])
        group = Group(procs)
        _wait(procs, f"audit ({mode})")
        rss = group.stop()
        wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
        os.environ.update({k: v for k, v in env.items() if k.startswith("LEARNLOOP_")})
        from ml import warehouse as wh
        from ml.config import Settings

        con = wh.connect(Settings().warehouse_target, read_only=True)
        try:
            verdicts = con.execute("SELECT count(*), count(DISTINCT interaction_id) "
                                   "FROM audited_errors").fetchone()
        finally:
            con.close()
        return {"mode": mode, "processes": len(procs),
                "threads": timed_env.get("OMP_NUM_THREADS", "all"), "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1), "peak_rss_mib": round(rss / 2**20),
                "verdicts": verdicts[0], "distinct": verdicts[1],
                "load": round(os.getloadavg()[0], 2)}
    finally:
        shutil.rmtree(home, ignore_errors=True)
        with psycopg.connect(args.admin_url, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "DAY"), help=argparse.SUPPRESS)
    ap.add_argument("--n-per-day", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--modes", default="one run,side by side")
    ap.add_argument("--threads-side", type=int, default=0)
    ap.add_argument("--admin-url", default=os.environ.get(
        "LEARNLOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child)
    print(f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB, "
          f"load average at start {os.getloadavg()}", flush=True)
    print(f"realistic profile, {args.days} landing days x {args.n_per_day:,} interactions, "
          f"DuckLake warehouse, offline rules auditor", flush=True)
    rows = []
    for mode in [m.strip() for m in args.modes.split(",")]:
        r = run_mode(mode, args)
        rows.append(r)
        print(f"  {mode:<13} {r['processes']} process(es) x {r['threads']} threads  wall {r['wall_s']:>8.1f} s  cpu "
              f"{r['cpu_s']:>8.1f} s  peak rss {r['peak_rss_mib']:>6} MiB  verdicts "
              f"{r['verdicts']:,} ({r['distinct']:,} distinct)  load {r['load']}", flush=True)
    if len(rows) != 2:
        return 0
    one, side = rows
    print(f"\nside by side vs one run: wall x{one['wall_s'] / side['wall_s']:.2f}, CPU-seconds "
          f"x{one['cpu_s'] / side['cpu_s']:.2f} (above 1 = side by side cheaper); same verdicts: "
          f"{one['verdicts'] == side['verdicts']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
