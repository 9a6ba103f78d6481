"""The datasets stage over a real small chain: ingest -> embeddings -> audit -> teaching ->
review decisions (store.repo.decide, as the web app) -> eval_suite -> training_dataset.

Real DuckDB, SQLite, LanceDB and MiniLM; the offline rules auditor and retrieval teacher."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.audit import audit_candidates, audited_errors
from assets.datasets import CHECK_NAMES, eval_suite, training_dataset
from assets.embeddings import interaction_embeddings
from assets.teaching import preference_pairs, teacher_samples
from ml.datasets.schemas import line_errors
from store.datasets import dataset_items, get_dataset, list_datasets
from store.db import session_scope
from store.repo import ItemFilter, decide, list_items
from tests.assets.conftest import land_and_ingest
from tests.stores import materialize, resources_for

FRONT = [interaction_embeddings, audit_candidates, audited_errors, teacher_samples,
         preference_pairs]
SPEC = {"min_size": 5, "max_category_share": None}


@dg.asset(deps=[training_dataset])
def downstream_of_dataset() -> None:
    """Stands for training: must not run when a blocking dataset check fails."""


def _materialize(home: Path, assets, config: dict | None = None, raise_on_error: bool = True):
    run_config = {"ops": {"training_dataset": {"config": config}}} if config else None
    with dg.instance_for_test() as instance:
        return materialize(assets, home, instance=instance, resources=resources_for(home),
                           run_config=run_config, raise_on_error=raise_on_error)


def _decide_all(url: str, edit_every: int = 4, reject_every: int = 7) -> dict[int, str]:
    """Approve pending samples, edit every 4th (returns id -> edited text), reject every 7th."""
    edited: dict[int, str] = {}
    with session_scope(url) as s:
        items, _ = list_items(s, ItemFilter(kind="sample", status="pending"), limit=10_000)
        pending = [(i.id, i.version, i.proposed_response) for i in items]
    for n, (item_id, version, proposed) in enumerate(pending):
        with session_scope(url) as s:
            if n % reject_every == reject_every - 1:
                decide(s, item_id, decision="reject", expected_version=version, actor="rev")
            elif n % edit_every == 0:
                text = f"{proposed} (Checked by a reviewer, item {item_id}.)"
                decide(s, item_id, decision="edit", expected_version=version, actor="rev",
                       final_response=text)
                edited[item_id] = text
            else:
                decide(s, item_id, decision="approve", expected_version=version, actor="rev")
    return edited


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """One chain for the module (the front half takes a while): 600 interactions, samples
    decided, the datasets stage materialized once."""
    home = tmp_path_factory.mktemp("datasets") / "home"
    home.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("LEARNLOOP_HOME", str(home))
    try:
        land_and_ingest(home, n=600, seed=11)
        assert _materialize(home, FRONT).success
        url = resources_for(home)["store"].get_url()
        edited = _decide_all(url)
        assert _materialize(home, [preference_pairs]).success  # pairs of the decided samples
        first = _materialize(home, [eval_suite, training_dataset], SPEC)
        yield {"home": home, "url": url, "edited": edited, "first": first}
    finally:
        mp.undo()


def _latest(url: str, kind: str):
    with session_scope(url) as s:
        ds = list_datasets(s, kind=kind)[0]
        return ds, dataset_items(s, ds.id)


def test_a_version_with_four_exports_and_an_eval_suite(chain):
    from datasets import load_from_disk

    assert chain["first"].success
    ds, items = _latest(chain["url"], "training")
    assert ds.status == "ready" and ds.n_train >= SPEC["min_size"] and ds.n_validation > 0
    root = Path(ds.path)
    for fmt, rel in ds.exports.items():
        assert (root / rel).exists(), fmt
    for fmt, rel in (("openai_chat", "openai/train.jsonl"), ("gemini", "gemini/train.jsonl"),
                     ("dpo", "dpo/train.jsonl")):
        lines = (root / rel).read_text(encoding="utf-8").splitlines()
        assert lines, rel
        for line in lines:
            assert line_errors(fmt, json.loads(line)) == [], (rel, line[:200])
    hf = load_from_disk(str(root / "hf"))
    assert hf["train"].num_rows == ds.n_train
    assert hf["validation"].num_rows == ds.n_validation
    suite, suite_items = _latest(chain["url"], "eval_suite")
    assert suite.n_eval > 0 and suite.n_retention > 0
    assert (Path(suite.path) / "eval.jsonl").exists()
    # the versions are in the asset's metadata, and every blocking check ran and passed
    mats = chain["first"].asset_materializations_for_node("training_dataset")
    assert mats[-1].metadata["version"].value == ds.version_hash
    checks = {e.check_name: e.passed for e in chain["first"].get_asset_check_evaluations()}
    assert set(checks) == set(CHECK_NAMES) and all(checks.values())


def test_the_reviewer_text_wins_and_rejected_samples_stay_out(chain):
    ds, items = _latest(chain["url"], "training")
    keys = {i.item_key for i in items}
    texts = (Path(ds.path) / "openai/train.jsonl").read_text(encoding="utf-8") + \
        (Path(ds.path) / "openai/validation.jsonl").read_text(encoding="utf-8")
    edited_in = [i for i in chain["edited"] if f"sample:{i}" in keys]
    assert edited_in, "no edited sample made it into the dataset"
    for item_id in edited_in:
        assert json.dumps(chain["edited"][item_id], ensure_ascii=False)[1:-1] in texts
    with session_scope(chain["url"]) as s:
        rejected, _ = list_items(s, ItemFilter(kind="sample", status="rejected"), limit=1000)
    assert rejected and not keys & {f"sample:{r.id}" for r in rejected}


def test_eval_items_never_enter_training_and_no_session_straddles_the_split(chain):
    ds, items = _latest(chain["url"], "training")
    _, suite_items = _latest(chain["url"], "eval_suite")
    held = {i.item_key for i in suite_items} | {i.prompt_hash for i in suite_items}
    assert not {i.item_key for i in items} & held
    assert not {i.prompt_hash for i in items} & held
    train = {i.session_key for i in items if i.split == "train"}
    validation = {i.session_key for i in items if i.split == "validation"}
    assert not train & validation


def test_the_same_spec_over_the_same_data_gives_the_same_version_and_bytes(chain):
    ds, _ = _latest(chain["url"], "training")
    manifest = (Path(ds.path) / "manifest.json").read_bytes()
    again = _materialize(chain["home"], [eval_suite, training_dataset], SPEC)
    assert again.success
    ds2, _ = _latest(chain["url"], "training")
    assert (ds2.id, ds2.version_hash, ds2.checksum) == (ds.id, ds.version_hash, ds.checksum)
    assert (Path(ds.path) / "manifest.json").read_bytes() == manifest
    meta = again.asset_materializations_for_node("training_dataset")[-1].metadata
    assert meta["new_version"].value is False
    # another spec is another version, whose parent is the first
    other = _materialize(chain["home"], [eval_suite, training_dataset],
                         {**SPEC, "seed": 5})
    assert other.success
    ds3, _ = _latest(chain["url"], "training")
    assert ds3.version_hash != ds.version_hash and ds3.parent_version == ds.version_hash
    with session_scope(chain["url"]) as s:
        assert get_dataset(s, ds.version_hash[:8]).id == ds.id


def test_a_failing_check_blocks_everything_downstream(chain):
    res = _materialize(chain["home"], [eval_suite, training_dataset, downstream_of_dataset],
                       {**SPEC, "min_size": 100_000}, raise_on_error=False)
    assert not res.success
    checks = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert checks["check_min_size"] is False
    assert not res.asset_materializations_for_node("downstream_of_dataset")
    ds, _ = _latest(chain["url"], "training")
    assert ds.status == "failed_checks" and "check_min_size" in ds.stats["failed_checks"]


def test_an_eval_item_never_enters_a_later_version_even_asked_again(chain):
    """A new approved correction whose prompt is an evaluation item's prompt (asked again in
    another conversation, other case and spacing) stays out of every later training version, and
    the evaluation suite keeps its items."""
    from store.repo import create_item

    url = chain["url"]
    suite, suite_items = _latest(url, "eval_suite")
    eval_item = next(i for i in suite_items if i.split == "eval")
    with session_scope(url) as s:
        from store.models import ReviewItem

        original = s.get(ReviewItem, eval_item.review_item_id)
        messages = [{**m, "content": "  " + m["content"].upper() + " "}
                    for m in original.messages]
        item, _ = create_item(s, kind="sample", dedup_key="asked-again", tenant_id="other",
                              interaction_id="asked-again", session_id="another-session",
                              messages=messages, proposed_response="A brand new answer.",
                              source="human_agent", category=original.category)
        decide(s, item.id, decision="approve", expected_version=1, actor="rev")
        new_key = f"sample:{item.id}"
    res = _materialize(chain["home"], [eval_suite, training_dataset], {**SPEC, "seed": 9})
    assert res.success
    suite2, suite2_items = _latest(url, "eval_suite")
    assert {i.item_key for i in suite_items if i.split == "eval"} <= \
        {i.item_key for i in suite2_items if i.split == "eval"}
    with session_scope(url) as s:
        every_eval = {(i.item_key, i.prompt_hash) for d in list_datasets(s, kind="eval_suite")
                      for i in dataset_items(s, d.id) if i.split == "eval"}
        for d in list_datasets(s, kind="training"):
            items = dataset_items(s, d.id)
            assert new_key not in {i.item_key for i in items}
            assert not {i.item_key for i in items} & {k for k, _ in every_eval}
            assert not {i.prompt_hash for i in items} & {p for _, p in every_eval}
    meta = res.asset_materializations_for_node("training_dataset")[-1].metadata
    assert meta["dropped_by_stage"].value.get("held_out", 0) >= 1
