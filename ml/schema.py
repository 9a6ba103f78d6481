"""The interaction record: the contract for raw logs (DESIGN.md, "The interaction record").

One JSON object per assistant turn. ``InteractionRecord`` validates one record (the collector, the
importers and the naive baseline use it); ``ml.ingest`` validates whole files with vectorized
expressions that accept and reject exactly what this model does (a test checks they agree).

The flat column layout of the warehouse table ``interactions`` is in the table registry,
``ml.tables``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROLES = ("system", "user", "assistant", "tool")
MAX_TEXT = 200_000  # characters in one message/response; longer is rejected, not truncated


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Part):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_TEXT)


class ModelInfo(_Part):
    provider: str | None = None
    name: str | None = None
    version: str | None = None


class Tokens(_Part):
    prompt: int | None = Field(default=None, ge=0)
    completion: int | None = Field(default=None, ge=0)


class Feedback(_Part):
    rating: int | None = Field(default=None, ge=1, le=5)
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(default=None, max_length=MAX_TEXT)


class Signals(_Part):
    user_continued: bool | None = None
    completed_action: bool | None = None
    requested_human: bool | None = None
    abandoned: bool | None = None
    accepted: bool | None = None
    modified: bool | None = None
    time_to_first_use_s: float | None = Field(default=None, ge=0)


class HumanCorrection(_Part):
    agent_id: str | None = None
    corrected_response: str = Field(min_length=1, max_length=MAX_TEXT)
    reason: str | None = None
    category: str | None = None


class Metadata(_Part):
    intent: str | None = None
    language: str | None = None
    tags: list[str] = Field(default_factory=list)


class InteractionRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    interaction_id: str = Field(min_length=1, max_length=256)
    tenant_id: str = Field(default="default", min_length=1, max_length=128)
    session_id: str = Field(min_length=1, max_length=256)
    turn_index: int | None = Field(default=None, ge=0)
    timestamp: datetime
    channel: str | None = None
    model: ModelInfo | None = None
    messages: list[Message] = Field(default_factory=list)
    response: str | None = Field(default=None, max_length=MAX_TEXT)
    latency_ms: float | None = Field(default=None, ge=0)
    tokens: Tokens | None = None
    retrieval: list[dict | str] | None = None
    feedback: Feedback | None = None
    signals: Signals | None = None
    human_correction: HumanCorrection | None = None
    metadata: Metadata | None = None

    @field_validator("timestamp", mode="after")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _has_text(self) -> InteractionRecord:
        if not self.messages and self.response is None:
            raise ValueError("record has neither `messages` nor `response`")
        return self


class RecordError(ValueError):
    """A record failed validation; ``reason`` names the field(s) and what is wrong."""

    def __init__(self, reason: str, interaction_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.interaction_id = interaction_id


def describe_validation_error(exc: ValidationError) -> str:
    """Turn a pydantic error into one line naming each bad field: `field.path: message`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate_record(obj: object) -> InteractionRecord:
    """Validate one decoded JSON value; raise ``RecordError`` naming what is wrong."""
    if not isinstance(obj, dict):
        raise RecordError(f"record is a JSON {type(obj).__name__}, expected an object")
    iid = obj.get("interaction_id") if isinstance(obj.get("interaction_id"), str) else None
    try:
        return InteractionRecord.model_validate(obj)
    except ValidationError as exc:
        raise RecordError(describe_validation_error(exc), iid) from None
