"""Request and response models of the JSON API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.jsonbody import SURROGATE, encodable
from service.security import (
    MAX_BATCH_DECISIONS,
    MAX_FINAL_RESPONSE,
    MAX_NOTE,
    MAX_PASSWORD,
    MAX_TAG,
    MAX_TAGS_PER_REQUEST,
    MAX_USERNAME,
)

Decision = Literal["approve", "reject", "edit", "confirm", "dismiss"]


def _as_utc(v: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC, so say so (RFC 3339 needs it)
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


def _unicode_text(v: str) -> str:
    # JSON "\ud800" decodes to a str that cannot be stored or answered: refuse it by name (422)
    if not encodable(v):
        raise ValueError(SURROGATE)
    return v


Text = Annotated[str, AfterValidator(_unicode_text)]  # every free-text field of a request


class ErrorOut(BaseModel):
    detail: Any = Field(description="What went wrong (a message, or FastAPI's list of field errors)")


class ConflictOut(BaseModel):
    detail: str
    item_id: int
    your_version: int
    current_version: int | None


class MessageOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str | None = None
    content: str | None = None


class ItemSummary(BaseModel):
    id: int
    kind: str
    status: str
    version: int
    tenant_id: str
    interaction_id: str
    category: str | None
    severity: str | None
    confidence: float | None
    source: str | None
    tags: list[str]
    created_at: UtcDatetime
    decided_by: str | None
    decided_at: UtcDatetime | None


class ItemOut(ItemSummary):
    session_id: str | None
    parent_id: int | None
    messages: list[MessageOut] | None
    original_response: str | None
    explanation: str | None
    auditor: str | None
    prompt_version: str | None
    proposed_response: str | None
    final_response: str | None
    extra: dict[str, Any]
    updated_at: UtcDatetime


class ItemPage(BaseModel):
    items: list[ItemSummary]
    total: int
    offset: int
    limit: int


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Decision = Field(description="error items: confirm|dismiss (approve|reject accepted); "
                                           "sample items: approve|reject|edit")
    version: int = Field(ge=1, le=2**31 - 1, description="the item version you decided on")
    final_response: Text | None = Field(default=None, max_length=MAX_FINAL_RESPONSE,
                                       description="the edited reply (required for edit)")
    note: Text | None = Field(default=None, max_length=MAX_NOTE)


class BatchDecisionIn(DecisionIn):
    item_id: int = Field(ge=1, le=2**31 - 1)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decisions: list[BatchDecisionIn] = Field(min_length=1, max_length=MAX_BATCH_DECISIONS)


class BatchResult(BaseModel):
    item_id: int
    ok: bool
    code: Literal["ok", "conflict", "not_found", "invalid"]
    status: str | None
    version: int | None
    error: str | None


class BatchOut(BaseModel):
    results: list[BatchResult]
    decided: int
    conflicts: int


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1)
    add: list[Text] = Field(default_factory=list, max_length=MAX_TAGS_PER_REQUEST,
                           json_schema_extra={"items": {"type": "string", "maxLength": MAX_TAG}})
    remove: list[Text] = Field(default_factory=list, max_length=MAX_TAGS_PER_REQUEST,
                              json_schema_extra={"items": {"type": "string", "maxLength": MAX_TAG}})


class EventOut(BaseModel):
    id: int
    item_id: int
    tenant_id: str
    actor: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None
    at: UtcDatetime


class EventPage(BaseModel):
    events: list[EventOut]
    next_after_id: int = Field(description="pass as after_id to get the following events")


class Progress(BaseModel):
    today: int
    total: int
    remaining: int = Field(description="pending items in your tenants")


class ReviewerOut(BaseModel):
    id: int
    username: str
    role: str
    tenants: list[str]
    active: bool
    created_at: UtcDatetime | None


class MeOut(ReviewerOut):
    progress: Progress


class ReviewerCreated(ReviewerOut):
    api_token: str = Field(description="shown once; only its hash is stored")


class ReviewerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=MAX_USERNAME, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: Text = Field(min_length=8, max_length=MAX_PASSWORD)
    role: Literal["reviewer", "admin"] = "reviewer"
    tenants: list[Text] = Field(default_factory=list, max_length=100)


class ReviewerPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: bool | None = Field(default=None, description="false: sign-in, API token and open "
                                                          "sessions stop working; true: reactivate")
    role: Literal["reviewer", "admin"] | None = None
    tenants: list[Annotated[Text, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=100, description="replaces the tenant list ('*' = every tenant)")


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: Text = Field(min_length=8, max_length=MAX_PASSWORD)
    keep_token: bool = Field(default=False, description="true: keep the API token (a routine "
                                                        "change); by default it is replaced too")


class PasswordSet(ReviewerOut):
    api_token: str | None = Field(description="the reviewer's new API token, shown once (the "
                                              "old one stopped working); null with keep_token")


class ReviewerProgressOut(BaseModel):
    username: str
    role: str
    active: bool
    tenants: list[str]
    today: int = Field(description="decisions today (UTC)")
    total: int = Field(description="decisions in total")
    remaining: dict[str, int] = Field(description="pending items per tenant the reviewer sees")
    remaining_total: int


class AuditOut(BaseModel):
    id: int
    key: str = Field(description="what changed, e.g. reviewer:ann or collector_key:3")
    old_value: dict[str, Any] | None
    new_value: dict[str, Any] | None
    changed_by: str
    changed_at: UtcDatetime


class AuditPage(BaseModel):
    entries: list[AuditOut]
    next_after_id: int


class TokenOut(BaseModel):
    api_token: str


class CollectorKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")
    label: Text | None = Field(default=None, max_length=128)


class CollectorKeyOut(BaseModel):
    id: int
    tenant_id: str
    label: str | None
    active: bool
    created_at: UtcDatetime | None


class CollectorKeyCreated(CollectorKeyOut):
    key: str = Field(description="shown once; only its hash is stored")


class RecordResult(BaseModel):
    index: int
    interaction_id: str | None
    accepted: bool
    reason: str | None


class CollectorOut(BaseModel):
    accepted: int
    rejected: int
    results: list[RecordResult]
    files: list[str] = Field(description="landing files written (relative to the landing zone)")


# ---- samples: filters, tags, statistics (store.samples) -----------------------------------------
SampleStatus = Literal["pending", "approved", "rejected", "edited"]
FilterValue = Annotated[Text, Field(min_length=1, max_length=128)]
MAX_FILTER_VALUES = 100
MAX_TAG_IDS = 10_000


class SampleSummary(ItemSummary):
    quality: float | None = Field(description="the interaction's quality score (0-1)")
    intent: str | None = Field(description="the interaction's intent")
    interaction_at: UtcDatetime | None = Field(description="when the interaction happened")


class SamplePage(BaseModel):
    items: list[SampleSummary]
    total: int
    offset: int
    limit: int
    filter: dict[str, Any] = Field(description="the filter applied, as plain values")


class SampleFilterIn(BaseModel):
    """Which samples: every field optional; several values of one field match any of them, the
    fields combine with AND."""

    model_config = ConfigDict(extra="forbid")
    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(
        default=None, max_length=MAX_TAG_IDS)
    since: Text | None = Field(default=None, max_length=40,
                               description="YYYY-MM-DD (whole day, UTC) or an ISO 8601 datetime; "
                                           "on the interaction's time, else the item's creation")
    until: Text | None = Field(default=None, max_length=40, description="inclusive, like since")
    quality_min: float | None = Field(default=None, ge=0, le=1)
    quality_max: float | None = Field(default=None, ge=0, le=1)
    category: list[FilterValue] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    intent: list[FilterValue] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    source: list[FilterValue] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    tenant: list[FilterValue] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    tag: list[FilterValue] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    status: list[SampleStatus] | None = Field(default=None, max_length=4)


class SampleTagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: Text = Field(min_length=1, max_length=MAX_TAG)
    action: Literal["add", "remove"]
    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(
        default=None, max_length=MAX_TAG_IDS, description="these samples (with filter: those "
                                                          "of them that match it)")
    filter: SampleFilterIn | None = Field(default=None, description="the samples matching it")
    all: bool = Field(default=False, description="required to tag with an empty filter and no "
                                                 "ids (every sample in your tenants)")


class SampleTagsOut(BaseModel):
    tag: str
    action: Literal["tag", "untag"]
    matched: int = Field(description="samples the ids/filter selected in your tenants")
    changed: int = Field(description="samples changed (a new version and a review event each)")
    unchanged: int = Field(description="already in the wanted state: not touched")
    skipped: int = Field(description="changed by someone else meanwhile so that they no longer "
                                     "match: left as they are")


class QualityBin(BaseModel):
    bin: str
    low: float
    high: float
    count: int


class QualityStats(BaseModel):
    histogram: list[QualityBin] = Field(description="ten fixed bins 0.0-0.1 ... 0.9-1.0 (the "
                                                    "upper bound belongs to the next bin)")
    unknown: int = Field(description="samples without a quality score")
    known: int
    mean: float | None
    min: float | None
    max: float | None
    q1: float | None
    median: float | None
    q3: float | None


class SampleStatsOut(BaseModel):
    filter: dict[str, Any]
    total: int
    by_status: dict[str, int]
    decided: int = Field(description="approved + edited + rejected")
    approval_rate: float | None = Field(description="(approved + edited) / decided; null before "
                                                    "any decision")
    by_source: dict[str, int]
    by_category: dict[str, int] = Field(description='a missing value counts as "unknown"')
    by_intent: dict[str, int]
    by_tenant: dict[str, int]
    by_tag: dict[str, int] = Field(description="samples per tag")
    quality: QualityStats


# ---- datasets (read-only; store.datasets) -----------------------------------------------------
class DatasetOut(BaseModel):
    id: int
    kind: str = Field(description="training | eval_suite")
    name: str
    version: int = Field(description="ordinal within (kind, name)")
    version_hash: str | None = Field(description="content hash; any unique prefix of 4+ "
                                                 "characters names the version")
    parent_version: str | None
    status: str
    n_train: int
    n_validation: int
    n_eval: int
    n_retention: int
    spec: dict[str, Any]
    counts: dict[str, Any]
    stats: dict[str, Any]
    exports: dict[str, Any] = Field(description="format -> file or folder, relative to path")
    path: str | None
    checksum: str | None
    created_by: str | None
    created_at: UtcDatetime | None
