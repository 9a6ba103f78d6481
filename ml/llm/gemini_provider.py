"""Gemini through the official ``google-genai`` client (not the deprecated google-generativeai)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ml.llm._http import is_retryable_status, provider_key, retry_after_seconds
from ml.llm.errors import ConfigError, PermanentProviderError, TransientProviderError
from ml.llm.redaction import redact
from ml.llm.types import LLMRequest, LLMResponse, Usage

log = logging.getLogger(__name__)

# Gemini finish reasons in the OpenAI vocabulary the rest of the package uses
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}

try:  # google-genai may run on httpx2 (a fork with its own exception classes)
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
    _TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
except ImportError:
    _TRANSPORT_ERRORS = (httpx.TransportError,)
    _TIMEOUT_ERRORS = (httpx.TimeoutException,)


class GeminiProvider:
    """``models.generate_content`` via ``genai.Client(api_key=..., http_options=HttpOptions(...))``.

    ``base_url`` points the client at another endpoint (a proxy or a stand-in server); the client
    appends ``{api_version}/models/{model}:generateContent`` (``api_version`` defaults to
    ``v1beta``, where ``response_json_schema`` lives; the SDK's own default is ``v1``). The
    timeout is passed in milliseconds, as ``HttpOptions.timeout`` expects; the SDK's retries
    are off (``HttpRetryOptions(attempts=1)``).
    System messages become ``system_instruction``; ``assistant`` turns become ``model`` turns.
    With a schema: ``response_mime_type='application/json'`` and ``response_json_schema``.
    The client is thread-safe: up to ``default_concurrency`` calls run at once unless configured
    otherwise (:class:`ml.llm.reliability.ResilientProvider`).
    """

    default_concurrency = 8

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = "GEMINI_API_KEY",
        timeout_s: float = 30.0,
        name: str = "gemini",
        api_version: str = "v1beta",
    ) -> None:
        if not model:
            raise ConfigError(f"{name}: model is required")
        if timeout_s <= 0:
            raise ConfigError(f"{name}: timeout_s must be positive, got {timeout_s}")
        key = provider_key(name, api_key_env, base_url)
        self.name = name
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        http_options = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            timeout=max(1, int(timeout_s * 1000)),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        self._client = genai.Client(api_key=key, http_options=http_options)

    def __repr__(self) -> str:
        return (f"GeminiProvider(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, timeout_s={self.timeout_s})")

    def _contents(self, request: LLMRequest) -> tuple[list[types.Content], str | None]:
        system = [m["content"] for m in request.messages if m["role"] == "system"]
        contents = [
            types.Content(role="model" if m["role"] == "assistant" else "user",
                          parts=[types.Part(text=m["content"])])
            for m in request.messages if m["role"] != "system"
        ]
        return contents, ("\n\n".join(system) if system else None)

    def _config(self, request: LLMRequest, system: str | None) -> types.GenerateContentConfig:
        kwargs: dict[str, Any] = {
            "temperature": request.temperature,
            "max_output_tokens": request.max_tokens,
            "system_instruction": system,
            "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
        }
        schema = request.json_schema()
        if schema is not None:
            kwargs["response_mime_type"] = "application/json"
            kwargs["response_json_schema"] = schema
        return types.GenerateContentConfig(**kwargs)

    def complete(self, request: LLMRequest) -> LLMResponse:
        contents, system = self._contents(request)
        config = self._config(request, system)
        started = time.perf_counter()
        try:
            result = self._client.models.generate_content(model=self.model, contents=contents, config=config)
        except genai_errors.APIError as exc:
            status = exc.code
            message = redact(exc.message or exc)
            if is_retryable_status(status):
                headers = getattr(exc.response, "headers", None)
                kind = "rate limited" if status == 429 else "server error"
                raise TransientProviderError(self.name, message, status_code=status, kind=kind,
                                             retry_after=retry_after_seconds(headers)) from None
            raise PermanentProviderError(self.name, message, status_code=status, kind="rejected") from None
        except json.JSONDecodeError as exc:
            raise PermanentProviderError(self.name, f"the response body is not JSON: {exc.msg}",
                                         kind="unusable response") from None
        except pydantic.ValidationError as exc:
            # the SDK validates the body into GenerateContentResponse: say which fields were wrong
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
            )
            raise PermanentProviderError(self.name, f"the response does not match GenerateContentResponse: {problems}",
                                         kind="unusable response") from None
        except _TIMEOUT_ERRORS:
            raise TransientProviderError(self.name, f"no reply within {self.timeout_s}s", kind="timeout") from None
        except _TRANSPORT_ERRORS as exc:
            raise TransientProviderError(self.name, f"{type(exc).__name__}: {redact(exc)}",
                                         kind="connection error") from None
        latency_ms = (time.perf_counter() - started) * 1000
        if not isinstance(result, types.GenerateContentResponse):
            raise PermanentProviderError(self.name, f"the client returned {type(result).__name__}, "
                                         "not a GenerateContentResponse", kind="unusable response")
        if not result.candidates:
            feedback = result.prompt_feedback
            raise PermanentProviderError(self.name, f"no candidates (prompt_feedback={feedback!r})",
                                         kind="unusable response")
        candidate = result.candidates[0]
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        texts = [p.text for p in parts if p.text is not None and not p.thought]
        finish = _finish_reason(candidate.finish_reason)
        if not texts:
            raise PermanentProviderError(self.name, f"no text in the candidate (finish_reason={finish!r})",
                                         kind="unusable response")
        meta = result.usage_metadata
        if meta is None:
            log.warning("%s: the server reported no usageMetadata; tokens and cost count as 0", self.name)
            usage = Usage()
        else:
            usage = Usage(meta.prompt_token_count or 0,
                          (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0))
        return LLMResponse(
            text="".join(texts),
            provider=self.name,
            model=result.model_version or self.model,
            usage=usage,
            latency_ms=latency_ms,
            finish_reason=finish,
        )


def _finish_reason(value: object) -> str | None:
    """Gemini's finish reason in the OpenAI vocabulary. The SDK keeps a reason it does not know
    as a plain string (with a warning) instead of an enum member."""
    if value is None:
        return None
    raw = value.value if isinstance(value, types.FinishReason) else str(value)
    return _FINISH.get(raw, raw.lower())
