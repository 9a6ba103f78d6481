"""Retries (tenacity, exponential backoff, Retry-After honoured and capped) and a circuit breaker
around one provider."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import tenacity
from tenacity.wait import wait_base

from ml.llm.breaker import CircuitBreaker
from ml.llm.errors import CircuitOpenError, PermanentProviderError, ProviderCallError
from ml.llm.redaction import redact
from ml.llm.types import LLMRequest, LLMResponse, Provider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt (0 = no retry) on retryable errors.

    The wait before retry *n* is the server's Retry-After when it sent one (capped at
    ``max_retry_after_s``), otherwise exponential: ``initial_backoff_s * 2**(n-1)`` with up to
    ``jitter_s`` of random jitter, capped at ``max_backoff_s``.
    """

    max_retries: int = 3
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    jitter_s: float = 0.25
    max_retry_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("initial_backoff_s", "max_backoff_s", "jitter_s", "max_retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class wait_retry_after_or_exponential(wait_base):
    """Tenacity wait: Retry-After from the last error when present (capped), else exponential."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._exponential = tenacity.wait_exponential_jitter(
            initial=policy.initial_backoff_s, max=policy.max_backoff_s, jitter=policy.jitter_s
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, ProviderCallError) and exc.retry_after is not None:
            return max(0.0, min(exc.retry_after, self.policy.max_retry_after_s))
        return self._exponential(retry_state)


REQUEST_REJECTED_STATUS = frozenset({400, 413, 422})
"""HTTP statuses that reject one request (too long, bad parameters), not the provider's health;
401/403/404 (key, permission, model name) fail every request and do count on the breaker."""


def _rejects_this_request_only(exc: ProviderCallError) -> bool:
    return isinstance(exc, PermanentProviderError) and exc.status_code in REQUEST_REJECTED_STATUS


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderCallError) and exc.retryable


class ResilientProvider:
    """A provider with its own retry policy and circuit breaker.

    :meth:`call` raises :class:`CircuitOpenError` without calling when the breaker is open, else
    calls the provider under the retry policy; the breaker sees one success or failure per call.
    ``on_retry(provider_name, error, wait_s)`` is invoked before each retry sleep.

    A provider should raise only :class:`ProviderCallError`. Any other exception from
    ``complete`` (a bug, or an SDK tripping over a reply it did not expect) is logged at ERROR
    with its redacted traceback and becomes a :class:`PermanentProviderError` of kind
    ``"unexpected error"`` naming the exception: not retried, counted by the breaker, and the
    router fails over with the reason in its failure list.
    """

    def __init__(
        self,
        provider: Provider,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.provider = provider
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(provider.name)
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def model(self) -> str:
        return self.provider.model

    def __repr__(self) -> str:
        return f"ResilientProvider({self.provider!r}, {self.retry!r}, {self.breaker!r})"

    def _unexpected(self, exc: Exception) -> PermanentProviderError:
        kind = type(exc).__name__
        log.error("provider %s raised an unexpected %s; counted as a provider failure:\n%s",
                  self.name, kind, redact("".join(traceback.format_exception(exc))).rstrip())
        return PermanentProviderError(self.name, f"{kind}: {redact(exc)}", kind="unexpected error")

    def call(
        self,
        request: LLMRequest,
        on_retry: Callable[[str, ProviderCallError, float], None] | None = None,
    ) -> LLMResponse:
        if not self.breaker.allow_request():
            raise CircuitOpenError(self.name, self.breaker.retry_in_s())
        attempts = 0

        def attempt() -> LLMResponse:
            nonlocal attempts
            attempts += 1
            try:
                return self.provider.complete(request)
            except ProviderCallError:
                raise
            except Exception as exc:
                raise self._unexpected(exc) from None

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            if isinstance(exc, ProviderCallError):
                log.warning("retrying %s in %.2fs after attempt %d: %s",
                            self.name, wait, state.attempt_number, redact(exc))
                if on_retry is not None:
                    on_retry(self.name, exc, wait)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry.max_retries + 1),
            wait=wait_retry_after_or_exponential(self.retry),
            retry=tenacity.retry_if_exception(_is_retryable),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            response = retrying(attempt)
        except ProviderCallError as exc:
            if _rejects_this_request_only(exc):
                # the provider is up and answered coherently: this request was wrong, not the
                # provider, so the breaker (provider health) counts it as a success
                self.breaker.record_success()
            else:
                self.breaker.record_failure()
            raise
        self.breaker.record_success()
        response.attempts = attempts
        return response
