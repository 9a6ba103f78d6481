"""Per-role failover across an ordered provider list, with cache, structured output, cost and
counters."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any

from ml.llm.cache import ResponseCache, request_key
from ml.llm.errors import (
    CircuitOpenError,
    ProviderCallError,
    ProviderError,
    ProviderFailure,
    StructuredOutputError,
)
from ml.llm.pricing import Price, PriceTable
from ml.llm.redaction import redact
from ml.llm.reliability import ResilientProvider
from ml.llm.structured import SchemaViolation, parse_and_validate, repair_request
from ml.llm.types import LLMRequest, LLMResponse, Provider

log = logging.getLogger(__name__)


@dataclass
class RouterStats:
    """Counters for run metadata. ``successes``/``failures`` count router requests; the rest
    count provider-level events (``provider_failures`` includes each failover)."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    provider_failures: int = 0
    retries: int = 0
    repairs: int = 0
    cache_hits: int = 0
    breaker_skips: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_metadata(self, prefix: str = "llm_") -> dict[str, Any]:
        """Flat, JSON-friendly counters (no secrets, no prompts) for Dagster metadata."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "by_provider":
                continue
            out[prefix + f.name] = getattr(self, f.name)
        out[prefix + "cost_usd"] = round(self.cost_usd, 6)
        out[prefix + "tokens"] = self.tokens
        for name, n in sorted(self.by_provider.items()):
            out[f"{prefix}answers_by_{name}"] = n
        return out


class Router:
    """``Router(role, providers).complete(request)``.

    A cache hit (for any of the providers, in order) returns at once. Otherwise, for each
    provider in order: an open breaker is skipped; else the provider is called under its retry
    policy. With a response schema, the reply is parsed
    and validated; a malformed or truncated reply gets exactly one repair call to the same
    provider, and a second failure counts as that provider's failure. When every provider fails,
    :class:`ProviderError` names each one's failure.

    :meth:`complete_many` runs a batch of requests side by side, each exactly as :meth:`complete`
    would, at most each provider's ``concurrency`` calls at once.
    """

    def __init__(
        self,
        role: str,
        providers: Sequence[Provider | ResilientProvider],
        *,
        cache: ResponseCache | None = None,
        prices: PriceTable | dict[str, Any] | None = None,
    ) -> None:
        if not providers:
            raise ValueError(f"Router for role {role!r} needs at least one provider")
        self.role = role
        self.providers = [p if isinstance(p, ResilientProvider) else ResilientProvider(p) for p in providers]
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique within role {role!r}: {names}")
        self.cache = cache
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable(prices)
        self.stats = RouterStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Router({self.role!r}, {[p.name for p in self.providers]})"

    # ---- counters -----------------------------------------------------------------------------
    def reset_stats(self) -> RouterStats:
        """Start fresh counters (e.g. per Dagster run) and return the previous ones."""
        with self._lock:
            previous, self.stats = self.stats, RouterStats()
        return previous

    def _bump(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _on_retry(self, provider: str, error: ProviderCallError, wait_s: float) -> None:
        self._bump(retries=1)

    # ---- main entry ---------------------------------------------------------------------------
    def complete(self, request: LLMRequest) -> LLMResponse:
        self._bump(requests=1)
        if self.cache is not None:
            # every provider's cache entry first: a cached answer from the backup beats calling a
            # primary that failed last time
            for slot in self.providers:
                hit = self.cache.get(request_key(slot.name, slot.model, request))
                if hit is not None:
                    response = LLMResponse.from_dict(hit)
                    response.cached = True
                    response.cost_usd = 0.0
                    response.latency_ms = 0.0
                    response.attempts = 0
                    self._bump(cache_hits=1, successes=1)
                    return response
        failures: list[ProviderFailure] = []
        for slot in self.providers:
            try:
                response = self._call(slot, request)
            except CircuitOpenError as exc:
                self._bump(breaker_skips=1)
                failures.append(ProviderFailure.from_exception(slot.name, exc))
                log.info("role %s: skipping %s (%s)", self.role, slot.name, exc)
                continue
            except (ProviderCallError, StructuredOutputError) as exc:
                self._bump(provider_failures=1)
                failures.append(ProviderFailure.from_exception(slot.name, exc))
                log.warning("role %s: provider %s failed, failing over: %s", self.role, slot.name, redact(exc))
                continue
            if self.cache is not None:
                self.cache.put(request_key(slot.name, slot.model, request), response.to_dict())
            with self._lock:
                self.stats.successes += 1
                self.stats.by_provider[slot.name] = self.stats.by_provider.get(slot.name, 0) + 1
            return response
        self._bump(failures=1)
        raise ProviderError(self.role, failures)

    def complete_many(self, requests: Sequence[LLMRequest], *,
                      max_workers: int | None = None) -> list[LLMResponse | ProviderError]:
        """Complete every request, side by side; the results come back in input order.

        Each request goes through :meth:`complete` (cache, failover, retries, breakers, repair,
        cost and counters as for a single call) on a thread pool of ``max_workers`` threads
        (default: the largest provider ``concurrency``); each provider's own limit caps how many
        of its calls run at once (:class:`~ml.llm.reliability.ResilientProvider`). A request whose
        every provider failed gets its :class:`ProviderError` in its place in the list, so one
        failure never hides the other answers. Anything else (a bug, a broken cache, Ctrl-C)
        cancels the requests not yet started and is raised.

        With a cache, identical requests in one batch are sent once: the duplicates run after the
        first, in input order, and are answered from the cache as they would be one by one.
        """
        batch = list(requests)
        for i, request in enumerate(batch):
            if not isinstance(request, LLMRequest):
                raise TypeError(f"complete_many: requests[{i}] is a {type(request).__name__}, "
                                "not an LLMRequest")
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"complete_many: max_workers must be at least 1, got {max_workers!r}")
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(batch):
            # same key as the cache's, provider-independent; without a cache every request is sent
            key = request_key("", "", request) if self.cache is not None else str(i)
            groups.setdefault(key, []).append(i)
        results: list[LLMResponse | ProviderError | None] = [None] * len(batch)

        def run(indexes: list[int]) -> None:
            for i in indexes:
                try:
                    results[i] = self.complete(batch[i])
                except ProviderError as exc:
                    results[i] = exc

        workers = min(len(groups), max_workers or max(p.concurrency for p in self.providers))
        if workers <= 1:
            for indexes in groups.values():
                run(indexes)
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix=f"llm-{self.role}")
            try:
                futures = [pool.submit(run, indexes) for indexes in groups.values()]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # raises what is not a ProviderError
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        return results  # type: ignore[return-value]  # every slot is filled

    def _charge(self, slot: ResilientProvider, response: LLMResponse) -> None:
        """Price one completed provider call and add its tokens and cost to the counters (a reply
        thrown away for bad JSON still cost money)."""
        default: Price | None = getattr(slot.provider, "default_price", None)
        # the configured model id first, then the id the server reports (often a dated variant)
        response.cost_usd = self.prices.cost(slot.name, slot.model, response.usage)
        if response.cost_usd is None:
            response.cost_usd = self.prices.cost(slot.name, response.model, response.usage, default)
        with self._lock:
            self.stats.prompt_tokens += response.usage.prompt_tokens
            self.stats.completion_tokens += response.usage.completion_tokens
            if response.cost_usd is None:
                self.stats.unpriced_calls += 1
            else:
                self.stats.cost_usd += response.cost_usd

    def _call(self, slot: ResilientProvider, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        response = slot.call(request, on_retry=self._on_retry)
        self._charge(slot, response)
        if request.response_schema is None:
            return response
        try:
            response.parsed = parse_and_validate(response.text, request, response.finish_reason)
            return response
        except SchemaViolation as first:
            first_error = str(first)
        log.warning("role %s: %s returned invalid structured output (%s); one repair retry",
                    self.role, slot.name, redact(first_error))
        self._bump(repairs=1)
        repaired = slot.call(repair_request(request, response.text, first_error), on_retry=self._on_retry)
        self._charge(slot, repaired)
        try:
            repaired.parsed = parse_and_validate(repaired.text, request, repaired.finish_reason)
        except SchemaViolation as second:
            raise StructuredOutputError(slot.name, first_error, str(second), repaired.text) from None
        # the answer carries the cost of both calls
        repaired.usage = response.usage + repaired.usage
        repaired.cost_usd = (
            None if response.cost_usd is None or repaired.cost_usd is None
            else response.cost_usd + repaired.cost_usd
        )
        repaired.attempts += response.attempts
        repaired.latency_ms = (time.perf_counter() - started) * 1000
        return repaired
