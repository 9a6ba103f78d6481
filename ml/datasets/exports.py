"""Writing a built dataset version to a folder: :func:`write_exports`.

The version folder holds (format -> relative path; :func:`write_exports` returns this mapping):

* ``openai_train`` / ``openai_validation`` -> ``openai/train.jsonl`` / ``openai/validation.jsonl``:
  OpenAI chat fine-tuning, ``{"messages": [...]}`` per line: the prompt, then the completion as
  the final ``assistant`` message.
* ``gemini_train`` / ``gemini_validation`` -> ``gemini/train.jsonl`` / ``gemini/validation.jsonl``:
  Gemini / Vertex AI supervised tuning, ``{"systemInstruction"?, "contents"}``: the system
  messages joined into ``systemInstruction`` (``role: "system"``), ``assistant`` -> ``model``.
  (Vertex AI takes at most 256 validation examples; the asset may cut that file for upload.)
* ``dpo_train`` / ``dpo_validation`` -> ``dpo/train.jsonl`` / ``dpo/validation.jsonl``: TRL's
  conversational preference form, ``{"prompt": [messages], "chosen": [{"role": "assistant",
  ...}], "rejected": [{"role": "assistant", ...}]}``; a pair goes to the split its sample
  (``key``) is in, pairs of samples outside the dataset are left out (counted).
* ``hf_datasets`` -> ``hf/``: a ``datasets.DatasetDict`` (train, validation) saved with
  ``save_to_disk`` (read it with ``datasets.load_from_disk``); columns ``key``, ``prompt`` and
  ``completion`` (TRL's conversational prompt-completion form: lists of {role, content}),
  ``category``, ``intent``, ``source``, ``quality``.
* ``manifest`` -> ``manifest.json``: spec, counts, stats, version_hash, lines per file, DPO
  counts, every file's sha256 and size, and the dataset checksum.

Every line is checked against its schema (``ml.datasets.schemas``) as it is written: an invalid
line is an error, never a silently bad file. Lines are in key order, JSON with ``ensure_ascii=
False`` and compact separators, UTF-8, ``\\n`` endings.

Byte-determinism: the same build writes the same bytes. The Hugging Face folder is made so: the
Arrow schema is explicit, one shard per split, and each split's fingerprint (``state.json``) is
set from the version hash instead of being left to ``datasets``. :func:`dataset_checksum` is
SHA-256 over the sorted (relative path, sha256) of every file but the manifest; it is in the
manifest and :func:`verify_exports` re-checks a folder against its manifest.

The folder is written next to ``out_dir`` under a temporary name and renamed into place, so a
reader never sees half a version; an existing ``out_dir`` is replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ml.datasets.build import DatasetBuild
from ml.datasets.examples import Example, conversation_problem
from ml.datasets.schemas import line_errors

MANIFEST = "manifest.json"
EXPORT_PATHS: dict[str, str] = {
    "openai_train": "openai/train.jsonl",
    "openai_validation": "openai/validation.jsonl",
    "gemini_train": "gemini/train.jsonl",
    "gemini_validation": "gemini/validation.jsonl",
    "dpo_train": "dpo/train.jsonl",
    "dpo_validation": "dpo/validation.jsonl",
    "hf_datasets": "hf",
    "manifest": MANIFEST,
}
MANIFEST_VERSION = 1


# ---- lines ------------------------------------------------------------------------------------

def openai_line(ex: Example) -> dict[str, Any]:
    """``{"messages": [...prompt, {"role": "assistant", "content": completion}]}``."""
    return {"messages": [{"role": m["role"], "content": m["content"]}
                         for m in ex.conversation()]}


def gemini_line(ex: Example) -> dict[str, Any]:
    """``{"systemInstruction": {"role": "system", "parts": [{"text"}]}`` (when the prompt has a
    system message), ``"contents": [{"role": "user" | "model", "parts": [{"text"}]}, ...]}``."""
    conv = ex.conversation()
    system = [m["content"] for m in conv if m["role"] == "system"]
    contents = [{"role": "model" if m["role"] == "assistant" else "user",
                 "parts": [{"text": m["content"]}]} for m in conv if m["role"] != "system"]
    line: dict[str, Any] = {}
    if system:
        line["systemInstruction"] = {"role": "system", "parts": [{"text": "\n\n".join(system)}]}
    line["contents"] = contents
    return line


def _json_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_jsonl(path: Path, lines: Iterable[dict[str, Any]], fmt: str) -> int:
    """Write ``lines`` (each validated against schema ``fmt``); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for n, obj in enumerate(lines, 1):
            errors = line_errors(fmt, obj)
            if errors:
                raise ValueError(f"{path.name} line {n} is not a valid {fmt} line: {errors[:3]}")
            fh.write(_json_line(obj))
    return n


