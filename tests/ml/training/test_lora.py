"""ml.training.lora: real LoRA (+ DPO) training of a tiny random Qwen2 chat model on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ml.training.chat import IGNORE_INDEX
from ml.training.lora import (
    LoraSpec,
    encode_conversations,
    label_token_count,
    prepare_sft,
    read_chat_jsonl,
    read_dpo_jsonl,
    train_lora,
)
from ml.training.tokenizer import IM_END
from tests.ml.training.tiny import FACTS, SYSTEM, TINY_CONVERSATIONS, conversation, make_tiny_model

# a random 2-layer base learns slowly: a high rate and small batches move it in a few steps
FAST = dict(batch_size=4, learning_rate=3e-2, epochs=4, early_stopping_patience=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    """One SFT run validated on the train facts, DPO asked for but given no pairs."""
    out = tmp_path_factory.mktemp("runs") / "sft"
    seen: list[dict] = []
    result = train_lora(base, TINY_CONVERSATIONS, TINY_CONVERSATIONS, out,
                        LoraSpec(**FAST, dpo=True), progress=seen.append, device="cpu")
    return result, seen


def _pairs(facts):
    return [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
             "chosen": [{"role": "assistant", "content": a}],
             "rejected": [{"role": "assistant", "content": "I don't know, ask someone else."}]}
            for q, a in facts]


def _lora_b(adapter_dir: Path) -> list[torch.Tensor]:
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    return [t for k, t in weights.items() if "lora_B" in k]


def test_training_moves_the_adapter_and_lowers_validation_loss(run):
    result, seen = run
    m = result.metrics
    b = _lora_b(result.adapter_dir)
    assert b and any(t.abs().sum() > 0 for t in b)  # peft initialises B to zero
    assert m["val_loss_after"] < m["val_loss_before"] - 0.05
    assert m["best_val_loss"] == pytest.approx(min(h["val_loss"] for h in result.history
                                                   if "val_loss" in h and h["step"] > 0))
    assert m["steps"] == 8 and m["epochs_run"] == 4 and not m["stopped_early"]
    assert m["train_examples"] == m["validation_examples"] == 8
    assert 0 < m["train_label_tokens"] < m["tokens_trained"] / m["epochs_run"]
    assert 0 < m["trainable_params"] < m["total_params"] and m["device"] == "cpu"
    # history: val loss before training at step 0, a train loss per step, a val loss per epoch
    assert result.history[0] == {"step": 0, "epoch": 0.0, "val_loss": m["val_loss_before"]}
    assert [h["step"] for h in result.history if "train_loss" in h] == list(range(1, 9))
    assert [h["epoch"] for h in result.history if "val_loss" in h][1:] == [1, 2, 3, 4]
    # progress got every log, with the run's size and a speed
    assert {p["step"] for p in seen if "train_loss" in p} == set(range(1, 9))
    assert all(p["total_steps"] == 8 and p["stage"] == "sft" for p in seen)
    assert seen[-1]["tokens_per_s"] > 0
    saved = json.loads((result.out_dir / "training.json").read_text())
    assert saved["metrics"] == m and saved["history"] == result.history
    assert LoraSpec.from_dict(saved["spec"]) == LoraSpec(**FAST, dpo=True)
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["adapter", "merged",
                                                               "training.json"]


def test_dpo_without_pairs_is_skipped_with_a_reason(run):
    result, _ = run
    assert result.metrics["dpo_ran"] is False and result.dpo is None
    assert "no DPO training pairs" in result.metrics["dpo_skipped_reason"]
    assert not (result.out_dir / "dpo").exists()


def test_merged_loads_alone_and_matches_base_plus_adapter(run, base):
    from peft import PeftModel

    result, _ = run
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(result.merged_dir, local_files_only=True)
    ids = tok.apply_chat_template(TINY_CONVERSATIONS[0][:2], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = merged.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, local_files_only=True), result.adapter_dir)
    plain = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    with torch.no_grad():
        got, want, before = (m.eval()(input_ids=ids).logits for m in (merged, with_adapter, plain))
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, before, atol=1e-3)  # the adapter changed the model


def test_refuses_to_overwrite_unless_asked(run, base):
    result, _ = run
    before = (result.out_dir / "training.json").read_text()
    with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
        train_lora(base, TINY_CONVERSATIONS, [], result.out_dir, LoraSpec(epochs=1))
    assert (result.out_dir / "training.json").read_text() == before
    assert [p.name for p in result.out_dir.parent.iterdir()] == ["sft"]  # no temp left behind


def test_labels_are_the_reply_only_whatever_the_prompt(base):
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    longer = [[{"role": "system", "content": SYSTEM + " Be brief, friendly and exact."},
               {"role": "user", "content": "Hello there! " + c[1]["content"]}, c[2]]
              for c in TINY_CONVERSATIONS]
    a = encode_conversations(tok, TINY_CONVERSATIONS, 384)
    b = encode_conversations(tok, longer, 384)
    assert label_token_count(a) == label_token_count(b) > 0
    assert sum(len(e["input_ids"]) for e in b) > sum(len(e["input_ids"]) for e in a)


def test_the_trainers_batches_mask_every_non_reply_position(base, tmp_path):
    setup = prepare_sft(base, TINY_CONVERSATIONS, [], tmp_path,
                        LoraSpec(batch_size=3, epochs=1, early_stopping_patience=0,
                                 gradient_checkpointing=True), device="cpu")
    tok, batches = setup.tokenizer, []
    collator = setup.trainer.data_collator

    def recording(features):
        batch = collator(features)
        batches.append(batch)
        return batch

    setup.trainer.data_collator = recording
    setup.trainer.train()
    assert len(batches) == 3  # 8 examples in batches of 3
    replies = {c[-1]["content"] + IM_END + "\n" for c in TINY_CONVERSATIONS}
    rows = 0
    for batch in batches:
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"],
                                     batch["labels"], strict=True):
            rows += 1
            labelled = labels != IGNORE_INDEX
            assert torch.equal(labels[labelled], ids[labelled])
            assert not labelled[mask == 0].any()  # padding is never labelled
            first = int(labelled.nonzero()[0])
            assert labelled[first:int(mask.sum())].all()  # one span, to the end of the row
            assert tok.decode(ids[labelled]) in replies
            prompt = tok.decode(ids[:first])
            assert prompt.endswith("<|im_start|>assistant\n") and SYSTEM in prompt
    assert rows == 8
    # trained through activation checkpointing (inputs made to require grads for peft)
    assert setup.trainer.args.activation_checkpointing
    assert any(p.abs().sum() > 0 for n, p in setup.model.named_parameters() if "lora_B" in n)


def test_early_stopping_stops_and_keeps_the_best(base, tmp_path):
    # a huge threshold makes every evaluation after the first "no improvement"
    spec = LoraSpec(batch_size=8, learning_rate=3e-2, epochs=6, early_stopping_patience=1,
                    early_stopping_threshold=100.0)
    result = train_lora(base, TINY_CONVERSATIONS, TINY_CONVERSATIONS[:4], tmp_path / "es", spec)
    m = result.metrics
    assert m["stopped_early"] and m["epochs_run"] == 2 < spec.epochs and m["steps"] == 2
    assert m["val_loss_after"] == pytest.approx(m["best_val_loss"], abs=1e-5)
    assert not (result.out_dir / "checkpoints").exists()


def test_dpo_after_sft_raises_the_reward_margin(base, tmp_path):
    pairs = _pairs(FACTS)
    spec = LoraSpec(batch_size=4, learning_rate=3e-2, epochs=1, dpo=True, dpo_epochs=3,
                    dpo_learning_rate=5e-3)
    result = train_lora(base, TINY_CONVERSATIONS, [], tmp_path / "dpo", spec,
                        dpo_train=pairs[:6], dpo_validation=pairs[6:])
    m, d = result.metrics, result.dpo
    # no SFT validation: no val figures, no early stopping
    assert m["val_loss_before"] is m["val_loss_after"] is m["best_val_loss"] is None
    assert m["dpo_ran"] and m["dpo_skipped_reason"] is None and d is not None
    # at the start the policy is its reference: zero margin; held-out pairs end up preferred
    assert d.metrics["reward_margin_before"] == pytest.approx(0.0, abs=1e-6)
    assert d.metrics["reward_margin_after"] > 0.1
    assert d.metrics["reward_accuracy_after"] > d.metrics["reward_accuracy_before"]
    assert d.metrics["val_loss_after"] < d.metrics["val_loss_before"]
    assert d.metrics["reward_measured_on"] == "validation" and d.metrics["steps"] == 6
    assert any(t.abs().sum() > 0 for t in _lora_b(d.adapter_dir))
    assert any("reward_margin" in h for h in d.history)
    assert m["dpo_reward_margin_after"] == d.metrics["reward_margin_after"]
    saved = json.loads((result.out_dir / "training.json").read_text())
    assert saved["dpo"]["metrics"] == d.metrics
    AutoModelForCausalLM.from_pretrained(result.merged_dir, local_files_only=True)


def test_empty_train_split_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match="train split is empty"):
        train_lora(base, [], TINY_CONVERSATIONS, tmp_path / "x", LoraSpec())
    assert list(tmp_path.iterdir()) == []


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
    good = json.dumps({"messages": conversation("Hi?", "Hello.")})
    path = tmp_path / "train.jsonl"
    path.write_text(good + "\n\n" + good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:4: not valid JSON"):
        read_chat_jsonl(path)
    path.write_text(good + "\n" + json.dumps({"messages": conversation("Hi?", "x")[:2]}) + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: the last message must be the assistant"):
        read_chat_jsonl(path)
    path.write_text(good + "\n")
    assert read_chat_jsonl(path) == [conversation("Hi?", "Hello.")]
    dpo = tmp_path / "dpo.jsonl"
    pair = _pairs(FACTS[:1])[0]
    bad = dict(pair, chosen=[{"role": "user", "content": "no"}])
    dpo.write_text(json.dumps(pair) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=f"{dpo}:2: 'chosen' must be exactly one assistant"):
        read_dpo_jsonl(dpo)
    dpo.write_text(json.dumps(pair) + "\n")
    assert read_dpo_jsonl(dpo) == [pair]


def test_spec_validation_is_specific():
    with pytest.raises(ValueError, match="LoraSpec.rank must be an integer >= 1"):
        LoraSpec(rank=0)
    with pytest.raises(ValueError, match="target_modules: a string must be 'all-linear'"):
        LoraSpec(target_modules="q_proj")
    with pytest.raises(ValueError, match="LoraSpec.eval_every"):
        LoraSpec(eval_every=0)
    with pytest.raises(ValueError, match="unknown field"):
        LoraSpec.from_dict({"rnak": 4})
    spec = LoraSpec(target_modules=["q_proj", "v_proj"])  # a list is kept as a tuple
    assert spec.target_modules == ("q_proj", "v_proj") and hash(spec)
    assert LoraSpec.from_dict(spec.to_dict()) == spec
    assert LoraSpec(target_modules="all-linear").to_dict()["target_modules"] == "all-linear"
