"""The interaction record: the contract for raw logs (DESIGN.md, "The interaction record").

One JSON object per assistant turn. ``InteractionRecord`` validates one record (the collector, the
importers and the naive baseline use it); ``ml.ingest`` validates whole files with vectorized
expressions that accept and reject exactly what this model does (a test checks they agree).

The flat column layout of the warehouse table ``interactions`` is in the table registry,
``ml.tables``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROLES = ("system", "user", "assistant", "tool")
# a corrected reply of only these characters is empty (the same set for Python ``re`` and the
# Rust regex of the vectorized ingest path: the characters themselves, no class shorthand)
BLANK_PATTERN = ("^[ \t\n\r\f\v\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
                 "\u3000\ufeff]*$")
BLANK_RE = re.compile(BLANK_PATTERN)
EMPTY_CORRECTION_NOTE = "human_correction dropped: corrected_response is empty"
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
    # the user's rating of the whole conversation (1-5), repeated on each of its turns; weaker
    # evidence about one reply than ``rating``/``thumbs`` (see docs/auditing.md)
    conversation_rating: int | None = Field(default=None, ge=1, le=5)


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
    # an empty (or blank) correction is accepted here and dropped by ``InteractionRecord`` with a
    # note, so the reply it was meant to correct is not lost with it
    corrected_response: str = Field(max_length=MAX_TEXT)
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

    @model_validator(mode="after")
    def _drop_empty_correction(self) -> InteractionRecord:
        hc = self.human_correction
        if hc is not None and BLANK_RE.match(hc.corrected_response):
            dropped = {k: getattr(hc, k) for k in HumanCorrection.model_fields
                       if getattr(hc, k) is not None}
            self.__pydantic_private__ = {"dropped_correction": dropped}
            self.human_correction = None
        return self

    @property
    def dropped_correction(self) -> dict | None:
        """The ``human_correction`` dropped because its ``corrected_response`` was empty."""
        private = self.__pydantic_private__ or {}
        return private.get("dropped_correction")


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


# ---- fields outside the contract ----------------------------------------------------------------

# the known keys of each part of the record (the models above are the single source)
_PARTS: dict[str, type[BaseModel]] = {
    "model": ModelInfo, "tokens": Tokens, "feedback": Feedback, "signals": Signals,
    "human_correction": HumanCorrection, "metadata": Metadata,
}


def unknown_fields(obj: dict) -> dict[str, object]:
    """The fields of a decoded record that the contract does not define, by path.

    ``{"source": ..., "feedback.reason": ..., "messages[2].name": ...}`` in the order they appear;
    ``retrieval`` is free-form and never has unknown fields. Ingest keeps them in the ``extra``
    column (JSON) instead of dropping them."""
    out: dict[str, object] = {}
    known = InteractionRecord.model_fields
    for key, value in obj.items():
        if key not in known:
            out[key] = value
        elif key in _PARTS and isinstance(value, dict):
            fields = _PARTS[key].model_fields
            for sub, v in value.items():
                if sub not in fields:
                    out[f"{key}.{sub}"] = v
        elif key == "messages" and isinstance(value, list):
            for i, m in enumerate(value):
                if isinstance(m, dict):
                    for sub, v in m.items():
                        if sub not in Message.model_fields:
                            out[f"messages[{i}].{sub}"] = v
    return out