# ---- DPO --------------------------------------------------------------------------------------

def dpo_lines(build: DatasetBuild, preference_pairs: Iterable[Mapping[str, Any]]
              ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The DPO lines per split and their counts. A pair is ``{key, prompt (or messages): list
    of {role, content} (default: the dataset example's prompt), chosen, rejected, category?}``;
    it goes to the split its ``key`` is in; pairs whose key is in neither split are counted as
    ``not_in_dataset``; pairs with an invalid prompt, a blank side or chosen == rejected as
    ``invalid``. Lines are in key order (then chosen, rejected)."""
    where = build.split_of()
    by_key = {e.key: e for _, e in build.split_items()}
    out: dict[str, list[tuple[tuple, dict[str, Any]]]] = {"train": [], "validation": []}
    counts = {"train": 0, "validation": 0, "not_in_dataset": 0, "invalid": 0}
    for n, pair in enumerate(preference_pairs):
        if not isinstance(pair, Mapping) or not isinstance(pair.get("key"), str):
            raise ValueError(f"preference_pairs[{n}]: a pair is a mapping with a string key, "
                             f"got {pair!r}")
        key = pair["key"]
        split = where.get(key)
        if split is None:
            counts["not_in_dataset"] += 1
            continue
        prompt = pair.get("prompt", pair.get("messages"))
        if prompt is None:
            prompt = by_key[key].messages
        chosen, rejected = pair.get("chosen"), pair.get("rejected")
        if isinstance(prompt, str) or not isinstance(prompt, Sequence) \
                or not all(isinstance(m, Mapping) for m in prompt) \
                or conversation_problem(prompt, ends_with="user") \
                or not isinstance(chosen, str) or not isinstance(rejected, str) \
                or not chosen.strip() or not rejected.strip() \
                or chosen.strip() == rejected.strip():
            counts["invalid"] += 1
            continue
        line = {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
        out[split].append(((key, chosen, rejected), line))
        counts[split] += 1
    return ({s: [line for _, line in sorted(rows, key=lambda r: r[0])]
             for s, rows in out.items()}, counts)


# ---- Hugging Face -----------------------------------------------------------------------------

def _hf_table(examples: Sequence[Example]) -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema([
        ("key", pa.string()), ("prompt", pa.list_(message)), ("completion", pa.list_(message)),
        ("category", pa.string()), ("intent", pa.string()), ("source", pa.string()),
        ("quality", pa.float64()),
    ])
    return pa.table({
        "key": [e.key for e in examples],
        "prompt": [[{"role": m["role"], "content": m["content"]} for m in e.messages]
                   for e in examples],
        "completion": [[{"role": "assistant", "content": e.completion}] for e in examples],
        "category": [e.category for e in examples],
        "intent": [e.intent for e in examples],
        "source": [e.source for e in examples],
        "quality": [e.quality for e in examples],
    }, schema=schema)


def write_hf_dataset(build: DatasetBuild, path: Path) -> None:
    """``datasets.DatasetDict`` (train, validation) saved at ``path``, byte-deterministic."""
    import datasets
    from datasets.table import InMemoryTable

    splits = {}
    for split, examples in (("train", build.train), ("validation", build.validation)):
        table = _hf_table(examples)
        info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(table.schema))
        fingerprint = hashlib.sha256(f"{build.version_hash}:{split}".encode()).hexdigest()[:16]
        splits[split] = datasets.Dataset(InMemoryTable(table), info=info,
                                         split=datasets.NamedSplit(split),
                                         fingerprint=fingerprint)
    were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict(splits).save_to_disk(str(path), num_shards={"train": 1,
                                                                         "validation": 1})
    finally:
        if not were_disabled:
            datasets.enable_progress_bars()


# ---- files, checksum, manifest ----------------------------------------------------------------

def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: str | Path) -> dict[str, dict[str, Any]]:
    """relative path (POSIX) -> {sha256, bytes} of every file under ``folder`` but the
    manifest, sorted by path."""
    root = Path(folder)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST:
            out[rel] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return dict(sorted(out.items()))


def dataset_checksum(folder: str | Path) -> str:
    """SHA-256 over the sorted ``<relative path>\\0<sha256>\\n`` of every file of an export
    folder except ``manifest.json``: one value naming the exported bytes."""
    h = hashlib.sha256()
    for rel, d in file_digests(folder).items():
        h.update(f"{rel}\0{d['sha256']}\n".encode())
    return h.hexdigest()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Deterministic JSON: sorted keys, 2-space indent, trailing newline."""
    path.write_text(json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=2) + "\n",
                    encoding="utf-8", newline="\n")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))


