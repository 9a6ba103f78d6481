"""Exceptions of the provider layer. Every message is redacted of API keys before it is stored."""

from __future__ import annotations

from dataclasses import dataclass

from ml.llm.redaction import redact


class LLMError(Exception):
    """Base class of every error raised by ``ml.llm``."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ConfigError(LLMError, ValueError):
    """A provider or router configuration is invalid (names the offending field)."""


class ProviderCallError(LLMError):
    """One call to one provider failed.

    ``retryable`` says whether the retry policy may try again (429, 5xx, timeouts, connection
    errors); ``retry_after`` is the server's Retry-After in seconds when it sent one.
    """

    retryable = False

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        kind: str = "error",
    ) -> None:
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after
        self.kind = kind
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{provider}: {kind}{status}: {message}")


class TransientProviderError(ProviderCallError):
    """Rate limit, server error, timeout or connection failure: worth retrying."""

    retryable = True


class PermanentProviderError(ProviderCallError):
    """Authentication, bad request, unusable response: retrying the same call will not help."""


class CircuitOpenError(LLMError):
    """The provider's circuit breaker is open; the call was not attempted."""

    def __init__(self, provider: str, retry_in_s: float) -> None:
        self.provider = provider
        self.retry_in_s = retry_in_s
        super().__init__(f"{provider}: circuit open, next trial in {retry_in_s:.1f}s")


class StructuredOutputError(LLMError):
    """The reply was not valid JSON for the requested schema, even after the one repair retry."""

    def __init__(self, provider: str, first_error: str, repair_error: str, raw_text: str) -> None:
        self.provider = provider
        self.first_error = first_error
        self.repair_error = repair_error
        self.raw_text = raw_text
        snippet = raw_text if len(raw_text) <= 200 else raw_text[:200] + "..."
        super().__init__(
            f"{provider}: invalid structured output after one repair retry: {repair_error} "
            f"(first attempt: {first_error}); last reply: {snippet!r}"
        )


@dataclass(frozen=True)
class ProviderFailure:
    """One provider's failure inside a :class:`ProviderError`: the exception's class name and
    message, and for a ``ProviderCallError`` its ``kind`` and HTTP ``status_code`` as fields
    (callers classify on these, never on the message text)."""

    provider: str
    error_type: str
    message: str
    kind: str | None = None
    status_code: int | None = None

    @classmethod
    def from_exception(cls, provider: str, exc: BaseException) -> ProviderFailure:
        return cls(provider, type(exc).__name__, str(exc), getattr(exc, "kind", None),
                   getattr(exc, "status_code", None))


class ProviderError(LLMError):
    """Every provider of a role failed; ``failures`` names each provider and its error."""

    def __init__(self, role: str, failures: list[ProviderFailure]) -> None:
        self.role = role
        self.failures = list(failures)
        if failures:
            detail = "; ".join(f"[{f.provider}] {f.error_type}: {f.message}" for f in failures)
        else:
            detail = "no providers configured"
        super().__init__(f"all providers for role {role!r} failed: {detail}")
