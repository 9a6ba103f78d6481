"""ml.training.chat and ml.training.tokenizer: ChatML rendering, reply-only labels, truncation."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from ml.training.chat import IGNORE_INDEX, ChatTemplateError, collate, encode_chat, encode_text
from ml.training.tokenizer import IM_END, train_chat_tokenizer
from tests.ml.training.tiny import TINY_CONVERSATIONS, make_tiny_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_saved_tokenizer_keeps_template_and_specials(tokenizer):
    assert tokenizer.eos_token == IM_END
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(TINY_CONVERSATIONS[0], tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n")
    # byte-level: text never seen in training round-trips (no unknown token)
    odd = "Zoë paid 12,50 € — ok? 🙂"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd


def test_labels_cover_the_reply_only(tokenizer):
    conv = TINY_CONVERSATIONS[0]
    enc = encode_chat(tokenizer, conv, max_length=512)
    labelled = [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True)
                if lab != IGNORE_INDEX]
    text = tokenizer.decode(labelled)
    assert text.startswith(conv[-1]["content"])  # the reply, then its end-of-turn tokens
    assert "support assistant" not in text and conv[1]["content"] not in text
    assert enc["labels"][0] == IGNORE_INDEX
    assert IM_END in text


def test_truncation_keeps_the_reply(tokenizer):
    conv = [{"role": "user", "content": "word " * 400}, TINY_CONVERSATIONS[1][-1]]
    enc = encode_chat(tokenizer, conv, max_length=64)
    assert len(enc["input_ids"]) == 64
    labelled = [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True)
                if lab != IGNORE_INDEX]
    assert tokenizer.decode(labelled).startswith(conv[-1]["content"])


def test_bad_conversations_are_refused(tokenizer):
    with pytest.raises(ValueError, match="last message must be the assistant"):
        encode_chat(tokenizer, TINY_CONVERSATIONS[0][:2], max_length=64)
    with pytest.raises(ValueError, match="role 'robot'"):
        encode_chat(tokenizer, [{"role": "robot", "content": "x"},
                                {"role": "assistant", "content": "y"}], max_length=64)
    plain = train_chat_tokenizer(["a b c"] * 3, vocab_size=300, min_frequency=1)
    plain.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        encode_chat(plain, TINY_CONVERSATIONS[0], max_length=64)


def test_template_that_rewrites_the_prompt_is_refused(tokenizer):
    tok = train_chat_tokenizer(["a b c"] * 3, vocab_size=300, min_frequency=1)
    # renders a different header once the reply is there: the prompt is no longer a prefix
    tok.chat_template = ("{% if add_generation_prompt %}P:{% else %}Q:{% endif %}"
                         "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="prefix"):
        encode_chat(tok, TINY_CONVERSATIONS[0], max_length=64)


def test_collate_pads_right_and_ignores_padding(tokenizer):
    a = encode_chat(tokenizer, TINY_CONVERSATIONS[0], max_length=512)
    b = encode_text(tokenizer, "short", max_length=512)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    n = len(a["input_ids"])
    assert batch["input_ids"].shape == (2, n)
    assert batch["attention_mask"][1].sum().item() == len(b["input_ids"])
    assert batch["labels"][1, len(b["input_ids"]):].eq(IGNORE_INDEX).all()
