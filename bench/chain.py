"""Benchmark: the whole chain, stage by stage, at several sizes and on two data profiles.

    python bench/chain.py --sizes 10000,100000,1000000 --profiles generated,realistic \
        [--corpus ../shared/data] [--baseline-code DIR --baseline-sizes 10000] [--history]

For each profile and size it writes one landing day of N interactions into a fresh
``LEARNLOOP_HOME`` (not timed), then runs each stage of the chain as the product runs it (the
Dagster jobs of ``orchestration.definitions``, executed in process by ``orchestration.runner``,
exactly what ``learnloop run`` does) in its own child process, one stage after the other:

* ``ingest``: ``ingest_job`` for the day (landing files -> validated, scrubbed, de-duplicated
  ``interactions`` + ``interaction_quality``);
* ``embeddings``: ``interaction_embeddings`` (the asset of ``audit_job``);
* ``audit``: ``audit_candidates`` + ``audited_errors`` (offline rules auditor);
* ``teach``: ``teaching_job`` (retrieval teacher, preference pairs);
* ``analytics``: ``analytics_job`` (review decisions + the dbt models and tests).

Per stage: wall seconds, CPU-seconds (user + system of the stage process and every process it
waited for: ``RUSAGE_CHILDREN`` around it), peak RSS (the stage's process tree, sampled every
50 ms), and the CPU cost per interaction. A stage process includes starting Python, loading the
code location and models: what a run pays.

``--profiles``: ``generated`` is ``ml.demo.generate`` (templated support dialogues, short replies
that repeat); ``realistic`` is ``ml.demo.realistic`` (unique LLM-length multi-turn replies drawn from
the public samples in ``--corpus``, or the built-in grammar without it).

``--baseline-code DIR``: run the same stages with the code checked out in DIR as well (e.g. a
``git worktree`` of the commit before the scale work), at ``--baseline-sizes``, and print the
speed-up per CPU-second. ``--history``: after the first day, ingest and process a second day of
the same size on top and print the per-interaction CPU cost of both days (it must not grow).

``--json FILE`` writes every figure. The figures published in docs/benchmarks.md come from here.
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
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("ingest", "embeddings", "audit", "teach", "analytics")
DAY_SECONDS = 86_400


# ---- the child: one stage -----------------------------------------------------------------------
def run_stage(stage: str, day: str) -> int:
    """Run one stage in this process (LEARNLOOP_HOME from the environment); exit 1 on failure."""
    import dagster as dg

    from ml.config import Settings
    from orchestration import runner
    from orchestration.definitions import defs
    from store.db import upgrade

    settings = Settings()
    upgrade(settings.store)
    instance = runner.instance_for(settings)
    log = settings.home / "logs" / f"bench-{stage}.log"
    if stage == "ingest":
        failed = runner.run_ingest(defs, instance, [day])
        return 1 if failed else 0
    if stage in ("embeddings", "audit"):
        keys = (["interaction_embeddings"] if stage == "embeddings"
                else ["audit_candidates", "audited_errors"])
        job = defs.resolve_job_def("audit_job")
        log.parent.mkdir(parents=True, exist_ok=True)
        result = job.execute_in_process(instance=instance, raise_on_error=False,
                                        asset_selection=[dg.AssetKey(k) for k in keys],
                                        tags=runner.all_days_tags(settings))
        runner.write_run_output(instance, result.run_id, log)
    else:
        job_name = {"teach": "teaching_job", "analytics": "analytics_job"}[stage]
        result = runner.run_job(defs, instance, job_name, output=log)
    report = runner.job_report(result)
    if not report.ok:
        print(f"stage {stage} failed (log: {log}):", *report.problems, sep="\n  ",
              file=sys.stderr)
        return 1
    return 0


# ---- the parent ---------------------------------------------------------------------------------
class TreePeak:
    """Peak RSS of a process and its descendants, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                total = self.proc.memory_info().rss
                for child in self.proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure_stage(code: Path, home: Path, stage: str, day: str, env: dict[str, str]) -> dict:
    cpu0, t0 = _cpu_children(), time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(code / "bench" / "chain.py"), "--stage", stage, "--day", day],
        cwd=code, env={**env, "LEARNLOOP_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = TreePeak(proc.pid)
    _, err = proc.communicate()
    rss = peak.stop()
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed in {home} (exit {proc.returncode}):\n"
                           f"{err[-3000:]}")
    return {"stage": stage, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mib": round(rss / 2**20)}


def _du(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder; 0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def write_day(profile: str, landing: Path, n: int, seed: int, day: str,
              corpus_dir: str | None) -> int:
    """Landing files of one day; returns the bytes written."""
    if profile == "generated":
        from ml.demo.generate import generate

        generate(landing, n, seed, tenants=3, days=1, start=day)
    elif profile == "realistic":
        from ml.demo.realistic import builtin_corpus, load_corpus, write_realistic

        corpus = load_corpus(corpus_dir) if corpus_dir else builtin_corpus()
        write_realistic(landing, n, seed, corpus=corpus, days=1, start=day)
    else:
        raise ValueError(f"unknown profile {profile!r}: generated or realistic")
    return sum(p.stat().st_size for p in (landing / f"date={day}").glob("*.jsonl"))


def run_chain(code: Path, profile: str, n: int, args, days: int) -> list[dict]:
    home = Path(tempfile.mkdtemp(prefix=f"learnloop-chain-{profile}-{n}-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LEARNLOOP_", "DAGSTER_HOME"))}
    env.update({"LEARNLOOP_HOME": str(home), "TQDM_DISABLE": "1",
                "LEARNLOOP_HASH_KEY": "bench-hash-key"})
    rows = []
    try:
        for d in range(days):
            day = (date.fromisoformat(args.start) + timedelta(days=d)).isoformat()
            t0 = time.perf_counter()
            size = write_day(profile, home / "landing", n, args.seed + d, day, args.corpus)
            print(f"  [{profile} n={n:,} day {d + 1}] wrote {size / 2**20:,.0f} MiB of landing "
                  f"files in {time.perf_counter() - t0:.0f} s (not timed)", flush=True)
            for stage in args.stages:
                r = measure_stage(code, home, stage, day, env)
                r.update(profile=profile, n=n, day=d + 1, code=str(code),
                         load=round(os.getloadavg()[0], 2),
                         cpu_ms_per_item=round(1000 * r["cpu_s"] / n, 3))
                rows.append(r)
                print(f"    {stage:<10} wall {r['wall_s']:>9.1f} s  cpu {r['cpu_s']:>9.1f} s  "
                      f"{r['cpu_ms_per_item']:>8.3f} cpu-ms/item  rss {r['peak_rss_mib']:>6} MiB"
                      f"  load {r['load']}", flush=True)
        sizes = {name: _du(home / name) for name in ("landing", "warehouse.duckdb", "lancedb",
                                                     "store.db")}
        print("    on disk after the chain (MiB): "
              + ", ".join(f"{k} {v / 2**20:,.1f}" for k, v in sizes.items()), flush=True)
        for r in rows:
            r["disk_bytes"] = sizes
    finally:
        if args.keep:
            print(f"  kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return rows


def print_tables(rows: list[dict], baseline: list[dict]) -> None:
    print("\nstage x size x profile (first day): wall s / CPU s / peak RSS MiB / CPU ms per item")
    first = [r for r in rows if r["day"] == 1]
    for profile in dict.fromkeys(r["profile"] for r in first):
        sizes = sorted({r["n"] for r in first if r["profile"] == profile})
        print(f"\n{profile}")
        print(f"  {'stage':<11}" + "".join(f"{f'n={s:,}':>42}" for s in sizes))
        for stage in list(dict.fromkeys(r["stage"] for r in first)) + ["TOTAL"]:
            cells = []
            for s in sizes:
                sel = [r for r in first if r["profile"] == profile and r["n"] == s
                       and (stage == "TOTAL" or r["stage"] == stage)]
                if not sel:
                    cells.append(f"{'-':>42}")
                    continue
                wall = sum(r["wall_s"] for r in sel)
                cpu = sum(r["cpu_s"] for r in sel)
                rss = max(r["peak_rss_mib"] for r in sel)
                cells.append(f"{wall:>9.1f} / {cpu:>9.1f} / {rss:>6} / {1000 * cpu / s:>7.3f}")
            print(f"  {stage:<11}" + "".join(f"{c:>42}" for c in cells))
        for s in sizes:
            sel = [r for r in first if r["profile"] == profile and r["n"] == s]
            wall = sum(r["wall_s"] for r in sel)
            per_day = DAY_SECONDS / wall * s if wall else 0
            print(f"  n={s:,}: chain {wall:,.0f} s wall -> {per_day:,.0f} interactions/day on this "
                  f"machine; headroom for 1M/day: {per_day / 1e6:.1f}x")
    later = [r for r in rows if r["day"] > 1]
    if later:
        print("\nper-item CPU cost, day 1 vs day 2 on top of day 1's history (ms per item)")
        for r in later:
            r1 = next(x for x in first if x["profile"] == r["profile"] and x["n"] == r["n"]
                      and x["stage"] == r["stage"] and x["code"] == r["code"])
            print(f"  {r['profile']:<10} n={r['n']:<9,} {r['stage']:<11} {r1['cpu_ms_per_item']:>8.3f}"
                  f" -> {r['cpu_ms_per_item']:>8.3f}")
    if baseline:
        print("\nspeed-up over the baseline code, per CPU-second (baseline CPU s / new CPU s)")
        for b in baseline:
            new = next((r for r in first if r["profile"] == b["profile"] and r["n"] == b["n"]
                        and r["stage"] == b["stage"]), None)
            if new and new["cpu_s"] > 0:
                print(f"  {b['profile']:<10} n={b['n']:<9,} {b['stage']:<11} {b['cpu_s']:>9.1f} s"
                      f" -> {new['cpu_s']:>9.1f} s = {b['cpu_s'] / new['cpu_s']:.1f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # the child's mode
    ap.add_argument("--day", default="2026-11-01", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--profiles", default="generated,realistic")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--corpus", default=None,
                    help="folder of the public samples for the realistic profile (shared/data)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--start", default="2026-11-01")
    ap.add_argument("--history", action="store_true", help="also a second day on top of the first")
    ap.add_argument("--baseline-code", type=Path, default=None)
    ap.add_argument("--baseline-sizes", default="10000")
    ap.add_argument("--keep", action="store_true", help="keep each run's LEARNLOOP_HOME")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, args.day)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    profiles = [p for p in args.profiles.split(",") if p]
    print(f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB, "
          f"python {sys.version.split()[0]}, load average at start {os.getloadavg()}")
    rows: list[dict] = []
    baseline: list[dict] = []
    for profile in profiles:
        for n in sizes:
            rows += run_chain(ROOT, profile, n, args, days=2 if args.history else 1)
        if args.baseline_code:
            for n in [int(s) for s in args.baseline_sizes.split(",") if s]:
                print(f"  baseline code {args.baseline_code}:")
                baseline += run_chain(args.baseline_code.resolve(), profile, n, args, days=1)
    print_tables(rows, baseline)
    print(f"\nload average at end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "baseline": baseline}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
