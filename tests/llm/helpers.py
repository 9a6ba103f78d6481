"""Helpers for provider tests: real-SDK providers pointed at stand-in servers, fast retry settings."""

from __future__ import annotations

from collections.abc import Callable

from ml.llm import CircuitBreaker, ResilientProvider, RetryPolicy
from tests.llm.fake_servers import FakeOpenAIServer

KEY_ENV = "LEARNLOOP_TEST_LLM_KEY"
FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff_s=0.01, max_backoff_s=0.05, jitter_s=0.0,
                         max_retry_after_s=2.0)


def make_provider(server, *, name: str | None = None, timeout_s: float = 2.0, model: str | None = None,
                  api_key_env: str = KEY_ENV):
    """A real-SDK provider pointed at a stand-in server (OpenAI or Gemini by the server's type)."""
    if isinstance(server, FakeOpenAIServer):
        from ml.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(model or "gpt-test", base_url=server.base_url, api_key_env=api_key_env,
                              timeout_s=timeout_s, name=name or "openai")
    from ml.llm.gemini_provider import GeminiProvider

    return GeminiProvider(model or "gemini-test", base_url=server.base_url, api_key_env=api_key_env,
                          timeout_s=timeout_s, name=name or "gemini")


class FakeClock:
    """A clock that stands still until the test moves it: pass it as ``resilient(..., clock=)``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def resilient(provider, retry: RetryPolicy = FAST_RETRY, threshold: int = 5, reset_s: float = 30.0,
              clock: Callable[[], float] | None = None) -> ResilientProvider:
    """The provider under a fast retry policy and its own breaker."""
    kwargs = {} if clock is None else {"clock": clock}
    return ResilientProvider(provider, retry=retry,
                             breaker=CircuitBreaker(provider.name, threshold, reset_s, **kwargs))
