"""A byte-level BPE tokenizer trained on the logs, with a ChatML chat template.

:func:`train_chat_tokenizer` trains a ``tokenizers`` BPE model (byte-level, so any text encodes,
no unknown token) on the given texts, numbers split into single digits, and wraps it as a
``transformers.PreTrainedTokenizerFast`` whose special tokens are ``<|endoftext|>`` (padding),
``<|im_start|>`` and ``<|im_end|>`` (end of a turn; the end-of-sequence token). :data:`CHATML_TEMPLATE` renders::

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n

so the prompt rendered with ``add_generation_prompt=True`` is a prefix of the whole conversation
(what :func:`ml.training.chat.encode_chat` needs to mask the reply).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_chat_tokenizer(texts: Iterable[str], vocab_size: int = 4096,
                         min_frequency: int = 2, model_max_length: int = 1024) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` with the ChatML template
    and special tokens (see the module docstring). Deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # digits one by one (as Qwen2 and Llama tokenize them): a price or an order number has one
    # spelling in tokens, so a fine-tune that changes a price changes digits, and greedy
    # decoding cannot drift into a spelling the model never saw ("$109.000")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token=IM_END,
                                   pad_token=PAD, unk_token=None,
                                   additional_special_tokens=[IM_START],
                                   model_max_length=model_max_length)
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "right"
    return fast
