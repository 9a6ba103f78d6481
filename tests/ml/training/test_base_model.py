"""ml.training.base_model: the corpus from rows and from a real DuckDB warehouse, and real (tiny)
pretraining runs: loss goes down, the folder loads offline, same seed same weights, atomic
writes that refuse to overwrite."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ml.demo.generate import generate_records
from ml.training.base_model import (
    INFO_FILE,
    BaseModelSpec,
    CorpusError,
    build_base_model,
    conversations_from_rows,
    corpus_from_warehouse,
    drop_redundant,
    load_base_model,
    read_base_info,
)
from ml.training.tokenizer import IM_END
from ml.warehouse import connect, ensure_table

TINY = BaseModelSpec(vocab_size=400, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=128, max_seq_len=128, epochs=3, batch_size=8,
                     learning_rate=5e-3, warmup_ratio=0.1, seed=3, log_every=5)


def demo_rows(n: int, seed: int = 5) -> list[dict]:
    rows = []
    for line in generate_records(n, seed=seed):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the demo's deliberately malformed lines
            continue
    return rows


@pytest.fixture(scope="module")
def conversations():
    convs, _ = conversations_from_rows(demo_rows(220))
    return convs


@pytest.fixture(scope="module")
def built(conversations, tmp_path_factory):
    calls: list[dict] = []
    out = tmp_path_factory.mktemp("base") / "base"
    result = build_base_model(conversations, out, TINY, progress=calls.append, device="cpu",
                              corpus_stats={"source": "demo"})
    return result, calls


def test_conversations_from_rows_counts_bad_rows_and_never_raises():
    system = {"role": "system", "content": "Be nice."}
    good = {"messages": json.dumps([system, {"role": "user", "content": "Hi?"}]),
            "response": "Hello!"}
    rows = [
        good,
        {"messages": [system, {"role": "user", "content": "Price?"}], "response": "$5."},
        {"messages": json.dumps([{"role": "user", "content": "Hi?"}]), "response": "   "},
        {"messages": json.dumps([{"role": "user", "content": "Hi?"}]), "response": None},
        {"messages": "[{not json", "response": "x"},
        {"messages": json.dumps({"role": "user"}), "response": "x"},
        {"messages": None, "response": "x"},
        {"messages": [{"role": "user", "content": "a <|im_end|> b"}], "response": "x"},
        "not a row",
        {"messages": [{"role": "user", "content": "Weather?"},
                      {"role": "tool", "content": "{\"temp\": 20}"},
                      {"role": "human", "content": "And tomorrow?"},
                      {"role": "robot", "content": "beep"}, {"role": "user", "content": ""}, 7],
         "response": "Sunny."},
    ]
    convs, skipped = conversations_from_rows(rows)
    assert len(convs) == 3
    assert convs[0] == [system, {"role": "user", "content": "Hi?"},
                        {"role": "assistant", "content": "Hello!"}]
    assert convs[2] == [{"role": "user", "content": "Weather?"},
                        {"role": "user", "content": "And tomorrow?"},
                        {"role": "assistant", "content": "Sunny."}]
    assert skipped == {"empty_response": 1, "missing_response": 1, "unparsable_messages": 1,
                       "messages_not_a_list": 1, "missing_messages": 1,
                       "special_token_in_text": 1, "row_not_a_mapping": 1,
                       "dropped_message:role:tool": 1, "dropped_message:role:robot": 1,
                       "dropped_message:empty_content": 1, "dropped_message:not_an_object": 1}


def test_drop_redundant_keeps_whole_sessions_once():
    a = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    ab = a + [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    c = [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]
    kept, dropped = drop_redundant([a, c, ab, c])
    assert kept == [c, ab] and dropped == {"duplicates": 1, "prefixes": 1}


def test_spec_refuses_impossible_shapes_and_round_trips():
    with pytest.raises(ValueError, match="num_heads"):
        BaseModelSpec(hidden_size=64, num_heads=3)
    with pytest.raises(ValueError, match="epochs"):
        BaseModelSpec(epochs=0)
    with pytest.raises(ValueError, match="unknown fields"):
        BaseModelSpec.from_dict({"hidden": 3})
    assert BaseModelSpec.from_dict(TINY.to_dict()) == TINY


def test_pretraining_lowers_the_loss_and_reports_progress(built):
    result, calls = built
    m = result.metrics
    assert result.loss_history[0][1] == m["first_loss"]
    assert m["final_loss"] < m["first_loss"] - 2.0, result.loss_history[::10]
    assert m["val_loss"] < m["val_loss_initial"] - 2.0
    assert m["tokens_seen"] > 0 and m["tokens_per_s"] > 0 and m["device"] == "cpu"
    steps = [c["step"] for c in calls]
    assert steps == sorted(steps) and steps[-1] == m["steps"] == calls[-1]["total_steps"]
    assert steps[0] == TINY.log_every
    assert set(calls[0]) >= {"step", "total_steps", "loss", "tokens", "tokens_per_s"}
    assert calls[-1]["tokens"] == m["tokens_seen"]


def test_saved_folder_loads_offline_with_chat_template(built, conversations):
    result, _ = built
    tok = AutoTokenizer.from_pretrained(result.path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(result.path, local_files_only=True)
    assert tok.chat_template and tok.eos_token == IM_END
    text = tok.apply_chat_template(conversations[0], tokenize=False)
    assert text.startswith("<|im_start|>")
    assert model.config.tie_word_embeddings and model.config.hidden_size == TINY.hidden_size
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert sum(p.numel() for p in model.parameters()) == result.n_params
    info = read_base_info(result.path)
    assert info["spec"] == TINY.to_dict() and info["metrics"] == result.metrics
    assert info["corpus"]["source"] == "demo"
    assert info["corpus"]["val_conversations"] > 0
    assert info["corpus"]["dropped_redundant"]["prefixes"] > 0  # sessions repeat their context
    assert [tuple(p) for p in info["loss_history"]] == result.loss_history
    loaded, tok2 = load_base_model(result.path)
    prompt = tok2.apply_chat_template(conversations[0][:-1], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
    out = loaded.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert not [p.name for p in result.path.parent.iterdir() if p.name.startswith(".")]


def test_same_seed_same_data_same_weights_and_overwrite(built, conversations, tmp_path):
    first, _ = built
    again = build_base_model(conversations, tmp_path / "again", TINY, device="cpu")
    a, _ = load_base_model(first.path)
    b, _ = load_base_model(again.path)
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(a.state_dict()[name], b.state_dict()[name])
    assert again.loss_history == first.loss_history

    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_base_model(conversations, again.path, TINY, device="cpu")
    short = BaseModelSpec(**{**TINY.to_dict(), "epochs": 0.1, "seed": 4})
    replaced = build_base_model(conversations[:60], again.path, short, device="cpu",
                                overwrite=True)
    assert read_base_info(replaced.path)["spec"]["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp or old folders


def test_refuses_a_non_empty_folder_before_training(conversations, tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds files"):
        build_base_model(conversations, tmp_path / "base", TINY, device="cpu")
    assert (tmp_path / "base" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="conversation 0, message 0"):
        build_base_model([[{"role": "tool", "content": "x"}]], tmp_path / "other", TINY)
    with pytest.raises(FileNotFoundError, match=INFO_FILE.replace(".", r"\.")):
        read_base_info(tmp_path / "base")


def _warehouse(path, rows):
    con = connect(path)
    try:
        ensure_table(con, "interactions")
        for tenant, iid, messages, response in rows:
            con.execute("INSERT INTO interactions (tenant_id, interaction_id, messages, response) "
                        "VALUES (?, ?, ?, ?)", [tenant, iid, messages, response])
    finally:
        con.close()


def test_corpus_from_a_real_warehouse(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    rows = []
    for k in range(30):
        msgs = json.dumps([{"role": "user", "content": f"question {k}"}])
        rows.append((f"t{k % 3}", f"i{k:02d}", msgs, f"answer {k}"))
    rows.append(("t0", "i99", "{broken", "answer"))
    rows.append(("t1", "i98", json.dumps([{"role": "user", "content": "q"}]), ""))
    _warehouse(path, rows)

    convs, stats = corpus_from_warehouse(path, max_conversations=100, seed=0)
    assert stats == {"warehouse": str(path), "rows_in_table": 32, "rows_read": 32,
                     "sampled": False, "conversations": 30,
                     "skipped": {"unparsable_messages": 1, "empty_response": 1}}
    # ordered by tenant_id, interaction_id
    assert [c[-1]["content"] for c in convs[:3]] == ["answer 0", "answer 3", "answer 6"]

    sample, sstats = corpus_from_warehouse(path, max_conversations=10, seed=1)
    assert sstats["sampled"] and sstats["rows_read"] == 10
    assert sample == corpus_from_warehouse(path, max_conversations=10, seed=1)[0]
    assert sample != corpus_from_warehouse(path, max_conversations=10, seed=2)[0]
    assert all(c in convs or c[-1]["content"] == "answer" for c in sample)


def test_missing_warehouse_table_or_rows_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere.duckdb"
    with pytest.raises(CorpusError, match=f"{missing}.*does not exist"):
        corpus_from_warehouse(missing)
    other = tmp_path / "other.duckdb"
    con = connect(other)
    con.execute("CREATE TABLE something (x INTEGER)")
    con.close()
    with pytest.raises(CorpusError, match=f"{other} has no interactions table"):
        corpus_from_warehouse(other)
    empty = tmp_path / "empty.duckdb"
    _warehouse(empty, [])
    with pytest.raises(CorpusError, match="is empty"):
        corpus_from_warehouse(empty)
    bad = tmp_path / "bad.duckdb"
    _warehouse(bad, [("t", "i", "[]", "")])
    with pytest.raises(CorpusError, match="no usable conversation.*empty_response"):
        corpus_from_warehouse(bad)
