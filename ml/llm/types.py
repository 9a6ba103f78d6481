"""The provider interface: one request type, one response type, one protocol."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

ROLES = ("system", "user", "assistant")

Schema = dict[str, Any] | type[BaseModel]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass
class LLMRequest:
    """Messages in, plus sampling parameters and an optional output schema.

    ``response_schema`` is a JSON schema dict or a pydantic model class; when given, the reply
    must be JSON valid against it (``LLMResponse.parsed``). ``metadata`` is carried for tracing
    (e.g. an interaction id) and is *not* part of the cache key.
    """

    messages: list[dict[str, str]]
    temperature: float = 0.0
    max_tokens: int = 512
    response_schema: Schema | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.messages, list) or not self.messages:
            raise ValueError("LLMRequest.messages must be a non-empty list of {role, content}")
        for i, msg in enumerate(self.messages):
            if not isinstance(msg, dict) or set(msg) - {"role", "content"}:
                raise ValueError(f"LLMRequest.messages[{i}] must be a dict with role and content only")
            if msg.get("role") not in ROLES:
                raise ValueError(
                    f"LLMRequest.messages[{i}].role is {msg.get('role')!r}; expected one of {ROLES}"
                )
            if not isinstance(msg.get("content"), str):
                raise ValueError(f"LLMRequest.messages[{i}].content must be a string")
        if self.max_tokens <= 0:
            raise ValueError(f"LLMRequest.max_tokens must be positive, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"LLMRequest.temperature must be in [0, 2], got {self.temperature}")
        if self.response_schema is not None and not (
            isinstance(self.response_schema, dict)
            or (isinstance(self.response_schema, type) and issubclass(self.response_schema, BaseModel))
        ):
            raise ValueError("LLMRequest.response_schema must be a JSON schema dict or a pydantic model")

    def json_schema(self) -> dict[str, Any] | None:
        """The response schema as a JSON schema dict (pydantic models are converted)."""
        if self.response_schema is None:
            return None
        if isinstance(self.response_schema, dict):
            return self.response_schema
        return self.response_schema.model_json_schema()

    def schema_name(self) -> str:
        if isinstance(self.response_schema, type):
            return self.response_schema.__name__
        title = (self.response_schema or {}).get("title")
        return str(title) if title else "response"

    def canonical(self) -> dict[str, Any]:
        """The content that identifies this request (used for the cache key)."""
        return {
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_schema": self.json_schema(),
        }


@dataclass
class LLMResponse:
    """What came back: text, validated JSON (when a schema was asked for), usage, latency, cost.

    ``cost_usd`` is None when the model has no entry in the price table (counted by the router
    as ``unpriced_calls``) and 0.0 for a cache hit. ``attempts`` counts HTTP calls made for this
    answer, retries and the repair call included.
    """

    text: str
    provider: str
    model: str
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    cost_usd: float | None = None
    parsed: Any = None
    cached: bool = False
    finish_reason: str | None = None
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = {"prompt_tokens": self.usage.prompt_tokens,
                      "completion_tokens": self.usage.completion_tokens}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLMResponse:
        data = dict(d)
        data["usage"] = Usage(**data.get("usage", {}))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@runtime_checkable
class Provider(Protocol):
    """One model behind one API. ``complete`` makes exactly one call (no retries, no cache).

    It raises ``TransientProviderError`` for what is worth retrying (429, 5xx, timeouts,
    connection errors) and ``PermanentProviderError`` for the rest; it leaves ``parsed`` and
    ``cost_usd`` to the reliability layer. ``name`` identifies the provider in errors, logs,
    counters and the cache key; ``model`` is the model id used for pricing.
    """

    name: str
    model: str

    def complete(self, request: LLMRequest) -> LLMResponse: ...
