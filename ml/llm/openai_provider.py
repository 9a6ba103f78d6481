"""OpenAI and any OpenAI-compatible server (vLLM, Ollama, LM Studio) through the official client."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import openai

from ml.llm.errors import ConfigError, PermanentProviderError, TransientProviderError
from ml.llm.redaction import redact
from ml.llm._http import is_retryable_status, provider_key, retry_after_seconds
from ml.llm.structured import schema_instruction
from ml.llm.types import LLMRequest, LLMResponse, Usage

JSON_MODES = ("json_schema", "json_object", "none")
log = logging.getLogger(__name__)



class OpenAIProvider:
    """Chat completions via ``openai.OpenAI``.

    The key is read from the env var *named* ``api_key_env`` when the provider is built. When the
    variable is unset, a ``base_url`` (a local server) gets a placeholder key; the hosted API
    raises :class:`ConfigError`. The SDK's own retries are off (``max_retries=0``): retries belong
    to :class:`ml.llm.reliability.ResilientProvider`.

    ``json_mode`` for requests with a schema: ``json_schema`` (``response_format`` with the
    schema; OpenAI, vLLM, recent Ollama), ``json_object`` (JSON mode plus the schema in a system
    message) or ``none`` (schema in a system message only).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        name: str = "openai",
        json_mode: str = "json_schema",
        max_tokens_param: str = "max_tokens",
    ) -> None:
        if not model:
            raise ConfigError(f"{name}: model is required")
        if json_mode not in JSON_MODES:
            raise ConfigError(f"{name}: json_mode must be one of {JSON_MODES}, got {json_mode!r}")
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(f"{name}: max_tokens_param must be max_tokens or max_completion_tokens")
        if timeout_s <= 0:
            raise ConfigError(f"{name}: timeout_s must be positive, got {timeout_s}")
        key = provider_key(name, api_key_env, base_url)
        self.name = name
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.json_mode = json_mode
        self.max_tokens_param = max_tokens_param
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:
        return (f"OpenAIProvider(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, timeout_s={self.timeout_s})")

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        messages = list(request.messages)
        params: dict[str, Any] = {
            "model": self.model,
            "temperature": request.temperature,
            self.max_tokens_param: request.max_tokens,
        }
        schema = request.json_schema()
        if schema is not None:
            if self.json_mode == "json_schema":
                params["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": request.schema_name()[:64], "schema": schema, "strict": False},
                }
            else:
                messages = [{"role": "system", "content": schema_instruction(request)}, *messages]
                if self.json_mode == "json_object":
                    params["response_format"] = {"type": "json_object"}
        params["messages"] = messages
        return params

    def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        try:
            completion = self._client.chat.completions.create(**self._params(request))
        except openai.APITimeoutError:
            raise TransientProviderError(self.name, f"no reply within {self.timeout_s}s", kind="timeout") from None
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "unknown"
            raise TransientProviderError(self.name, f"{redact(exc)} ({cause})", kind="connection error") from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = redact(exc.message)
            if is_retryable_status(status):
                kind = "rate limited" if status == 429 else "server error"
                raise TransientProviderError(
                    self.name, message, status_code=status, kind=kind,
                    retry_after=retry_after_seconds(exc.response.headers),
                ) from None
            raise PermanentProviderError(self.name, message, status_code=status, kind="rejected") from None
        except openai.APIResponseValidationError as exc:
            raise PermanentProviderError(self.name, redact(exc), kind="unusable response") from None
        except json.JSONDecodeError as exc:
            raise PermanentProviderError(self.name, f"the response body is not JSON: {exc.msg}",
                                         kind="unusable response") from None
        latency_ms = (time.perf_counter() - started) * 1000
        if not completion.choices:
            raise PermanentProviderError(self.name, "the response has no choices", kind="unusable response")
        choice = completion.choices[0]
        text = choice.message.content
        if text is None:
            refusal = getattr(choice.message, "refusal", None)
            raise PermanentProviderError(
                self.name, f"no text content (finish_reason={choice.finish_reason!r}, refusal={refusal!r})",
                kind="unusable response",
            )
        usage = completion.usage
        if usage is None:
            log.warning("%s: the server reported no token usage; tokens and cost count as 0", self.name)
        return LLMResponse(
            text=text,
            provider=self.name,
            model=completion.model or self.model,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            latency_ms=latency_ms,
            finish_reason=choice.finish_reason,
        )
