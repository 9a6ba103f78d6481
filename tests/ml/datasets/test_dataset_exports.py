"""write_exports: every line schema-valid, the Hugging Face folder loads, the same build writes
the same bytes; and the schemas themselves refuse bad lines."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import datasets
import pytest
from conftest import make_example, random_vectors

from ml.datasets import DatasetSpec, build_dataset
from ml.datasets.exports import (
    EXPORT_PATHS,
    dataset_checksum,
    read_manifest,
    verify_exports,
    write_exports,
)
from ml.datasets.schemas import line_errors, validate_line

FORMAT_SCHEMA = {"openai_train": "openai_chat", "openai_validation": "openai_chat",
                 "gemini_train": "gemini", "gemini_validation": "gemini",
                 "dpo_train": "dpo", "dpo_validation": "dpo"}


def _inputs():
    v = random_vectors(40, dim=384, seed=9)
    cands = []
    for i in range(24):
        cands.append(make_example(
            i, f"Question {i}: can you help with ünïcode — “quotes”?",
            f"Answer {i}.\nSecond line.", category=("billing", "shipping", "account")[i % 3],
            session=f"s{i // 2}", vector=v[i], system="You are Acme's assistant." if i % 4 else None,
            quality=None if i == 5 else 0.6 + (i % 4) / 10))
    # a multi-turn conversation
    cands.append(make_example(30, "And the invoice?", vector=v[30], messages=[
        {"role": "user", "content": "Hi, I was charged twice."},
        {"role": "assistant", "content": "Sorry about that. Which order?"},
        {"role": "user", "content": "Order 12. And the invoice?"}]))
    pool = [make_example(100 + i, f"Old question {i}", source="replay:interaction",
                         key=f"interaction:acme/old{i}", vector=v[31 + i]) for i in range(6)]
    pairs = [{"key": f"sample:{i}", "chosen": f"Answer {i}.\nSecond line.",
              "rejected": f"Wrong answer {i}."} for i in range(0, 24, 2)]
    pairs.append({"key": "sample:999", "chosen": "x", "rejected": "y"})  # not in the dataset
    pairs.append({"key": "sample:1", "chosen": "same", "rejected": " same "})  # no preference
    return cands, pool, pairs


SPEC = DatasetSpec(min_size=0, max_category_share=None)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cands, pool, pairs = _inputs()
    build = build_dataset(cands, pool, SPEC)
    out = tmp_path_factory.mktemp("exports") / build.version_hash[:12]
    paths = write_exports(build, out, pairs)
    return build, out, paths, pairs


def _jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def test_every_line_of_every_format_is_schema_valid(written):
    build, out, paths, _ = written
    assert paths == EXPORT_PATHS
    assert sorted(p.relative_to(out).as_posix() for p in out.iterdir()) == [
        "dpo", "gemini", "hf", "manifest.json", "openai"]
    for fmt, schema in FORMAT_SCHEMA.items():
        lines = _jsonl(out / paths[fmt])
        split = fmt.rsplit("_", 1)[1]
        if not fmt.startswith("dpo"):
            assert len(lines) == len(getattr(build, split)) > 0
        for line in lines:
            validate_line(schema, line)


def test_the_formats_hold_the_examples_as_documented(written):
    build, out, paths, _ = written
    first = build.train[0]
    openai = _jsonl(out / paths["openai_train"])[0]
    assert openai == {"messages": first.conversation()}
    assert openai["messages"][-1] == {"role": "assistant", "content": first.completion}
    multi = next(e for e in build.train + build.validation if e.key == "sample:30")
    split = "train" if multi in build.train else "validation"
    gemini = next(g for g, e in zip(_jsonl(out / paths[f"gemini_{split}"]),
                                    getattr(build, split), strict=True) if e.key == "sample:30")
    assert [c["role"] for c in gemini["contents"]] == ["user", "model", "user", "model"]
    assert "systemInstruction" not in gemini
    with_system = next(i for i, e in enumerate(build.train) if e.messages[0]["role"] == "system")
    g = _jsonl(out / paths["gemini_train"])[with_system]
    assert g["systemInstruction"] == {"role": "system",
                                      "parts": [{"text": "You are Acme's assistant."}]}
    assert g["contents"][0]["role"] == "user"
    # non-ASCII is written as UTF-8, not escaped
    assert "ünïcode — “quotes”" in (out / paths["openai_train"]).read_text(encoding="utf-8")


def test_dpo_pairs_follow_their_samples_split(written):
    build, out, paths, pairs = written
    split_of = build.split_of()
    manifest = read_manifest(out)
    expected = {"train": 0, "validation": 0}
    for p in pairs[:-2]:
        expected[split_of[p["key"]]] += 1
    assert manifest["dpo"] == {**expected, "not_in_dataset": 1, "invalid": 1}
    for split in ("train", "validation"):
        lines = _jsonl(out / paths[f"dpo_{split}"])
        assert len(lines) == expected[split]
        prompts = {json.dumps(e.messages) for e in getattr(build, split)}
        for line in lines:
            assert json.dumps(line["prompt"]) in prompts
            assert line["chosen"][0]["role"] == line["rejected"][0]["role"] == "assistant"


def test_the_hugging_face_folder_loads_with_load_from_disk(written):
    build, out, paths, _ = written
    dd = datasets.load_from_disk(str(out / paths["hf_datasets"]))
    assert sorted(dd) == ["train", "validation"]
    assert dd["train"].num_rows == len(build.train)
    assert dd["validation"].num_rows == len(build.validation)
    row = dd["train"][0]
    first = build.train[0]
    assert row["key"] == first.key and row["prompt"] == [dict(m) for m in first.messages]
    assert row["completion"] == [{"role": "assistant", "content": first.completion}]
    assert set(list(dd["train"]["source"])) == {"human", "replay:interaction"}
    assert None in list(dd["train"]["quality"]) + list(dd["validation"]["quality"])


def test_manifest_files_and_checksum(written):
    build, out, _, _ = written
    manifest = read_manifest(out)
    assert manifest["version_hash"] == build.version_hash
    assert manifest["spec"] == build.spec.to_dict() and manifest["counts"] == build.counts
    assert manifest["checksum"] == dataset_checksum(out)
    assert "hf/train/state.json" in manifest["files"] and "manifest.json" not in manifest["files"]
    assert manifest["lines"]["openai_train"] == len(build.train)
    assert verify_exports(out) == []


def test_two_builds_of_the_same_data_write_identical_bytes(written, tmp_path):
    build, out, _, pairs = written
    cands, pool, _ = _inputs()
    random.Random(1).shuffle(cands)
    random.Random(2).shuffle(pool)
    again = build_dataset(cands, pool, SPEC)
    assert again.version_hash == build.version_hash
    other = tmp_path / "again"
    write_exports(again, other, list(reversed(pairs)))
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    assert len(files) >= 13
    for rel in files:
        assert (out / rel).read_bytes() == (other / rel).read_bytes(), rel
    # the fingerprint is ours, from the content hash
    state = json.loads((other / "hf/train/state.json").read_text())
    assert state["_fingerprint"] == hashlib.sha256(
        f"{build.version_hash}:train".encode()).hexdigest()[:16]


def test_rewriting_replaces_the_folder_and_tampering_is_seen(written, tmp_path):
    build, _, _, pairs = written
    out = tmp_path / "v"
    write_exports(build, out, pairs)
    (out / "stray.txt").write_text("left over")
    write_exports(build, out, pairs)  # replaced whole: the stray file is gone
    assert not (out / "stray.txt").exists() and verify_exports(out) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with open(out / "openai/train.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{}\n")
    (out / "gemini/validation.jsonl").unlink()
    assert verify_exports(out) == ["missing: gemini/validation.jsonl",
                                   "changed: openai/train.jsonl"]


# ---- the schemas refuse bad lines -------------------------------------------------------------

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}
S = {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(("line", "error"), [
    ({"messages": [U, A]}, None),
    ({"messages": [S, U, A, U, A]}, None),
    ({"messages": [A, U]}, "the first turn must have role 'user'"),
    ({"messages": [U, U, A]}, "turn 1: expected role 'assistant'"),
    ({"messages": [U, A, U]}, "the last turn must have role 'assistant'"),
    ({"messages": [U, S, A]}, "'system' is allowed only as the first message"),
    ({"messages": [U, {"role": "assistant"}]}, "'content' is a required property"),
    ({"messages": [U, {"role": "assistant", "content": "  "}]}, "does not match"),
    ({"messages": [U, {"role": "tool", "content": "x"}]}, "is not one of"),
    ({"prompt": [U, A]}, "'messages' is a required property"),
    ({"messages": [U, A], "extra": 1}, "Additional properties are not allowed"),
])
def test_openai_chat_schema(line, error):
    errors = line_errors("openai_chat", line)
    assert (errors == []) if error is None else any(error in e for e in errors), errors


def _g(role, text="x"):
    return {"role": role, "parts": [{"text": text}]}


@pytest.mark.parametrize(("line", "error"), [
    ({"contents": [_g("user"), _g("model")]}, None),
    ({"systemInstruction": {"role": "system", "parts": [{"text": "Be brief."}]},
      "contents": [_g("user"), _g("model"), _g("user"), _g("model")]}, None),
    ({"contents": [_g("model"), _g("user")]}, "the first turn must have role 'user'"),
    ({"contents": [_g("user"), _g("user"), _g("model")]}, "expected role 'model'"),
    ({"contents": [_g("user"), _g("model"), _g("user")]}, "the last turn must have role"),
    ({"contents": [_g("user"), _g("assistant")]}, "is not one of"),
    ({"contents": [_g("user"), {"role": "model"}]}, "'parts' is a required property"),
    ({"contents": [_g("user"), {"role": "model", "parts": []}]}, "should be non-empty"),
    ({"systemInstruction": {"role": "system"}, "contents": [_g("user"), _g("model")]},
     "'parts' is a required property"),
    ({"messages": [U, A]}, "'contents' is a required property"),
])
def test_gemini_schema(line, error):
    errors = line_errors("gemini", line)
    assert (errors == []) if error is None else any(error in e for e in errors), errors


@pytest.mark.parametrize(("line", "error"), [
    ({"prompt": [U], "chosen": [A], "rejected": [A]}, None),
    ({"prompt": [S, U, A, U], "chosen": [A], "rejected": [A]}, None),
    ({"prompt": [U, A], "chosen": [A], "rejected": [A]}, "the last turn must have role 'user'"),
    ({"prompt": [U], "chosen": [A]}, "'rejected' is a required property"),
    ({"prompt": [U], "chosen": [U], "rejected": [A]}, "is not one of"),
    ({"prompt": [U], "chosen": [A, A], "rejected": [A]}, "is too long"),
    ({"prompt": "Hi", "chosen": [A], "rejected": [A]}, "is not of type 'array'"),
])
def test_dpo_schema(line, error):
    errors = line_errors("dpo", line)
    assert (errors == []) if error is None else any(error in e for e in errors), errors


def test_an_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        validate_line("csv", {})
