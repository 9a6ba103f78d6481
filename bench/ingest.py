"""Benchmark: landing files -> ml.ingest.ingest_files -> ml.quality.score_interactions -> DuckDB.

    python bench/ingest.py --n 1000000

Generates N interactions into a temporary landing folder (``ml.demo.generate.generate_records``),
times the vectorized ingest, the scoring of the whole set and the writing of both frames into a
DuckDB warehouse with the writer the assets use (``ml.warehouse.replace_partition``), measures the
naive per-record baseline (``ml.ingest.naive_ingest`` + scoring + the same write) on a sub-sample
in the same run, and prints interactions/s, peak RSS (this process plus the ingest worker
processes), the per-stage timings and the speedup. Results are published in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml import warehouse  # noqa: E402
from ml.demo.generate import generate_records  # noqa: E402
from ml.ingest import ingest_files, naive_ingest  # noqa: E402
from ml.quality import score_interactions  # noqa: E402


def generate_landing(folder: Path, n: int, seed: int, day: str, files: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(r, ensure_ascii=False, default=str) if isinstance(r, dict) else r
             for r in generate_records(n, seed))
    per_file = n // files + 1
    handles = [open(folder / f"bench-{j:02d}.jsonl", "w", encoding="utf-8") for j in range(files)]
    try:
        for i, line in enumerate(lines):
            handles[min(i // per_file, files - 1)].write(line + "\n")
    finally:
        for h in handles:
            h.close()
    return [folder / f"bench-{j:02d}.jsonl" for j in range(files)]


def write_warehouse(path: Path, day: str, interactions, scores) -> float:
    """Write both frames as the assets do (one partition each); return the seconds it took."""
    t0 = time.perf_counter()
    con = warehouse.connect(path)
    try:
        warehouse.replace_partition(con, "interactions", day, interactions)
        warehouse.replace_partition(con, "interaction_quality", day, scores)
    finally:
        con.close()
    return time.perf_counter() - t0


class PeakRSS:
    """Samples the RSS of this process plus its child processes (the ingest workers) every 20 ms;
    ``peak`` is the largest sum seen, ``peak_main`` the largest RSS of this process alone."""

    def __init__(self) -> None:
        self.proc = psutil.Process(os.getpid())
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        main = self.proc.memory_info().rss
        total = main
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                pass
        self.peak_main = max(self.peak_main, main)
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self.peak = self.peak_main = 0
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="interactions to generate")
    ap.add_argument("--naive-n", type=int, default=20_000, help="sub-sample for the naive baseline")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--day", default="2024-03-01")
    ap.add_argument("--workers", type=int, default=None,
                    help="ingest worker processes (default: ml.ingest decides, one per CPU)")
    ap.add_argument("--keep", action="store_true", help="keep the generated landing folder")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="learnloop-bench-"))
    try:
        t0 = time.perf_counter()
        paths = generate_landing(tmp / f"date={args.day}", args.n, args.seed, args.day)
        gen_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in paths)
        print(f"generated {args.n:,} interactions, {size / 2**20:,.0f} MiB in {len(paths)} files "
              f"({gen_s:.1f} s, not timed)")

        key = b"bench-key"
        rss0 = psutil.Process().memory_info().rss
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = ingest_files(paths, args.day, key, workers=args.workers)
            t1 = time.perf_counter()
            scores = score_interactions(result.interactions)
            t2 = time.perf_counter()
            write_s = write_warehouse(tmp / "warehouse.duckdb", args.day, result.interactions,
                                      scores)
            t3 = time.perf_counter()
        total = t3 - t0
        lines = result.stats["lines"]
        print(f"ingest: {t1 - t0:.2f} s  ({result.interactions.height:,} accepted, "
              f"{result.quarantined.height:,} quarantined, "
              f"{result.stats['exact_duplicates']:,} exact duplicates dropped, "
              f"{result.stats['python_path_rows']:,} rows via the Python path)")
        workers = result.stats["workers"]
        how = (f"summed over {workers} worker processes; 'dedup' includes waiting for them"
               if workers else "in-process")
        print(f"ingest stages (s, {how}): {result.stats['timings_s']}")
        print(f"score:  {t2 - t1:.2f} s  ({scores.height:,} rows)")
        print(f"write:  {write_s:.2f} s  (DuckDB: interactions + interaction_quality)")
        print(f"vectorized ingest+score+write: {total:.2f} s = {lines / total:,.0f} interactions/s")
        print(f"peak RSS during ingest+score+write (this process + workers): {mem.peak / 2**30:.2f} GiB "
              f"(this process alone: {mem.peak_main / 2**30:.2f} GiB; before: "
              f"{rss0 / 2**30:.2f} GiB; ru_maxrss: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")
        del result, scores

        sub = tmp / "naive"
        sub.mkdir()
        sample = sub / "sample.jsonl"
        with open(paths[0], "rb") as src, open(sample, "wb") as dst:
            for i, line in enumerate(src):
                if i >= args.naive_n:
                    break
                dst.write(line)
        t0 = time.perf_counter()
        naive = naive_ingest([sample], args.day, key)
        t1 = time.perf_counter()
        naive_scores = score_interactions(naive.interactions)
        t2 = time.perf_counter()
        naive_write = write_warehouse(sub / "warehouse.duckdb", args.day, naive.interactions,
                                      naive_scores)
        t3 = time.perf_counter()
        naive_rate = naive.stats["lines"] / (t3 - t0)
        print(f"naive baseline on {naive.stats['lines']:,} lines: {t3 - t0:.2f} s "
              f"(ingest {t1 - t0:.2f} s, score {t2 - t1:.2f} s, write {naive_write:.2f} s, "
              f"{naive_scores.height:,} rows) = "
              f"{naive_rate:,.0f} interactions/s; extrapolated to {lines:,}: "
              f"{lines / naive_rate:,.0f} s")
        print(f"speedup: {lines / total / naive_rate:.1f}x")
        print(f"machine: nproc={os.cpu_count()}, RAM={psutil.virtual_memory().total / 2**30:.1f} GiB, "
              f"python {sys.version.split()[0]}, load average {os.getloadavg()}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
