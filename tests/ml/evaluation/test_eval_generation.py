"""LocalGenerator on real tiny models (greedy, left-padded batches, stop at <|im_end|>, reply-only
perplexity, a PEFT adapter on the base) and ProviderGenerator through the real OpenAI provider
against the stand-in server."""

from __future__ import annotations

import math

import pytest
import torch

from ml.evaluation.generation import LocalGenerator, ProviderGenerator
from ml.training.chat import encode_chat
from tests.llm.fake_servers import ok
from tests.ml.evaluation.conftest import TRAINED
from tests.ml.training.tiny import TINY_CONVERSATIONS


def prompts(conversations):
    return [c[:-1] for c in conversations]


@pytest.fixture(scope="module")
def trained(trained_model):
    return LocalGenerator(trained_model, device="cpu", max_new_tokens=24, batch_size=8)


def test_greedy_replies_stop_at_end_of_turn(trained):
    out = trained.generate(prompts(TRAINED))
    assert [g.text for g in out] == [c[-1]["content"] for c in TRAINED]
    for g, c in zip(out, TRAINED, strict=True):
        reply_ids = trained.tokenizer(c[-1]["content"], add_special_tokens=False)["input_ids"]
        assert g.stopped and g.new_tokens == len(reply_ids) + 1  # the reply and <|im_end|>
        assert g.latency_s > 0 and g.prompt_tokens > 10
        assert "<|im_end|>" not in g.text and "<|endoftext|>" not in g.text


def test_left_padded_batches_equal_one_by_one(trained):
    # prompts of different lengths in one batch (the longer one makes the others padded)
    batch = prompts(TRAINED) + [[{"role": "user", "content": "Hi"}],
                                [*TRAINED[1][:-1], {"role": "assistant", "content": "Sure."},
                                 {"role": "user", "content": "And the Nova headset?"}]]
    together = trained.generate(batch)
    trained.batch_size = 1
    try:
        alone = trained.generate(batch)
    finally:
        trained.batch_size = 8
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.new_tokens for g in together] == [g.new_tokens for g in alone]
    assert len({g.prompt_tokens for g in together}) >= 3  # really padded


def test_max_new_tokens_cuts_and_says_so(trained_model):
    short = LocalGenerator(trained_model, device="cpu", max_new_tokens=3)
    g = short.generate(prompts(TRAINED[:1]))[0]
    assert not g.stopped and g.new_tokens == 3
    assert TRAINED[0][-1]["content"].startswith(g.text) and g.text != TRAINED[0][-1]["content"]


def test_deterministic(trained):
    first = trained.generate(prompts(TINY_CONVERSATIONS))
    again = trained.generate(prompts(TINY_CONVERSATIONS))
    assert [(g.text, g.new_tokens) for g in first] == [(g.text, g.new_tokens) for g in again]


def _direct_ppl(model, tokenizer, conversations):
    nll, tokens = 0.0, 0
    for c in conversations:
        e = encode_chat(tokenizer, c, 256)
        labels = torch.tensor([e["labels"]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([e["input_ids"]]), labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nll += float(loss) * n
        tokens += n
    return math.exp(nll / tokens)


def test_perplexity_is_reply_only_and_token_weighted(base_model, trained):
    base = LocalGenerator(base_model, device="cpu", batch_size=3)
    one = base.perplexity(TINY_CONVERSATIONS[:1])
    assert one == pytest.approx(_direct_ppl(base.model, base.tokenizer, TINY_CONVERSATIONS[:1]),
                                rel=1e-5)
    # a batch (right-padded) equals the token-weighted figure computed one by one
    many = base.perplexity(TINY_CONVERSATIONS)
    assert many == pytest.approx(_direct_ppl(base.model, base.tokenizer, TINY_CONVERSATIONS),
                                 rel=1e-5)
    # a random model is near-uniform over its vocabulary; the trained one knows its replies
    assert 100 < many < 2 * len(base.tokenizer)
    assert trained.perplexity(TRAINED) < 1.5 < base.perplexity(TRAINED)
    with pytest.raises(ValueError, match="last message must be the assistant"):
        base.perplexity([TRAINED[0][:-1]])


def test_peft_adapter_on_the_base(base_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_model, local_files_only=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, init_lora_weights=False,
                                                  target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = _direct_ppl(peft_model.eval(), LocalGenerator(base_model).tokenizer, TRAINED)

    with_adapter = LocalGenerator(base_model, adapter_dir=tmp_path / "adapter", device="cpu")
    plain = LocalGenerator(base_model, device="cpu")
    assert with_adapter.name == "base+adapter"
    assert with_adapter.perplexity(TRAINED) == pytest.approx(expected, rel=1e-5)
    assert with_adapter.perplexity(TRAINED) != pytest.approx(plain.perplexity(TRAINED), rel=1e-3)
    assert len(with_adapter.generate(prompts(TRAINED[:2]))) == 2


def test_missing_dirs_and_bad_prompts_are_refused(base_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        LocalGenerator(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        LocalGenerator(base_model, adapter_dir=tmp_path)
    gen = LocalGenerator(base_model, device="cpu", max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1: the prompt ends with an assistant message"):
        gen.generate([TRAINED[0][:-1], TRAINED[0]])
    with pytest.raises(ValueError, match="non-empty list"):
        gen.generate([[]])
    assert gen.generate([]) == []


def test_provider_generator_through_the_openai_provider(openai_server, make_router):
    openai_server.push(ok("The Nova headset costs $129.", completion_tokens=7),
                       ok("Order ES-1234 shipped yesterday.", completion_tokens=6))
    gen = ProviderGenerator(make_router("teacher"), model="ft:gpt-test:shop")
    out = gen.generate(prompts([TRAINED[0], TRAINED[1]]))
    assert [g.text for g in out] == ["The Nova headset costs $129.",
                                     "Order ES-1234 shipped yesterday."]
    assert [g.new_tokens for g in out] == [7, 6] and all(g.latency_s > 0 for g in out)
    assert gen.name == "ft:gpt-test:shop" and gen.perplexity(TRAINED) is None
    body = openai_server.requests[0].body
    assert body["temperature"] == 0 and body["messages"] == [dict(m) for m in TRAINED[0][:-1]]
    with pytest.raises(ValueError, match="provider or router"):
        ProviderGenerator(None)
