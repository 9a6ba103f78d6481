"""LLM provider layer: one interface over OpenAI(-compatible), Gemini and local transformers
models, with retries, circuit breakers, structured output, caching, cost accounting and per-role
failover. See docs/providers.md."""

from ml.llm.breaker import CircuitBreaker
from ml.llm.cache import (
    JsonlCache,
    MemoryCache,
    ResponseCache,
    SQLiteCache,
    open_cache,
    request_key,
)
from ml.llm.config import build_provider, build_router, env_config, from_env
from ml.llm.errors import (
    CircuitOpenError,
    ConfigError,
    LLMError,
    PermanentProviderError,
    ProviderCallError,
    ProviderError,
    ProviderFailure,
    StructuredOutputError,
    TransientProviderError,
)
from ml.llm.pricing import Price, PriceTable
from ml.llm.redaction import RedactingFilter, install_redaction, redact, register_secret
from ml.llm.reliability import ResilientProvider, RetryPolicy
from ml.llm.router import Router, RouterStats
from ml.llm.types import LLMRequest, LLMResponse, Provider, Usage

__all__ = [
    "CircuitBreaker", "CircuitOpenError", "ConfigError", "JsonlCache", "LLMError", "LLMRequest",
    "LLMResponse", "MemoryCache", "PermanentProviderError", "Price", "PriceTable", "Provider",
    "ProviderCallError", "ProviderError", "ProviderFailure", "RedactingFilter", "ResilientProvider",
    "ResponseCache", "RetryPolicy", "Router", "RouterStats", "SQLiteCache", "StructuredOutputError",
    "TransientProviderError", "Usage", "build_provider", "build_router", "env_config", "from_env",
    "install_redaction", "open_cache", "redact", "register_secret", "request_key",
]

_LAZY = {
    "OpenAIProvider": "ml.llm.openai_provider",
    "GeminiProvider": "ml.llm.gemini_provider",
    "TransformersProvider": "ml.llm.transformers_provider",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    """Provider classes load their SDK (and torch) only when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ml.llm' has no attribute {name!r}")
