"""`learnloop datasets list|show|diff|export` through click's CliRunner, on versions built with
ml.datasets and recorded in a real operational store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main
from ml.datasets import DatasetSpec, build_dataset
from ml.datasets.exports import write_exports
from store.datasets import record_dataset
from store.db import session_scope, upgrade

SYSTEM = {"role": "system", "content": "You are a support assistant."}


def _example(n: int, category: str) -> dict:
    vec = np.zeros(8, dtype=np.float32)
    vec[n % 8] = 1.0
    vec[(n * 3 + 1) % 8] += 0.5 + n / 100  # distinct directions: no near-duplicates
    return {"key": f"sample:{n}", "tenant_id": "t", "session_key": f"t/s{n}",
            "messages": [SYSTEM, {"role": "user", "content": f"Question number {n} about {category}?"}],
            "completion": f"Answer {n}.", "source": "human_agent", "review_item_id": n,
            "category": category, "vector": vec / np.linalg.norm(vec)}


def _record(url: str, root: Path, examples: list[dict], seed: int = 0):
    spec = DatasetSpec(min_size=1, max_category_share=None, near_dup_threshold=0.999,
                       seed=seed, replay_share=0.0)
    build = build_dataset(examples, [], spec)
    folder = root / build.version_hash
    exports = write_exports(build, folder)
    with session_scope(url) as s:
        ds, _ = record_dataset(s, kind="training", name="default",
                               version_hash=build.version_hash, items=build.items(),
                               spec=spec.to_dict(), counts=build.counts, stats=build.stats,
                               exports=exports, path=str(folder), n_train=len(build.train),
                               n_validation=len(build.validation))
        return ds.version_hash, folder


@pytest.fixture()
def env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LEARNLOOP_HOME", str(home))
    monkeypatch.delenv("LEARNLOOP_STORE_URL", raising=False)
    url = f"sqlite:///{home / 'store.db'}"
    home.mkdir()
    upgrade(url)
    return url, tmp_path / "versions"


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_show_diff_and_export(env, tmp_path):
    url, root = env
    first = [_example(n, "billing" if n % 2 else "login") for n in range(10)]
    a, folder_a = _record(url, root, first)
    b, _ = _record(url, root, first[2:] + [_example(n, "refund") for n in range(10, 14)])
    listed = json.loads(_run("datasets", "list", "--json").output)
    assert [d["version_hash"] for d in listed] == [b, a]
    assert "training" in _run("datasets", "list").output
    shown = _run("datasets", "show", a[:6])
    assert a in shown.output and "openai_train" in shown.output
    diff = json.loads(_run("datasets", "diff", a[:8], b[:8], "--json").output)
    assert diff["removed"] == ["sample:0", "sample:1"]
    assert diff["added"] == [f"sample:{n}" for n in range(10, 14)]
    assert "refund" in json.dumps(diff["categories"]["to"])
    text = _run("datasets", "diff", a[:8], b[:8]).output
    assert "added" in text and "removed" in text
    out = tmp_path / "out"
    res = _run("datasets", "export", a[:8], "--format", "openai", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "openai" / "train.jsonl").read_bytes() == \
        (folder_a / "openai" / "train.jsonl").read_bytes()
    assert (out / "openai" / "validation.jsonl").exists()
    printed = _run("datasets", "export", a[:8], "--format", "hf")
    assert printed.output.strip() == str(folder_a / "hf")


def test_bad_references_formats_and_tampered_files_are_refused(env):
    url, root = env
    a, folder = _record(url, root, [_example(n, "billing") for n in range(6)])
    for args, code, words in (
            (("datasets", "show", "zz"), 2, "at least 4"),
            (("datasets", "show", "ffff0000"), 2, "no dataset version"),
            (("datasets", "show", "default@9"), 2, "no dataset version"),
            (("datasets", "export", a[:8], "--format", "parquet"), 2, "no 'parquet' export")):
        res = CliRunner().invoke(main, list(args))
        assert res.exit_code == code and words in res.output, (args, res.output)
    with (folder / "openai" / "train.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"messages": []}\n')
    res = CliRunner().invoke(main, ["datasets", "export", a[:8], "--format", "openai"])
    assert res.exit_code == 1 and "changed: openai/train.jsonl" in res.output