def verify_exports(folder: str | Path) -> list[str]:
    """Differences between an export folder and its manifest (empty when it is intact)."""
    manifest = read_manifest(folder)
    listed, found = manifest.get("files", {}), file_digests(folder)
    problems = [f"missing: {p}" for p in sorted(set(listed) - set(found))]
    problems += [f"not in the manifest: {p}" for p in sorted(set(found) - set(listed))]
    problems += [f"changed: {p}" for p in sorted(set(listed) & set(found))
                 if listed[p]["sha256"] != found[p]["sha256"]]
    if not problems and manifest.get("checksum") != dataset_checksum(folder):
        problems.append("checksum differs")
    return problems


def fresh_dir(out_dir: Path) -> Path:
    """An empty temporary folder next to ``out_dir`` to write a version into."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``out_dir``, replacing an existing ``out_dir``."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)


def write_exports(build: DatasetBuild, out_dir: str | Path,
                  preference_pairs: Iterable[Mapping[str, Any]] = ()) -> dict[str, str]:
    """Write every export format of ``build`` into the version folder ``out_dir`` (replaced if
    it exists) and return format -> path relative to ``out_dir`` (:data:`EXPORT_PATHS`)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(out_dir)
    try:
        lines: dict[str, int] = {}
        for split, examples in (("train", build.train), ("validation", build.validation)):
            lines[f"openai_{split}"] = write_jsonl(tmp / EXPORT_PATHS[f"openai_{split}"],
                                                   (openai_line(e) for e in examples),
                                                   "openai_chat")
            lines[f"gemini_{split}"] = write_jsonl(tmp / EXPORT_PATHS[f"gemini_{split}"],
                                                   (gemini_line(e) for e in examples), "gemini")
        dpo, dpo_counts = dpo_lines(build, preference_pairs)
        for split in ("train", "validation"):
            lines[f"dpo_{split}"] = write_jsonl(tmp / EXPORT_PATHS[f"dpo_{split}"], dpo[split],
                                                "dpo")
        write_hf_dataset(build, tmp / EXPORT_PATHS["hf_datasets"])
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "kind": "training",
            "name": build.spec.name,
            "version_hash": build.version_hash,
            "spec": build.spec.to_dict(),
            "counts": build.counts,
            "stats": build.stats,
            "exports": dict(EXPORT_PATHS),
            "lines": lines,
            "dpo": dpo_counts,
            "files": file_digests(tmp),
            "checksum": dataset_checksum(tmp),
        }
        write_manifest(tmp / MANIFEST, manifest)
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(EXPORT_PATHS)
