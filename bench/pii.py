"""Benchmark: PII recall / precision per type of ml.pii and of Presidio on the same labelled texts.

    python bench/pii.py --n 3000        # --seed 11 --real /work/shared/data (optional)

The texts are ``ml.pii_probe.probes(n, seed)``: chat-like sentences with one PII value each (exact
spans; many national formats, secrets of many kinds, NBSP and full-width variants) and about 30%
hard negatives (versions, part and order numbers, barcodes, dates, prices, ``logo@2x.png``, ...).

Scoring, per span: a gold value is *found* when every letter and digit of it is inside what the
detector replaced / reported (a value left half-visible, such as ``x769`` after a phone number, is
a miss); a reported span is *correct* when it overlaps a gold value, a false positive otherwise.
Ours: the spans ``ml.pii.scrub_text`` replaced (from a diff of input and output). Presidio:
``presidio-analyzer`` with its pattern recognizers (``ml.pii_presidio``, blank spaCy pipeline),
entities e-mail, phone, card, IBAN, IP, US SSN (it has none for secrets, names or addresses).
Throughput: texts per CPU second (``time.process_time``) of ``scrub_text`` one text at a time,
of ``scrub_frame`` on the whole set as one column, and of Presidio's ``analyze`` per text.

``--real DIR`` also scrubs the public chat texts in DIR (oasst1 ``en_100_tree.jsonl``, hh-rlhf
``test.jsonl.gz``) and prints how many placeholders per type were inserted, with examples.
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import json
import os
import re
import resource
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from ml.pii import PII_TYPES, scrub_frame, scrub_text  # noqa: E402
from ml.pii_presidio import PRESIDIO_ENTITIES, analyzer, presidio_spans  # noqa: E402
from ml.pii_probe import DISCLOSURE, STRUCTURED, probes  # noqa: E402

_PH = re.compile(r"\[(" + "|".join(PII_TYPES) + r")\]")


def our_spans(text: str) -> list[tuple[int, int, str]]:
    """Spans of ``text`` that ``scrub_text`` replaced, with the placeholder's type."""
    out, _ = scrub_text(text)
    spans = []
    sm = difflib.SequenceMatcher(None, text, out, autojunk=False)
    for op, a1, a2, b1, b2 in sm.get_opcodes():
        if op in ("replace", "delete", "insert"):
            m = _PH.search(out[max(0, b1 - 12):b2 + 12])
            spans.append((a1, a2, m.group(1) if m else "?"))
    # merge pieces of one replacement (the diff may split it around shared characters)
    merged: list[list] = []
    for s, e, t in spans:
        if merged and s - merged[-1][1] <= 2 and not _PH.search(text[merged[-1][1]:s]):
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e, t])
    return [(s, e, t) for s, e, t in merged if e > s]


def score(items, detect) -> tuple[dict, dict, int, int]:
    """Per gold type: [found, total]; per kind: [found, total]; correct and all reported spans."""
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    correct = reported = 0
    for probe, spans in zip(items, detect, strict=True):
        covered = set()
        for s, e, _ in spans:
            covered.update(range(s, e))
        for s, e, t in probe.spans:
            need = [i for i in range(s, e) if probe.text[i].isalnum()]
            ok = all(i in covered for i in need)
            per_type[t][0] += ok
            per_type[t][1] += 1
            per_kind[probe.kind][0] += ok
            per_kind[probe.kind][1] += 1
        for s, e, _ in spans:
            reported += 1
            correct += any(s < ge and gs < e for gs, ge, _ in probe.spans)
        if not probe.spans:
            per_kind[probe.kind][1] += 1
            per_kind[probe.kind][0] += not spans  # a negative left alone
    return per_type, per_kind, correct, reported


def ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "-"


