"""Benchmark: landing files -> ml.ingest.ingest_files -> ml.quality.score_interactions.

    python bench/ingest.py --n 1000000

Generates N interactions into a temporary landing folder (with ``ml.generate`` when it is
importable, else with the simple seeded generator below), times the vectorized ingest and the
scoring of the whole set, measures the naive per-record baseline (``ml.ingest.naive_ingest``) on a
sub-sample in the same run, and prints interactions/s, peak RSS (this process plus the ingest
worker processes), the per-stage timings and the speedup. Results are published in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.ingest import ingest_files, naive_ingest  # noqa: E402
from ml.quality import score_interactions  # noqa: E402

_QUESTIONS = [
    "How do I reset my password? I tried twice and the link expired.",
    "My invoice for March shows a charge of $49.99 twice, order #A1029384. Can you refund one?",
    "Where is my parcel? Tracking says it left the depot on 2024-03-02.",
    "Can I change the delivery address for order 88123412 to my office?",
    "The app crashes when I open settings on Android 14, version 3.2.1.",
    "Please update my phone number to +44 20 7946 0958 and my email to jane.doe@example.com.",
    "I want to cancel my subscription before the next billing date.",
    "Do you ship to Canada, and how long does it take?",
    "My card 4111 1111 1111 1111 was declined, what should I do?",
    "Is there a student discount for the annual plan?",
]
_ANSWERS = [
    "You can reset your password from the login page: click 'Forgot password', enter your email "
    "and follow the link we send you. Links expire after 30 minutes, so use it right away.",
    "I see two charges on the March invoice. I have opened a refund request for the duplicate; "
    "it will appear on your statement within 5-7 business days.",
    "Your parcel is in transit and should arrive within two business days. You will get an "
    "update when it is out for delivery.",
    "Yes, the delivery address can be changed until the order ships. I have updated it for you.",
    "Sorry about that. Please update to version 3.2.2, which fixes the crash in settings.",
    "Done: your contact details are updated. You will receive a confirmation message shortly.",
    "Your subscription is cancelled and stays active until the end of the current period.",
    "We ship to Canada; delivery usually takes 5 to 8 business days.",
    "I'm sorry, I can't see card details. Please contact your bank or try another payment method.",
    "Students get 40% off the annual plan with a valid student email address.",
]


def _simple_records(n: int, seed: int, day: str):
    """Seeded demo records: ~10% carry PII, ~0.5% are malformed, ~0.5% are exact re-sends."""
    rng = random.Random(seed)
    base = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    for i in range(n):
        k = rng.randrange(len(_QUESTIONS))
        ts = base + timedelta(seconds=rng.randrange(86400), microseconds=rng.randrange(10**6))
        rec = {
            "interaction_id": f"bench-{seed}-{i:09d}",
            "tenant_id": f"tenant-{rng.randrange(5)}",
            "session_id": f"sess-{rng.randrange(n // 3 + 1):08d}",
            "turn_index": rng.randrange(6),
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "channel": rng.choice(["web", "app", "email"]),
            "model": {"provider": "local", "name": "support-bot", "version": f"v{rng.randrange(3)}"},
            "messages": [
                {"role": "system", "content": "You are a helpful support assistant."},
                {"role": "user", "content": _QUESTIONS[k]},
            ],
            "response": _ANSWERS[k],
            "latency_ms": round(rng.uniform(300, 9000), 1),
            "tokens": {"prompt": rng.randrange(50, 400), "completion": rng.randrange(20, 600)},
        }
        r = rng.random()
        if r < 0.3:
            rec["feedback"] = {"rating": rng.randrange(1, 6)}
        elif r < 0.5:
            rec["feedback"] = {"thumbs": rng.choice(["up", "down"]), "comment": "thanks"}
        if rng.random() < 0.6:
            rec["signals"] = {"accepted": rng.random() < 0.6, "user_continued": rng.random() < 0.5,
                              "time_to_first_use_s": round(rng.uniform(1, 600), 1)}
        if rng.random() < 0.05:
            rec["human_correction"] = {"agent_id": "agent-7", "corrected_response": "Corrected.",
                                       "category": "wrong_info"}
        if rng.random() < 0.3:
            rec["metadata"] = {"intent": "billing", "language": "en", "tags": ["demo"]}
        line = json.dumps(rec, ensure_ascii=False)
        r = rng.random()
        if r < 0.002:
            line = line[: len(line) // 2]  # truncated write
        elif r < 0.005:
            rec["feedback"] = {"rating": 9}
            line = json.dumps(rec)
        yield line
        if rng.random() < 0.005:
            yield line  # at-least-once delivery: exact duplicate


def generate_landing(folder: Path, n: int, seed: int, day: str, files: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from ml.generate import generate_records  # noqa: PLC0415 - optional, written in parallel
    except ImportError:
        generate_records = None
    if generate_records is not None:
        source = "ml.generate"
        lines = (json.dumps(r, ensure_ascii=False, default=str) if isinstance(r, dict) else r
                 for r in generate_records(n, seed))
    else:
        source = "bench.ingest simple generator"
        lines = _simple_records(n, seed, day)
    per_file = n // files + 1
    paths = []
    handles = [open(folder / f"bench-{j:02d}.jsonl", "w", encoding="utf-8") for j in range(files)]
    try:
        for i, line in enumerate(lines):
            handles[min(i // per_file, files - 1)].write(line + "\n")
    finally:
        for h in handles:
            h.close()
    paths = [folder / f"bench-{j:02d}.jsonl" for j in range(files)]
    print(f"generator: {source}")
    return paths


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

    def __enter__(self) -> "PeakRSS":
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
        total = t2 - t0
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
        print(f"vectorized ingest+score: {total:.2f} s = {lines / total:,.0f} interactions/s")
        print(f"peak RSS during ingest+score (this process + workers): {mem.peak / 2**30:.2f} GiB "
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
        naive_rate = naive.stats["lines"] / (t2 - t0)
        print(f"naive baseline on {naive.stats['lines']:,} lines: {t2 - t0:.2f} s "
              f"(ingest {t1 - t0:.2f} s, score {t2 - t1:.2f} s, {naive_scores.height:,} rows) = "
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
