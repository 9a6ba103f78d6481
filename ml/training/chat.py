"""Chat examples as token ids for causal-LM training, and the device to train on.

:func:`encode_chat` renders a conversation with the tokenizer's chat template and labels only the
tokens of the final assistant reply (every other position is ``-100``, ignored by the loss): the
prompt is rendered with ``add_generation_prompt=True`` and must be a prefix of the whole rendered
conversation (true of ChatML, Llama-3 and Gemma templates; a template that rewrites earlier turns
when a reply is appended is refused with a clear error instead of silently mis-masking).

:func:`encode_text` labels every token (pretraining). :func:`collate` pads a batch (right padding
for training). :func:`pick_device` picks CUDA, then Apple MPS, then the CPU, and the dtype that
device trains in (bf16 on CUDA when supported, else fp16 there; fp32 elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
Message = Mapping[str, str]


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used to mask the assistant's tokens."""


def _ids(out: Any) -> list[int]:
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def check_conversation(messages: Sequence[Message], where: str = "example") -> None:
    if not messages:
        raise ValueError(f"{where}: empty conversation")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: message {i} has role {m.get('role')!r}; expected "
                             f"system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} has no text content")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's reply, got "
                         f"{messages[-1]['role']!r}")


def prompt_ids(tokenizer: Any, prompt: Sequence[Message]) -> list[int]:
    """The prompt rendered up to the start of the assistant's reply (generation prompt)."""
    return _ids(tokenizer.apply_chat_template([dict(m) for m in prompt], tokenize=True,
                                              add_generation_prompt=True))


def encode_chat(tokenizer: Any, messages: Sequence[Message], max_length: int,
                where: str = "example") -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` for one conversation whose last message
    is the assistant reply to learn. Longer than ``max_length``: the oldest prompt tokens are
    dropped first (the reply is kept); a reply longer than ``max_length`` alone is cut at its end.
    """
    check_conversation(messages, where)
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no "
                                f"chat template")
    prefix = prompt_ids(tokenizer, messages[:-1])
    full = _ids(tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=True))
    if full[:len(prefix)] != prefix:
        raise ChatTemplateError(
            f"{where}: the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} does not "
            f"render the prompt as a prefix of the conversation, so the reply's tokens cannot be "
            f"masked reliably")
    reply = full[len(prefix):]
    if not reply:
        raise ValueError(f"{where}: the assistant reply renders to no tokens")
    if len(reply) >= max_length:
        ids, labels = reply[:max_length], reply[:max_length]
    else:
        keep = max_length - len(reply)
        head = prefix[-keep:] if len(prefix) > keep else prefix
        ids = head + reply
        labels = [IGNORE_INDEX] * len(head) + reply
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def encode_text(tokenizer: Any, text: str, max_length: int) -> dict[str, list[int]]:
    """Every token labelled (pretraining); cut at ``max_length``."""
    ids = _ids(tokenizer(text, add_special_tokens=False))[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def collate(batch: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch into tensors (labels padded with ``-100``)."""
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for b in batch:
        pad = width - len(b["input_ids"])
        out["input_ids"].append(list(b["input_ids"]) + [pad_id] * pad)
        out["attention_mask"].append(list(b["attention_mask"]) + [0] * pad)
        out["labels"].append(list(b["labels"]) + [IGNORE_INDEX] * pad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


@dataclass(frozen=True)
class Device:
    name: str  # cuda | mps | cpu
    dtype: str  # float32 | bfloat16 | float16

    @property
    def mixed_precision(self) -> bool:
        return self.dtype != "float32"


def pick_device(prefer: str | None = None) -> Device:
    """CUDA (bf16 when supported, else fp16), then MPS (fp32), then the CPU (fp32). ``prefer``
    ("cpu", "cuda", "mps") forces one; asking for an absent device is an error."""
    import torch

    has = {"cuda": torch.cuda.is_available(),
           "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
           "cpu": True}
    if prefer:
        if prefer not in has:
            raise ValueError(f"device must be one of {sorted(has)}, got {prefer!r}")
        if not has[prefer]:
            raise ValueError(f"device {prefer!r} is not available on this machine")
        name = prefer
    else:
        name = "cuda" if has["cuda"] else "mps" if has["mps"] else "cpu"
    if name == "cuda":
        return Device("cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    return Device(name, "float32")