def real_texts(folder: Path) -> list[str]:
    texts: list[str] = []
    oasst = next(iter(sorted(folder.rglob("en_100_tree.jsonl"))), folder / "none")
    if oasst.exists():
        def walk(node):
            texts.append(node.get("text", ""))
            for child in node.get("replies", []):
                walk(child)
        for line in oasst.read_text(encoding="utf-8").splitlines():
            if line.strip():
                walk(json.loads(line)["prompt"])
    hh = next(iter(sorted(folder.rglob("test.jsonl.gz"))), folder / "none")
    if hh.exists():
        with gzip.open(hh, "rt", encoding="utf-8") as fh:
            for line in fh:
                texts.append(json.loads(line)["chosen"])
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--real", type=Path, default=None)
    args = ap.parse_args()

    items = probes(args.n, args.seed)
    texts = [p.text for p in items]
    analyzer()  # build Presidio before timing

    t0 = time.process_time()
    for t in texts:
        scrub_text(t)
    ours_cpu = time.process_time() - t0
    frame = pl.DataFrame({"t": texts})
    t0 = time.process_time()
    scrub_frame(frame, ["t"])
    frame_cpu = time.process_time() - t0
    t0 = time.process_time()
    theirs = [presidio_spans(t, PRESIDIO_ENTITIES) for t in texts]
    presidio_cpu = time.process_time() - t0
    ours = [our_spans(t) for t in texts]

    o_type, o_kind, o_ok, o_rep = score(items, ours)
    p_type, p_kind, p_ok, p_rep = score(items, theirs)

    print(f"{len(items)} texts, {sum(len(p.spans) for p in items)} PII values, "
          f"{sum(not p.spans for p in items)} hard negatives (seed {args.seed})")
    print(f"\n{'type':<12} {'n':>5} {'ours':>7} {'presidio':>9}")
    for t in (*STRUCTURED, *DISCLOSURE):
        n = o_type[t][1]
        print(f"{t:<12} {n:>5} {ratio(o_type[t][0], n):>7} {ratio(p_type[t][0], n):>9}")

    def agg(table, types):
        return sum(table[t][0] for t in types), sum(table[t][1] for t in types)

    no_secret = [t for t in STRUCTURED if t != "SECRET"]
    for label, types in (("structured (all 7 types)", STRUCTURED),
                         ("structured without SECRET", no_secret)):
        a, b = agg(o_type, types)
        c, _ = agg(p_type, types)
        print(f"recall, {label:<26} ours {ratio(a, b)}   presidio {ratio(c, b)}")
    # precision over the structured types: spans of other types (PERSON/ADDRESS) left out
    o_struct = [[s for s in spans if s[2] in STRUCTURED] for spans in ours]
    _, _, o_ok_s, o_rep_s = score(items, o_struct)
    print(f"precision (reported spans overlapping a PII value): ours {ratio(o_ok_s, o_rep_s)} "
          f"({o_rep_s - o_ok_s} false of {o_rep_s})   presidio {ratio(p_ok, p_rep)} "
          f"({p_rep - p_ok} false of {p_rep})")
    neg_kinds = sorted(k for k in o_kind if k.startswith("negative/"))
    print("\nhard negatives left alone (ours / presidio):")
    for k in neg_kinds:
        print(f"  {k:<26} {o_kind[k][0]:>4}/{o_kind[k][1]:<4} {p_kind[k][0]:>4}/{p_kind[k][1]}")
    print("\nmisses by format (ours):")
    for k in sorted(o_kind):
        if not k.startswith("negative/") and o_kind[k][0] < o_kind[k][1]:
            print(f"  {k:<26} {o_kind[k][0]}/{o_kind[k][1]}")
    n = len(texts)
    print(f"\nthroughput (texts per CPU second): scrub_text {n / ours_cpu:,.0f}   scrub_frame "
          f"{n / frame_cpu:,.0f}   presidio {n / presidio_cpu:,.0f}   lead "
          f"{presidio_cpu / ours_cpu:.0f}x (scrub_text), {presidio_cpu / frame_cpu:.0f}x "
          f"(scrub_frame)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
          f"load avg {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")

    if args.real:
        real = real_texts(args.real)
        t0 = time.process_time()
        outs = [scrub_text(t)[0] for t in real]
        cpu = time.process_time() - t0
        counts: Counter[str] = Counter()
        examples: dict[str, list[str]] = defaultdict(list)
        for src, out in zip(real, outs, strict=True):
            for m in _PH.finditer(out):
                counts[m.group(1)] += 1
            for s, e, t in our_spans(src):
                if len(examples[t]) < 6:
                    examples[t].append(src[max(0, s - 25):e + 10].replace("\n", " "))
        print(f"\nreal texts: {len(real)} ({sum(map(len, real)) / 1e6:.1f} MB), "
              f"{len(real) / cpu:,.0f} texts/CPU s; placeholders inserted: {dict(counts)}")
        for t, ex in examples.items():
            print(f"  {t}: " + " | ".join(ex))


if __name__ == "__main__":
    main()
