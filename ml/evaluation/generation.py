"""Replies to evaluation prompts from a local model or through an ``ml.llm`` provider.

:class:`LocalGenerator` loads a ``save_pretrained`` model directory (a merged model, or a base
model plus a PEFT adapter directory) with ``local_files_only=True`` and generates greedily
(deterministic), in batches with LEFT padding, stopping at the tokenizer's end-of-turn token
(``<|im_end|>`` for ChatML) or after ``max_new_tokens``; special tokens are skipped in the text.
:meth:`LocalGenerator.perplexity` is ``exp`` of the mean token negative log-likelihood over the
reference reply tokens only (the labels of :func:`ml.training.chat.encode_chat`).

:class:`ProviderGenerator` sends each prompt through an ``ml.llm`` provider or router (models
fine-tuned at a provider); it has no perplexity (``None``).

Latency: a local batch is timed as a whole and each reply in it gets ``batch wall time / batch
size`` (so latencies depend on ``batch_size``; compare models at the same batch size). A provider
reply's latency is the wall time of its own call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ml.training.chat import IGNORE_INDEX, collate, encode_chat, pick_device, prompt_ids

Message = Mapping[str, str]
Prompt = Sequence[Message]
END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class Generation:
    """One reply. ``new_tokens`` counts the generated tokens, the stop token included (padding
    after it is not); ``stopped`` is False when the reply hit ``max_new_tokens`` (cut off);
    ``latency_s`` is documented in the module docstring."""

    text: str
    latency_s: float
    new_tokens: int
    stopped: bool = True
    prompt_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Generator(Protocol):
    """What the evaluation needs of a model: a label, replies, and perplexity when it can."""

    name: str

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation]: ...

    def perplexity(self, conversations: Sequence[Prompt]) -> float | None: ...


def check_prompt(prompt: Prompt, where: str) -> list[dict[str, str]]:
    """A prompt as plain dicts: non-empty, valid roles and text, not ending with a reply."""
    if not isinstance(prompt, Sequence) or isinstance(prompt, str) or not prompt:
        raise ValueError(f"{where}: a prompt must be a non-empty list of messages")
    out = []
    for i, m in enumerate(prompt):
        if not isinstance(m, Mapping) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: message {i} must have role system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} has no text content")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] == "assistant":
        raise ValueError(f"{where}: the prompt ends with an assistant message; the reply to "
                         f"generate must not be part of it")
    return out


class LocalGenerator:
    """Greedy batched generation and reply perplexity with a local transformers model.

    ``model_dir`` holds the model and its tokenizer; with ``adapter_dir`` it is the base model
    and the PEFT adapter in ``adapter_dir`` is applied on top (not merged). Nothing is
    downloaded. ``device``: "cpu", "cuda" or "mps" (default: :func:`pick_device`). A prompt
    longer than ``max_prompt_tokens`` (default: the model's ``max_position_embeddings`` minus
    ``max_new_tokens``) keeps its last tokens (``Generation.prompt_tokens`` tells the length
    used).
    """

    def __init__(self, model_dir: str | Path, *, adapter_dir: str | Path | None = None,
                 device: str | None = None, max_new_tokens: int = 96, batch_size: int = 8,
                 max_prompt_tokens: int | None = None, name: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no model at {model_dir} (config.json missing)")
        self.device = pick_device(device)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {model_dir} has no chat template")
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, dtype=getattr(torch, self.device.dtype))
        if adapter_dir is not None:
            from peft import PeftModel

            adapter_dir = Path(adapter_dir)
            if not (adapter_dir / "adapter_config.json").is_file():
                raise FileNotFoundError(f"no PEFT adapter at {adapter_dir} "
                                        f"(adapter_config.json missing)")
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        self.model = model.to(self.device.name).eval()
        self.name = name or (f"{model_dir.name}+{adapter_dir.name}" if adapter_dir else model_dir.name)
        self.stop_ids = self._stop_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if max_prompt_tokens is None and limit:
            max_prompt_tokens = int(limit) - max_new_tokens
        if max_prompt_tokens is not None and max_prompt_tokens <= 0:
            raise ValueError(f"no room for a prompt: max_prompt_tokens={max_prompt_tokens} "
                             f"(model limit {limit}, max_new_tokens {max_new_tokens})")
        self.max_prompt_tokens = max_prompt_tokens

    def _stop_ids(self) -> list[int]:
        ids = []
        unk = self.tokenizer.unk_token_id
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if isinstance(end, int) and end != unk:
            ids.append(end)
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos not in ids:
            ids.append(eos)
        if not ids:
            raise ValueError(f"the tokenizer of {self.name} has neither {END_OF_TURN} nor an "
                             f"eos token: generation could not stop")
        return ids

    def generate(self, prompts: Sequence[Prompt], *,
                 max_new_tokens: int | None = None) -> list[Generation]:
        """One greedy reply per prompt, in order. ``max_new_tokens`` (default: the generator's)
        may only lower the limit: the prompt room was set aside for the generator's own."""
        import torch

        limit = self._new_tokens(max_new_tokens)
        encoded = []
        for i, prompt in enumerate(prompts):
            ids = prompt_ids(self.tokenizer, check_prompt(prompt, f"prompt {i}"))
            if self.max_prompt_tokens is not None:
                ids = ids[-self.max_prompt_tokens:]
            encoded.append(ids)
        out: list[Generation] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in batch],
                                     device=self.device.name)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch],
                                device=self.device.name)
            started = time.perf_counter()
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=input_ids, attention_mask=mask, do_sample=False,
                    max_new_tokens=limit, eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id, temperature=None, top_p=None, top_k=None)
            latency = (time.perf_counter() - started) / len(batch)
            for ids, row in zip(batch, generated[:, width:].tolist(), strict=True):
                stop = next((j for j, t in enumerate(row) if t in self.stop_ids), None)
                reply = row if stop is None else row[:stop]
                text = self.tokenizer.decode(reply, skip_special_tokens=True).strip()
                out.append(Generation(text=text, latency_s=latency,
                                      new_tokens=len(row) if stop is None else stop + 1,
                                      stopped=stop is not None, prompt_tokens=len(ids)))
        return out

    def _new_tokens(self, max_new_tokens: int | None) -> int:
        if max_new_tokens is None:
            return self.max_new_tokens
        if not 0 < max_new_tokens <= self.max_new_tokens:
            raise ValueError(f"{self.name}: max_new_tokens must be in 1..{self.max_new_tokens}, "
                             f"got {max_new_tokens}")
        return max_new_tokens

    def perplexity(self, conversations: Sequence[Prompt], max_length: int | None = None) -> float:
        """``exp(total NLL / total tokens)`` over the reference reply tokens of every
        conversation (token-weighted: a long reply counts more than a short one). Each
        conversation ends with the reference reply; ``max_length`` (default the model's
        position limit) cuts the oldest prompt tokens first."""
        import torch

        if not conversations:
            raise ValueError("perplexity: no conversations")
        limit = max_length or getattr(self.model.config, "max_position_embeddings", None) or 2048
        rows = [encode_chat(self.tokenizer, c, int(limit), where=f"conversation {i}")
                for i, c in enumerate(conversations)]
        total_nll, total_tokens = 0.0, 0
        for start in range(0, len(rows), self.batch_size):
            batch = collate(rows[start:start + self.batch_size], self.pad_id)
            batch = {k: v.to(self.device.name) for k, v in batch.items()}
            with torch.no_grad():
                logits = self.model(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).logits
            logits = logits[:, :-1, :].float()
            labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum")
            total_nll += float(nll)
            total_tokens += int((labels != IGNORE_INDEX).sum())
        if total_tokens == 0:
            raise ValueError("perplexity: no reply tokens to score")
        return math.exp(total_nll / total_tokens)


