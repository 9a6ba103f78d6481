"""Retries (tenacity, exponential backoff, Retry-After honoured and capped), a circuit breaker and
a concurrency limit around one provider."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import tenacity
from tenacity.wait import wait_base

from ml.llm.breaker import OPEN, CircuitBreaker
from ml.llm.errors import CircuitOpenError, ConfigError, PermanentProviderError, ProviderCallError
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


UNDECLARED_CONCURRENCY = 1
"""The limit of a provider that declares neither ``default_concurrency`` nor ``max_concurrency``:
its thread safety is unknown, so its calls run one at a time unless ``concurrency=`` says more."""


def provider_concurrency(provider: Provider, concurrency: int | None = None) -> int:
    """The concurrency limit of ``provider``: ``concurrency`` when given, else the provider's
    ``default_concurrency`` (8 for the HTTP providers), else :data:`UNDECLARED_CONCURRENCY`; never
    above the provider's ``max_concurrency`` (1 for a local transformers model). A limit below 1,
    or an explicit one above ``max_concurrency``, is a :class:`ConfigError`."""
    name = getattr(provider, "name", type(provider).__name__)
    cap = getattr(provider, "max_concurrency", None)
    if concurrency is None:
        limit = int(getattr(provider, "default_concurrency", UNDECLARED_CONCURRENCY))
        return limit if cap is None else min(limit, int(cap))
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise ConfigError(f"{name}: concurrency must be an integer, got {concurrency!r}")
    if concurrency < 1:
        raise ConfigError(f"{name}: concurrency must be at least 1, got {concurrency}")
    if cap is not None and concurrency > int(cap):
        raise ConfigError(f"{name}: concurrency {concurrency} is above this provider's maximum "
                          f"of {cap} ({type(provider).__name__} runs one call at a time)")
    return concurrency


class ResilientProvider:
    """A provider with its own retry policy, circuit breaker and concurrency limit.

    :meth:`call` raises :class:`CircuitOpenError` without calling when the breaker is open, else
    calls the provider under the retry policy; the breaker sees one success or failure per call.
    ``on_retry(provider_name, error, wait_s)`` is invoked before each retry sleep.

    At most ``concurrency`` calls (:func:`provider_concurrency`) run at once, from any number of
    threads: a call holds its slot from its first attempt to its last, retry waits included, so
    requests backing off from a 429 do not make room for more requests to the throttled server.
    The breaker is checked once a slot is free (an open breaker is also seen before waiting).

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
        concurrency: int | None = None,
    ) -> None:
        self.provider = provider
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(provider.name)
        self._sleep = sleep
        self.concurrency = provider_concurrency(provider, concurrency)
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._count_lock = threading.Lock()
        self.in_flight = 0  # calls holding a slot now
        self.peak_in_flight = 0  # the most that ever did at once

    @contextmanager
    def _slot(self) -> Iterator[None]:
        self._slots.acquire()
        with self._count_lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self._slots.release()

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def model(self) -> str:
        return self.provider.model

    def __repr__(self) -> str:
        return (f"ResilientProvider({self.provider!r}, {self.retry!r}, {self.breaker!r}, "
                f"concurrency={self.concurrency})")

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
        if self.breaker.state == OPEN:  # fail over at once rather than wait for a slot
            raise CircuitOpenError(self.name, self.breaker.retry_in_s())
        with self._slot():
            return self._call(request, on_retry)

    def _call(
        self,
        request: LLMRequest,
        on_retry: Callable[[str, ProviderCallError, float], None] | None,
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
