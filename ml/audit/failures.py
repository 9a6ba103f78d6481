"""Why one interaction failed, for the retry cap of the auditor and the teacher.

A failure is either

* **request-specific** (``counted``): this interaction's own request cannot be processed, so
  retrying it forever would only spend money. The row's data is malformed
  (:class:`~ml.conversation.RowInputError`), or *every* provider of the role rejected this request
  (HTTP 400/413/422, :data:`ml.llm.reliability.REQUEST_REJECTED_STATUS`; kind ``unusable
  response``; kind ``bad request``), or its reply stayed invalid JSON after the repair retry
  (``StructuredOutputError``). These count toward ``max_attempts``; at the cap the interaction
  is *given up*.
* **an outage** (not counted): anything else. Rate limits, 5xx, timeouts, connection errors
  (``TransientProviderError``), an open circuit breaker (``CircuitOpenError``), 401/403/404
  (key, permission or model name: configuration, every request fails the same way), unexpected
  provider exceptions, a role with no provider, and a mix (one provider rejected the request,
  another was down: the other may well answer it next run). These are recorded as failed with
  the reason and retried on every run, however long the outage lasts.

The stored reason starts with :data:`REQUEST_PREFIX` or :data:`OUTAGE_PREFIX`
(:func:`tag_reason`), so a reader of ``audit_attempts`` / ``teacher_attempts`` sees which kind it
was, and :func:`reason_counted` reads it back.

``ml.llm.ProviderError.failures`` carries each provider's exception class name and, for a
``ProviderCallError``, its ``kind`` and HTTP ``status_code`` as fields, which
:func:`provider_failure_counted` reads. A failure built without them falls back to parsing the
message (``"<provider>: <kind>[ (HTTP <status>)]: <text>"``); one it cannot read is treated as
an outage: retried, never lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ml.conversation import RowInputError
from ml.llm.errors import (
    PermanentProviderError,
    ProviderError,
    ProviderFailure,
    StructuredOutputError,
)
from ml.llm.reliability import REQUEST_REJECTED_STATUS

# what one row may raise without stopping the others: every provider of the role failed (unusable
# replies and unexpected provider exceptions included), or the row's own data is malformed.
# Configuration and prompt errors are not in here: they stop the run.
ROW_FAILURES: tuple[type[Exception], ...] = (ProviderError, RowInputError)

REQUEST_PREFIX = "[request] "  # counted toward max_attempts
OUTAGE_PREFIX = "[outage] "  # retried on every run, not counted

# kinds of PermanentProviderError that reject this request whatever its HTTP status (if any)
REQUEST_KINDS = frozenset({"unusable response", "bad request"})

_CALL_MESSAGE = re.compile(r"^(?P<kind>[^:()]+?)(?: \(HTTP (?P<status>\d{3})\))?: ")


@dataclass(frozen=True)
class FailureClass:
    counted: bool  # request-specific: counts toward max_attempts
    why: str  # short label for logs ("request rejected", "outage")

    @property
    def prefix(self) -> str:
        return REQUEST_PREFIX if self.counted else OUTAGE_PREFIX


REQUEST = FailureClass(True, "request-specific")
OUTAGE = FailureClass(False, "outage")


def _call_error_counted(kind: str, status: int | None) -> bool:
    return kind in REQUEST_KINDS or (status is not None and status in REQUEST_REJECTED_STATUS)


def provider_failure_counted(failure: ProviderFailure) -> bool:
    """Whether one provider's failure (an entry of ``ProviderError.failures``) rejects this
    request only (see the module doc)."""
    if failure.error_type == StructuredOutputError.__name__:
        return True
    if failure.error_type != PermanentProviderError.__name__:
        return False  # TransientProviderError, CircuitOpenError, anything unknown
    if failure.kind is not None:  # the router records kind and status as fields
        return _call_error_counted(failure.kind, failure.status_code)
    # a failure built without the fields (e.g. by hand): read them from the message
    head = f"{failure.provider}: "
    if not failure.message.startswith(head):
        return False
    m = _CALL_MESSAGE.match(failure.message[len(head):])
    if m is None:
        return False
    return _call_error_counted(m["kind"].strip(), int(m["status"]) if m["status"] else None)


def classify_failure(exc: BaseException) -> FailureClass:
    """:data:`REQUEST` (counts toward ``max_attempts``) or :data:`OUTAGE` (retried every run)."""
    if isinstance(exc, RowInputError):
        return REQUEST
    if isinstance(exc, ProviderError):
        if exc.failures and all(provider_failure_counted(f) for f in exc.failures):
            return REQUEST
        return OUTAGE
    if isinstance(exc, StructuredOutputError):
        return REQUEST
    if isinstance(exc, PermanentProviderError):
        return REQUEST if _call_error_counted(exc.kind, exc.status_code) else OUTAGE
    return OUTAGE  # TransientProviderError, CircuitOpenError, anything unexpected


def tag_reason(reason: str, counted: bool) -> str:
    """``reason`` as stored: with the prefix of its class (``counted``: request-specific)."""
    return (REQUEST_PREFIX if counted else OUTAGE_PREFIX) + reason


def reason_counted(reason: str | None) -> bool | None:
    """True for a request-specific reason, False for an outage, None for a reason without a prefix
    (written before failures were classified, or not a failure)."""
    if reason is None:
        return None
    if reason.startswith(REQUEST_PREFIX):
        return True
    if reason.startswith(OUTAGE_PREFIX):
        return False
    return None