class ProviderGenerator:
    """Replies through an ``ml.llm`` :class:`~ml.llm.Provider` or :class:`~ml.llm.Router`
    (greedy: temperature 0). ``model`` labels the results (default: the provider's model id, or
    the router's role). Perplexity is unavailable: :meth:`perplexity` returns None."""

    def __init__(self, provider_or_router: Any, model: str | None = None, *,
                 max_new_tokens: int = 96) -> None:
        if provider_or_router is None or not hasattr(provider_or_router, "complete"):
            raise ValueError("ProviderGenerator needs an ml.llm provider or router (got "
                             f"{type(provider_or_router).__name__}); is the role configured?")
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        self.client = provider_or_router
        self.max_new_tokens = max_new_tokens
        self.name = (model or getattr(provider_or_router, "model", None)
                     or f"router:{getattr(provider_or_router, 'role', '?')}")

    def generate(self, prompts: Sequence[Prompt], *,
                 max_new_tokens: int | None = None) -> list[Generation]:
        """One reply per prompt, one call each, in order; a failed call raises.
        ``max_new_tokens``: this call's limit (default: the generator's)."""
        from ml.llm.types import LLMRequest

        if max_new_tokens is not None and max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        limit = max_new_tokens or self.max_new_tokens
        out = []
        for i, prompt in enumerate(prompts):
            request = LLMRequest(messages=check_prompt(prompt, f"prompt {i}"), temperature=0.0,
                                 max_tokens=limit,
                                 metadata={"purpose": "evaluation", "index": i})
            started = time.perf_counter()
            response = self.client.complete(request)
            latency = time.perf_counter() - started
            out.append(Generation(text=response.text.strip(), latency_s=latency,
                                  new_tokens=response.usage.completion_tokens,
                                  stopped=response.finish_reason not in ("length", "MAX_TOKENS"),
                                  prompt_tokens=response.usage.prompt_tokens))
        return out

    def perplexity(self, conversations: Sequence[Prompt]) -> None:
        """Providers expose no token log-probabilities of a given reply: always None."""
        return None
