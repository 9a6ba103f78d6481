"""A local transformers causal LM (a directory or an in-memory model/tokenizer), greedy decoding."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ml.llm.errors import ConfigError, PermanentProviderError, ProviderCallError
from ml.llm.pricing import Price
from ml.llm.redaction import redact
from ml.llm.structured import schema_instruction
from ml.llm.types import LLMRequest, LLMResponse, Usage


class TransformersProvider:
    """Runs ``model.generate`` on CPU (or ``device``), greedy, ``max_new_tokens=request.max_tokens``.

    Either ``model_path`` (a local directory; loaded with ``local_files_only=True``, nothing is
    downloaded) or ``model`` + ``tokenizer`` objects. The tokenizer's chat template formats the
    messages when it has one; otherwise a plain ``role: content`` transcript ending in
    ``assistant:``. ``temperature`` is ignored (greedy). A schema is asked for in a system
    message (no constrained decoding); the router validates and repairs. ``timeout_s`` becomes
    ``generate(max_time=...)``. Local inference costs nothing unless the price table says so.
    A failure while tokenizing, generating or decoding (a tokenizer that does not match the model,
    out of memory, ...) is a :class:`PermanentProviderError` of kind ``"generation failed"``.
    One ``generate`` at a time (``max_concurrency = 1``): a local model on CPU gains nothing from
    overlapping calls, and its ``generate`` is not re-entrant.
    """

    default_price = Price(0.0, 0.0)
    max_concurrency = 1

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        name: str = "transformers",
        model_name: str | None = None,
        device: str = "cpu",
        timeout_s: float | None = None,
    ) -> None:
        if (model_path is None) == (model is None):
            raise ConfigError(f"{name}: give either model_path or model (+ tokenizer), not both or neither")
        if model is not None and tokenizer is None:
            raise ConfigError(f"{name}: an in-memory model needs its tokenizer")
        if model_path is not None:
            path = Path(model_path).expanduser()
            if not path.is_dir():
                raise ConfigError(f"{name}: model_path {str(path)!r} is not a directory")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        self.name = name
        self.model = model_name or (Path(model_path).name if model_path is not None else
                                    getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.timeout_s = timeout_s
        self._lm = model.to(device).eval()
        self._tokenizer = tokenizer
        self._device = device
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TransformersProvider(name={self.name!r}, model={self.model!r}, device={self._device!r})"

    def _prompt(self, request: LLMRequest) -> str:
        messages = list(request.messages)
        if request.response_schema is not None:
            messages = [{"role": "system", "content": schema_instruction(request)}, *messages]
        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            return self._generate(request)
        except ProviderCallError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            # torch and transformers raise these for a broken model, a tokenizer that does not
            # match it, out-of-memory (a RuntimeError), or bad generation arguments
            raise PermanentProviderError(self.name, f"{type(exc).__name__}: {redact(exc)}",
                                         kind="generation failed") from None

    def _generate(self, request: LLMRequest) -> LLMResponse:
        import torch

        prompt = self._prompt(request)
        encoded = self._tokenizer(prompt, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self._device)
        if input_ids.shape[1] == 0:
            raise PermanentProviderError(self.name, "the prompt encodes to zero tokens", kind="bad request")
        attention = encoded.get("attention_mask")
        eos = self._tokenizer.eos_token_id
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else eos
        kwargs: dict[str, Any] = {
            "max_new_tokens": request.max_tokens,
            "do_sample": False,
            "pad_token_id": pad,
            "eos_token_id": eos,
        }
        if attention is not None:
            kwargs["attention_mask"] = attention.to(self._device)
        if self.timeout_s is not None:
            kwargs["max_time"] = self.timeout_s
        started = time.perf_counter()
        with self._lock, torch.no_grad():
            output = self._lm.generate(input_ids, **kwargs)
        latency_ms = (time.perf_counter() - started) * 1000
        new_tokens = output[0, input_ids.shape[1]:]
        n_new = int(new_tokens.shape[0])
        ended = eos is not None and n_new > 0 and int(new_tokens[-1]) == eos
        text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
        return LLMResponse(
            text=text.strip(),
            provider=self.name,
            model=self.model,
            usage=Usage(int(input_ids.shape[1]), n_new),
            latency_ms=latency_ms,
            finish_reason="stop" if ended or n_new < request.max_tokens else "length",
        )
