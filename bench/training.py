"""Benchmark: the offline base model's pretraining and a LoRA fine-tune on it, on two data
profiles, and (``--demo``) the demo's training and evaluation wall time.

    python bench/training.py [--real ../shared/data] [--demo] [--json OUT]

Profiles (each: pretrain the offline base model on the logged conversations, then LoRA on the
corrected replies, both with the production defaults of ``ml.training``):

* ``generated``: ``ml.demo.generate`` logs (3,000 interactions by default; short templated
  replies); LoRA on the human agents' corrections in them.
* ``oasst1`` (with ``--real``): OpenAssistant oasst1, 100 English trees (Apache-2.0) through
  ``ml.importers.read_oasst``: long, unique, multi-turn replies; LoRA on the better-ranked
  sibling replies (``human_correction``). Conversations longer than ``max_seq_len`` (384 tokens)
  are cut as training cuts them (oldest prompt tokens first).

For each stage: wall seconds, CPU seconds of this process (user + system, every thread),
trained tokens per wall second and per CPU-second, validation loss before and after, and the
process's peak RSS so far. ``--demo`` runs ``learnloop demo`` in a temporary home as a child
process and reports its wall time, its CPU-seconds and peak RSS (of the child), and the duration
of each step of its ``training_job`` (base model, LoRA candidate, evaluation) read from the
Dagster instance. The machine's load average is printed before and after: figures taken while
something else runs are not comparable. Results: docs/benchmarks.md.
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: a checkout of another version can be measured

OASST = "oasst1-en100/en_100_tree.jsonl"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def measured(out: dict[str, Any]):
    wall, cpu = time.perf_counter(), _cpu()
    yield
    out["wall_s"] = round(time.perf_counter() - wall, 2)
    out["cpu_s"] = round(_cpu() - cpu, 2)
    out["peak_rss_mib"] = round(_rss_mib())


def generated_profile(n: int, seed: int) -> tuple[list, list, list]:
    """(pretraining conversations, LoRA train, LoRA validation) from demo logs."""
    from ml.demo.generate import generate_records

    records = []
    for line in generate_records(n, seed):  # JSONL lines; the planted malformed ones are left out
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            records.append(rec)
    return _split(records)


def _split(records: list[dict]) -> tuple[list, list, list]:
    """Conversations with the logged reply, and with the corrected reply (a fifth of those for
    validation), both through ``conversations_from_rows`` (bad roles and rows left out)."""
    from ml.training.base_model import conversations_from_rows

    convs, _ = conversations_from_rows(records)
    fixes, _ = conversations_from_rows(
        {"messages": r["messages"], "response": r["human_correction"]["corrected_response"]}
        for r in records if (r.get("human_correction") or {}).get("corrected_response"))
    cut = max(1, len(fixes) // 5)
    return convs, fixes[cut:], fixes[:cut]


def oasst_profile(data: Path) -> tuple[list, list, list]:
    from ml.importers import Accepted, read_oasst

    return _split([a.record for a in read_oasst(data / OASST) if isinstance(a, Accepted)])


def run_profile(name: str, convs: list, train: list, validation: list, work: Path,
                epochs: float | None) -> dict[str, Any]:
    from ml.training.base_model import BaseModelSpec, build_base_model
    from ml.training.lora import LoraSpec, train_lora

    spec = BaseModelSpec() if epochs is None else BaseModelSpec(epochs=epochs)
    out: dict[str, Any] = {"profile": name, "conversations": len(convs),
                           "lora_train": len(train), "lora_validation": len(validation),
                           "mean_reply_chars": round(sum(len(c[-1]["content"]) for c in convs)
                                                     / len(convs))}
    base: dict[str, Any] = {}
    with measured(base):
        res = build_base_model(convs, work / f"{name}-base", spec)
    m = res.metrics
    base.update(steps=m["steps"], epochs=spec.epochs, tokens=m["tokens_seen"],
                tokens_per_s=round(m["tokens_seen"] / base["wall_s"]),
                tokens_per_cpu_s=round(m["tokens_seen"] / base["cpu_s"]),
                val_loss=m["val_loss"], val_loss_initial=m["val_loss_initial"],
                n_params=m["n_params"])
    out["pretraining"] = base
    lora: dict[str, Any] = {}
    with measured(lora):
        lr = train_lora(work / f"{name}-base", train, validation, work / f"{name}-lora",
                        LoraSpec())
    m = lr.metrics
    lora.update(steps=m["steps"], epochs_run=m["epochs_run"], tokens=m["tokens_trained"],
                tokens_per_s=round(m["tokens_trained"] / lora["wall_s"]),
                tokens_per_cpu_s=round(m["tokens_trained"] / lora["cpu_s"]),
                val_loss_before=round(m["val_loss_before"], 4),
                val_loss_after=round(m["val_loss_after"], 4),
                trainable_params=m["trainable_params"])
    out["lora"] = lora
    return out


def run_demo(work: Path) -> dict[str, Any]:
    """``learnloop demo`` in a fresh home: wall, CPU-seconds and peak RSS of the child, and the
    step durations of its training_job from the Dagster instance."""
    home = work / "demo-home"
    env = {**os.environ, "LEARNLOOP_HOME": str(home)}
    exe = Path(sys.executable).parent / "learnloop"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([str(exe), "demo"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"learnloop demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_mib": round(after.ru_maxrss / 1024)}
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="training_job"))
        if not runs:
            raise RuntimeError("the demo ran no training_job")
        run = runs[0]
        stats = instance.get_run_stats(run.run_id)
        out["training_job_s"] = round(stats.end_time - stats.start_time, 1)
        out["steps_s"] = {s.step_key: round(s.end_time - s.start_time, 1)
                          for s in instance.get_run_step_stats(run.run_id)
                          if s.end_time and s.start_time}
    verdict = [line for line in proc.stdout.splitlines()
               if "a candidate" in line or "the challenger" in line or "models " in line]
    out["verdict"] = verdict
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="demo interactions of the generated "
                                                        "profile")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--real", type=Path, default=None,
                    help="folder of the public samples (oasst1-en100/...): adds the oasst1 profile")
    ap.add_argument("--epochs", type=float, default=None,
                    help="pretraining epochs (default: BaseModelSpec's)")
    ap.add_argument("--demo", action="store_true", help="also time `learnloop demo`")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    import torch

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": sys.version.split()[0],
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
        "profiles": []}
    with tempfile.TemporaryDirectory(prefix="learnloop-bench-training-") as tmp:
        work = Path(tmp)
        profiles = [("generated", lambda: generated_profile(args.n, args.seed))]
        if args.real is not None:
            if not (args.real / OASST).is_file():
                ap.error(f"--real {args.real}: {OASST} not found there")
            profiles.append(("oasst1", lambda: oasst_profile(args.real)))
        for name, load in profiles:
            convs, train, validation = load()
            r = run_profile(name, convs, train, validation, work, args.epochs)
            results["profiles"].append(r)
            p, lo = r["pretraining"], r["lora"]
            print(f"{name}: {r['conversations']:,} conversations (mean reply "
                  f"{r['mean_reply_chars']} chars), LoRA on {r['lora_train']} corrections "
                  f"({r['lora_validation']} validation)")
            print(f"  pretraining  {p['steps']:>5} steps  {p['wall_s']:>7.1f} s wall "
                  f"{p['cpu_s']:>7.1f} CPU-s  {p['tokens_per_s']:>6,} tok/s  "
                  f"{p['tokens_per_cpu_s']:>6,} tok/CPU-s  val loss {p['val_loss_initial']:.2f}"
                  f" -> {p['val_loss']:.2f}  peak RSS {p['peak_rss_mib']:,} MiB")
            print(f"  LoRA         {lo['steps']:>5} steps  {lo['wall_s']:>7.1f} s wall "
                  f"{lo['cpu_s']:>7.1f} CPU-s  {lo['tokens_per_s']:>6,} tok/s  "
                  f"{lo['tokens_per_cpu_s']:>6,} tok/CPU-s  val loss {lo['val_loss_before']:.2f}"
                  f" -> {lo['val_loss_after']:.2f}  peak RSS {lo['peak_rss_mib']:,} MiB")
        if args.demo:
            d = run_demo(work)
            results["demo"] = d
            print(f"learnloop demo: {d['wall_s']:.0f} s wall, {d['cpu_s']:.0f} CPU-s, peak RSS "
                  f"{d['peak_rss_mib']:,} MiB; training_job {d['training_job_s']:.0f} s: "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in d["steps_s"].items()))
            for line in d["verdict"]:
                print(f"  {line.strip()}")
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"machine: {results['machine']['cpus']} CPUs, torch {results['machine']['torch']} "
          f"with {results['machine']['torch_threads']} threads, load average before "
          f"{results['machine']['loadavg_before']}, after {results['machine']['loadavg_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
