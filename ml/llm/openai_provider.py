"""OpenAI and any OpenAI-compatible server (vLLM, Ollama, LM Studio) through the official client."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice

from ml.llm._http import is_retryable_status, provider_key, retry_after_seconds
from ml.llm.errors import ConfigError, PermanentProviderError, TransientProviderError
from ml.llm.redaction import redact
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

    The client is thread-safe: :class:`ml.llm.reliability.ResilientProvider` runs up to
    ``default_concurrency`` calls at once unless configured otherwise.
    """

    default_concurrency = 8

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
        return self._response(completion, latency_ms)

    def _unusable(self, what: str) -> PermanentProviderError:
        return PermanentProviderError(self.name, what, kind="unusable response")

    def _response(self, completion: object, latency_ms: float) -> LLMResponse:
        """An :class:`LLMResponse` from the parsed body, every field checked: the client builds
        its objects without validation, so a stand-in or broken server can send anything."""
        if not isinstance(completion, ChatCompletion):
            raise self._unusable(f"the response body is {_describe(completion)}, not a chat completion object")
        choices = completion.choices
        if not isinstance(choices, list):
            raise self._unusable(f"'choices' is {_describe(choices)}, not a list")
        if not choices:
            raise self._unusable("the response has no choices")
        choice = choices[0]
        if not isinstance(choice, Choice):
            raise self._unusable(f"choices[0] is {_describe(choice)}, not an object")
        finish_reason = choice.finish_reason
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise self._unusable(f"choices[0].finish_reason is {_describe(finish_reason)}, not a string")
        message = choice.message
        if not isinstance(message, ChatCompletionMessage):
            raise self._unusable(f"choices[0].message is {_describe(message)}, not an object")
        text = message.content
        if text is None:
            refusal = getattr(message, "refusal", None)
            raise self._unusable(f"no text content (finish_reason={finish_reason!r}, refusal={refusal!r})")
        if not isinstance(text, str):
            raise self._unusable(f"choices[0].message.content is {_describe(text)}, not a string")
        usage = completion.usage
        if usage is None:
            log.warning("%s: the server reported no token usage; tokens and cost count as 0", self.name)
            counted = Usage()
        elif not isinstance(usage, CompletionUsage):
            raise self._unusable(f"'usage' is {_describe(usage)}, not an object")
        else:
            for field in ("prompt_tokens", "completion_tokens"):
                value = getattr(usage, field)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise self._unusable(f"usage.{field} is {_describe(value)}, not a token count")
            counted = Usage(usage.prompt_tokens, usage.completion_tokens)
        model = completion.model if isinstance(completion.model, str) and completion.model else self.model
        return LLMResponse(
            text=text,
            provider=self.name,
            model=model,
            usage=counted,
            latency_ms=latency_ms,
            finish_reason=finish_reason,
        )


def _describe(value: object) -> str:
    """A JSON-ish description of an unexpected value, short and safe for an error message."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "a list", dict: "an object"}
    kind = names.get(type(value), type(value).__name__)
    if value is None:
        return kind
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 60 else shown[:60] + '...'}"
