"""The LLM Auditor: the versioned auditor prompt + the conversation, sent through a role's
``ml.llm.Router``, answered as a validated :class:`~ml.audit.taxonomy.Verdict`.

A per-interaction failure (every provider of the role failed: HTTP errors, timeouts, rate limits,
unusable replies, malformed JSON after the repair retry; or the row itself cannot be rendered, e.g.
its ``messages`` column is not valid JSON) is returned as an :class:`AuditFailure` with the reason,
never dropped: the caller records it as a failed ``AuditAttempt`` and the next run retries it.
Each failure is classified (:mod:`ml.audit.failures`): only request-specific ones count toward
the retry cap; an outage is retried on every run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from ml.audit.failures import ROW_FAILURES, classify_failure
from ml.audit.taxonomy import Verdict
from ml.conversation import RowInputError, clip, render_conversation
from ml.llm import LLMRequest, ProviderError, Router, redact
from ml.prompts import Prompt, load_prompt
from ml.tables import TABLES

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class AuditFailure:
    interaction_id: str
    tenant_id: str
    reason: str
    # request-specific (counts toward max_attempts) or an outage (retried every run, not
    # counted); see ml.audit.failures.classify_failure. The stored reason gets the class prefix
    # (ml.audit.failures.tag_reason).
    counted: bool = False


@dataclass
class AuditOutcome:
    verdicts: pl.DataFrame  # the audited_errors columns (ml.tables)
    failures: list[AuditFailure] = field(default_factory=list)


def evidence_text(row: dict[str, Any]) -> str:
    """Signals from the logs that help the judge (feedback, handoff, a human's correction)."""
    parts = []
    if row.get("feedback_thumbs"):
        parts.append(f"user feedback: thumbs {row['feedback_thumbs']}")
    if row.get("feedback_rating") is not None:
        parts.append(f"user rating: {row['feedback_rating']}/5")
    if row.get("feedback_comment"):
        parts.append(f"user comment: {clip(str(row['feedback_comment']))!r}")
    if row.get("requested_human"):
        parts.append("the user asked for a human agent")
    if row.get("corrected_response"):
        parts.append(f"a human agent replied instead: {clip(str(row['corrected_response']))!r}")
    return "; ".join(parts) if parts else "none"


class LLMAuditor:
    """Audit interactions with an LLM through ``router`` (``ml.llm.from_env("auditor")``)."""

    def __init__(self, router: Router, prompt: Prompt | None = None, *, max_tokens: int = 400):
        self.router = router
        self.prompt = prompt or load_prompt("auditor")
        self.max_tokens = max_tokens

    @property
    def name(self) -> str:
        """Stable identity for idempotency: the configured providers and models, in order."""
        slots = ",".join(f"{p.name}/{p.model}" for p in self.router.providers)
        return f"llm:{slots}"[:128]

    @property
    def prompt_version(self) -> str:
        return self.prompt.version

    def build_request(self, row: dict[str, Any]) -> LLMRequest:
        iid = str(row.get("interaction_id"))
        messages = self.prompt.render(
            conversation=render_conversation(row.get("messages"), row.get("user_message"), iid),
            response=clip(row.get("response") or ""),
            evidence=evidence_text(row),
        )
        return LLMRequest(messages=messages, temperature=0.0, max_tokens=self.max_tokens,
                          response_schema=Verdict,
                          metadata={"interaction_id": iid, "prompt_version": self.prompt_version})

    def audit_one(self, row: dict[str, Any]) -> tuple[Verdict, str]:
        """(verdict, provider that answered); raises ``ProviderError`` when every provider fails
        and :class:`RowInputError` when the row cannot be rendered into a request."""
        response = self.router.complete(self.build_request(row))
        return Verdict.model_validate(response.parsed), response.provider

    def audit_frame(self, frame: pl.DataFrame, *, now: datetime | None = None,
                    on_item: Callable[[str, bool], None] | None = None) -> AuditOutcome:
        """Audit every row of ``frame``; per-row failures (:data:`ROW_FAILURES`) are collected as
        :class:`AuditFailure` with the reason, not raised, and the other rows proceed.

        The rows' requests go out side by side (``Router.complete_many``: at most each
        provider's ``concurrency`` at once); verdicts, failures and ``on_item`` calls come in the
        frame's row order, as they would one row at a time."""
        stamp = (now or datetime.now(UTC)).replace(tzinfo=None)
        rows = list(frame.iter_rows(named=True))
        answers: list[Any] = [None] * len(rows)
        to_send: list[int] = []
        requests: list[LLMRequest] = []
        for i, row in enumerate(rows):
            try:
                requests.append(self.build_request(row))
            except RowInputError as exc:
                answers[i] = exc
                continue
            to_send.append(i)
        for i, answer in zip(to_send, self.router.complete_many(requests), strict=True):
            answers[i] = answer
        verdicts: list[dict[str, Any]] = []
        failures: list[AuditFailure] = []
        for row, answer in zip(rows, answers, strict=True):
            iid, tenant = row["interaction_id"], row.get("tenant_id") or "default"
            if isinstance(answer, ROW_FAILURES):
                kind = classify_failure(answer)
                reason = (str(answer) if isinstance(answer, ProviderError)
                          else f"{type(answer).__name__}: {redact(answer)}")
                if not isinstance(answer, ProviderError):  # the router logged the provider failures
                    log.warning("audit of %s failed (%s): %s", iid, kind.why, reason)
                failures.append(AuditFailure(iid, tenant, reason, kind.counted))
                if on_item:
                    on_item(iid, False)
                continue
            verdict = Verdict.model_validate(answer.parsed)
            verdicts.append({
                "interaction_id": iid, "tenant_id": tenant,
                "partition_date": row.get("partition_date"),
                "auditor": self.name, "prompt_version": self.prompt_version,
                "is_error": verdict.is_error, "category": verdict.category,
                "severity": verdict.severity, "confidence": verdict.confidence,
                "explanation": verdict.explanation, "signals": [],
                "answered_by": answer.provider, "audited_at": stamp,
            })
            if on_item:
                on_item(iid, True)
        return AuditOutcome(pl.DataFrame(verdicts, schema=verdict_schema()), failures)


def verdict_schema() -> dict[str, pl.DataType]:
    """The polars schema of the ``audited_errors`` table (``ml.tables``)."""
    return TABLES["audited_errors"].polars_schema()
