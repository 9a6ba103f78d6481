"""The local transformers provider on a tiny, randomly initialised Qwen2-style model whose
tokenizer is trained here on a few sentences: nothing is downloaded."""

from __future__ import annotations

import pytest

from ml.llm import ConfigError, LLMRequest, ProviderError, Router, build_router
from ml.llm.transformers_provider import TransformersProvider

CORPUS = [
    "hello how can I help you today",
    "your order ships in two days",
    "please reset your password from the settings page",
    '{"error": true, "category": "tone"}',
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tiny():
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config), tokenizer


def test_greedy_generation_is_deterministic_and_counts_tokens(tiny):
    model, tokenizer = tiny
    provider = TransformersProvider(model=model, tokenizer=tokenizer, model_name="tiny-qwen")
    first = provider.complete(LLMRequest(MSGS, max_tokens=6))
    second = provider.complete(LLMRequest(MSGS, max_tokens=6, temperature=1.0))  # greedy regardless
    assert first.text == second.text
    prompt = tokenizer.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert first.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert 0 < first.usage.completion_tokens <= 6
    assert first.provider == "transformers" and first.model == "tiny-qwen"
    assert first.finish_reason in ("stop", "length")


def test_plain_transcript_without_chat_template(tiny):
    model, tokenizer = tiny
    provider = TransformersProvider(model=model, tokenizer=tokenizer)
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        assert provider._prompt(LLMRequest(MSGS)) == "system: be brief\nuser: hello\nassistant:"
        assert provider.complete(LLMRequest(MSGS, max_tokens=3)).usage.completion_tokens <= 3
    finally:
        tokenizer.chat_template = template


def test_loads_from_a_local_directory_and_builds_from_config(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    in_memory = TransformersProvider(model=model, tokenizer=tokenizer).complete(LLMRequest(MSGS, max_tokens=5))
    router = build_router("teacher", {"kind": "transformers", "model_path": str(tmp_path / "tiny")})
    response = router.complete(LLMRequest(MSGS, max_tokens=5))
    assert response.text == in_memory.text
    assert response.model == "tiny" and response.cost_usd == 0.0  # local inference is free by default


def test_garbage_json_from_a_local_model_is_repaired_once_then_reported(tiny):
    model, tokenizer = tiny
    provider = TransformersProvider(model=model, tokenizer=tokenizer)
    calls = []
    original = provider.complete

    def spy(request):
        calls.append(request)
        return original(request)

    provider.complete = spy
    router = Router("auditor", [provider])
    schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "boolean"}}}
    with pytest.raises(ProviderError, match="invalid structured output after one repair retry"):
        router.complete(LLMRequest(MSGS, max_tokens=4, response_schema=schema))
    assert len(calls) == 2
    assert "JSON schema" in provider._prompt(calls[0])  # no constrained decoding: the schema is asked for
    assert calls[1].messages[-2]["role"] == "assistant"


def test_bad_arguments_are_rejected(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ConfigError, match="either model_path or model"):
        TransformersProvider(tmp_path, model=model, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        TransformersProvider(model=model)
    with pytest.raises(ConfigError, match="not a directory"):
        TransformersProvider(tmp_path / "missing")


def test_generation_failure_is_a_provider_failure_and_fails_over(tiny):
    """A tokenizer that does not match its model (ids beyond the embedding table) makes the real
    ``generate`` raise inside torch: a provider failure naming it, and the router fails over."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ml.llm import PermanentProviderError

    model, tokenizer = tiny
    torch.manual_seed(0)
    small = Qwen2ForCausalLM(Qwen2Config(vocab_size=8, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    mismatched = TransformersProvider(model=small, tokenizer=tokenizer, name="mismatched")
    with pytest.raises(PermanentProviderError, match=r"mismatched: generation failed: IndexError") as info:
        mismatched.complete(LLMRequest(MSGS, max_tokens=3))
    assert info.value.__cause__ is None and info.value.__suppress_context__

    good = TransformersProvider(model=model, tokenizer=tokenizer, name="good")
    router = Router("teacher", [mismatched, good])
    response = router.complete(LLMRequest(MSGS, max_tokens=3))
    assert response.provider == "good"
    assert router.providers[0].breaker.failures == 1 and router.stats.provider_failures == 1


def test_a_local_model_runs_one_call_at_a_time(tiny):
    from ml.llm import ResilientProvider

    model, tokenizer = tiny
    provider = TransformersProvider(model=model, tokenizer=tokenizer, model_name="tiny-qwen")
    slot = ResilientProvider(provider)
    assert slot.concurrency == 1
    with pytest.raises(ConfigError, match="concurrency 2 is above this provider's maximum of 1"):
        ResilientProvider(provider, concurrency=2)
    router = Router("judge", [slot])
    requests = [LLMRequest([{"role": "user", "content": f"hello {i}"}], max_tokens=3) for i in range(4)]
    results = router.complete_many(requests)
    assert [r.text for r in results] == [router.complete(r).text for r in requests]
    assert slot.peak_in_flight == 1 and router.stats.successes == 8
