"""Which interactions get audited (``audit_candidates``): a pure function over frames.

Reasons an interaction is selected:

* ``negative_feedback``: thumbs down or a rating of 2 or less (the turn's own feedback);
* ``low_conversation_rating``: the user rated the whole conversation ``conversation_rating`` 2 or
  less, and did not rate this turn well (thumbs up or a rating of 4 or more): weak evidence, the
  auditor decides (``ml.audit.rules``: alone it never flags a reply);
* ``handoff``: the user asked for a human;
* ``low_quality``: ``quality_score`` below ``quality_threshold``;
* ``human_correction``: a human agent corrected the reply;
* ``calibration``: a seeded random share (``calibration_rate``) of the rest, so the auditor's
  precision and recall can be estimated on interactions no signal pointed at. The draw is a hash of
  (seed, interaction_id), so an interaction is in the sample or not the same way on every run;
* ``manual``: named by the manual audit job (interaction ids, session ids or a time range);
* ``retry``: a previous attempt by the same auditor and prompt version failed and the
  interaction is not given up. Only request-specific failures count (:mod:`ml.audit.failures`):
  an interaction whose request failed that way ``max_attempts`` times (e.g. a request the
  provider rejects with HTTP 400 every time) is *given up*: no longer selected by the scheduled
  audit (:func:`given_up` lists them for the run's metadata); a manual audit that names it still
  audits it. A failure during an outage (5xx, 429, timeout, breaker open, auth errors) is not
  counted, so however long the outage, the interaction is retried on every run.

Interactions already audited successfully by the same auditor and prompt version (an
``AuditAttempt`` with status ``ok``) are excluded: auditing is idempotent.

Every candidate row carries the ``run_id`` of the Dagster run that selected it, so two runs that
overlap (the hourly job between the two steps of a manual one) each audit their own selection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from ml.audit.failures import REQUEST_PREFIX

DEFAULT_MAX_ATTEMPTS = 5
REASONS = ("negative_feedback", "low_conversation_rating", "handoff", "low_quality",
           "human_correction", "calibration", "manual", "retry")


@dataclass(frozen=True)
class CandidateConfig:
    quality_threshold: float = 0.5
    conversation_rating_threshold: int = 2  # conversation_rating at or below this is selected
    calibration_rate: float = 0.05
    seed: int = 0
    # request-specific failed attempts after which an item is given up (outages do not count)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # manual selection (any of these set = audit exactly the interactions that match them)
    interaction_ids: Sequence[str] = field(default_factory=tuple)
    session_ids: Sequence[str] = field(default_factory=tuple)
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.calibration_rate <= 1.0:
            raise ValueError(f"calibration_rate must be in [0, 1], got {self.calibration_rate}")
        if not 0.0 <= self.quality_threshold <= 1.0:
            raise ValueError(f"quality_threshold must be in [0, 1], got {self.quality_threshold}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.since and self.until and _naive_utc(self.since) > _naive_utc(self.until):
            raise ValueError(f"since ({self.since}) is after until ({self.until})")

    @property
    def manual(self) -> bool:
        return bool(self.interaction_ids or self.session_ids or self.since or self.until)


def selection_fingerprint(auditor: str, prompt_version: str, config: CandidateConfig) -> str:
    """What a scheduled selection's decision to pass an interaction over depends on besides the
    interaction: the auditor, its prompt version and the selection settings. A change of any
    of them makes every interaction count as unseen again (``audit_passed_over``)."""
    c = config
    return (f"{auditor}|{prompt_version}|q<{c.quality_threshold!r}|"
            f"conv<={c.conversation_rating_threshold}|cal={c.calibration_rate!r}|seed={c.seed}")


def calibration_draw(ids: Sequence[str], seed: int | str) -> list[float]:
    """A uniform number in [0, 1) per id, stable across runs, processes and library versions."""
    prefix = f"{seed}:".encode()
    return [int.from_bytes(hashlib.blake2b(prefix + i.encode(), digest_size=8).digest(), "big")
            / 2.0 ** 64 for i in ids]


def _naive_utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def select_candidates(interactions: pl.DataFrame, attempts: pl.DataFrame | None = None, *,
                      auditor: str, prompt_version: str,
                      config: CandidateConfig = CandidateConfig(),
                      session_aliases: dict[str, str] | None = None,
                      now: datetime | None = None, run_id: str = "") -> pl.DataFrame:
    """The candidates (``CANDIDATE_COLUMNS``) among ``interactions``.

    ``interactions`` carries the ``interactions`` columns (``quality_score`` optional).
    ``attempts`` holds this auditor's and prompt version's ``AuditAttempt`` rows
    (``tenant_id``, ``interaction_id``, ``status``, optionally ``attempts``: failed ones at
    ``max_attempts`` or more are given up, see :func:`given_up`). An interaction is identified by
    (``tenant_id``, ``interaction_id``): ids are per tenant. ``session_aliases`` maps a session id as a user
    typed it to its stored (hashed) form, so the manual job accepts either. ``run_id`` tags every
    row with the run that selected it.
    """
    for needed in ("interaction_id",):
        if needed not in interactions.columns:
            raise ValueError(f"select_candidates: interactions lack column {needed!r}")
    df = interactions
    if "quality_score" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("quality_score"))
    for col, dtype in (("feedback_thumbs", pl.String), ("feedback_rating", pl.Int64),
                       ("conversation_rating", pl.Int64),
                       ("requested_human", pl.Boolean), ("corrected_response", pl.String),
                       ("tenant_id", pl.String), ("partition_date", pl.Date),
                       ("session_id", pl.String), ("ts", pl.Datetime("us"))):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(col))

    df = df.with_columns(pl.col("tenant_id").fill_null("default"))
    ok_keys = failed_keys = abandoned_keys = pl.DataFrame(schema=_KEY_SCHEMA)
    if attempts is not None and attempts.height:
        for needed in ("interaction_id", "status", "tenant_id"):
            if needed not in attempts.columns:
                raise ValueError(f"select_candidates: attempts lack column {needed!r}")
        ok_keys = attempts.filter(pl.col("status") == "ok").select(_KEY)
        abandoned_keys = _given_up_keys(attempts, config.max_attempts)
        failed_keys = attempts.filter(pl.col("status") == "failed").select(_KEY).join(
            abandoned_keys, on=_KEY, how="anti")

    c = config
    manual = pl.lit(False)
    if c.manual:
        manual = pl.lit(True)
        if c.interaction_ids:
            manual = manual & pl.col("interaction_id").is_in(list(c.interaction_ids))
        if c.session_ids:
            wanted = set(c.session_ids) | {(session_aliases or {}).get(s, s) for s in c.session_ids}
            manual = manual & pl.col("session_id").is_in(sorted(wanted))
        if c.since:
            manual = manual & (pl.col("ts") >= _naive_utc(c.since))
        if c.until:
            manual = manual & (pl.col("ts") < _naive_utc(c.until))
        manual = manual.fill_null(False)

    draws = pl.Series("_draw", calibration_draw(df["interaction_id"].to_list(), c.seed),
                      dtype=pl.Float64)
    df = df.with_columns(draws)
    flags = {
        "negative_feedback": ((pl.col("feedback_thumbs") == "down")
                              | (pl.col("feedback_rating") <= 2)).fill_null(False),
        "low_conversation_rating": (
            (pl.col("conversation_rating") <= c.conversation_rating_threshold).fill_null(False)
            & ~((pl.col("feedback_thumbs") == "up") | (pl.col("feedback_rating") >= 4))
            .fill_null(False)),
        "handoff": pl.col("requested_human").fill_null(False),
        "low_quality": (pl.col("quality_score") < c.quality_threshold).fill_null(False),
        "human_correction": pl.col("corrected_response").is_not_null(),
    }
    signalled = pl.lit(False)
    for e in flags.values():
        signalled = signalled | e
    flags["calibration"] = ~signalled & (pl.col("_draw") < c.calibration_rate)
    flags["manual"] = manual
    df = df.join(failed_keys.with_columns(pl.lit(True).alias("_retry")), on=_KEY, how="left",
                 maintain_order="left")
    flags["retry"] = pl.col("_retry").fill_null(False)

    reasons = pl.concat_list([pl.when(e).then(pl.lit(name)).otherwise(None)
                              for name, e in flags.items()]).list.drop_nulls()
    out = df.with_columns(reasons.alias("reasons"))
    if c.manual:  # the manual job audits exactly what it names (and what failed before, within it)
        out = out.filter(manual)
    out = out.filter(pl.col("reasons").list.len() > 0)
    out = out.join(ok_keys, on=_KEY, how="anti", maintain_order="left")
    if not c.manual:  # the scheduled audit stops asking; a manual run still may
        out = out.join(abandoned_keys, on=_KEY, how="anti", maintain_order="left")
    stamp = _naive_utc(now or datetime.now(UTC))
    return out.unique(_KEY, keep="first", maintain_order=True).select(
        pl.col("interaction_id"),
        pl.col("tenant_id"),
        pl.col("partition_date"),
        pl.col("reasons"),
        pl.lit(auditor).alias("auditor"),
        pl.lit(prompt_version).alias("prompt_version"),
        pl.lit(stamp, dtype=pl.Datetime("us")).alias("selected_at"),
        pl.lit(run_id, dtype=pl.String).alias("run_id"),
    )


def given_up(attempts: pl.DataFrame | None, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[str]:
    """Interactions whose audit failed request-specifically ``max_attempts`` times or more
    (status ``failed``): the scheduled audit no longer retries them. ``attempts`` without an
    ``attempts`` column (counts unknown) gives none.

    With a ``reason`` column (as :func:`attempts_frame` builds it), only a row whose last
    failure was request-specific (reason prefix ``[request]``, see :mod:`ml.audit.failures`) is
    given up: after an outage failure, or a reason written before failures were classified
    (whose count may include outage failures), the interaction is retried; a request-specific
    failure on that retry gives it up again."""
    return sorted(_given_up_keys(attempts, max_attempts)["interaction_id"].to_list())


_KEY = ["tenant_id", "interaction_id"]
_KEY_SCHEMA = {"tenant_id": pl.String, "interaction_id": pl.String}


def _given_up_keys(attempts: pl.DataFrame | None, max_attempts: int) -> pl.DataFrame:
    """(tenant_id, interaction_id) of the interactions :func:`given_up` names."""
    if attempts is None or attempts.height == 0 or "attempts" not in attempts.columns:
        return pl.DataFrame(schema=_KEY_SCHEMA)
    capped = (pl.col("status") == "failed") & (pl.col("attempts").fill_null(1) >= max_attempts)
    if "reason" in attempts.columns:
        capped = capped & pl.col("reason").fill_null("").str.starts_with(REQUEST_PREFIX)
    return attempts.filter(capped).select(_KEY).cast(_KEY_SCHEMA)


def retried_keys(attempts: pl.DataFrame | None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[tuple[str, str]]:
    """(tenant_id, interaction_id) of the ``failed`` attempts the scheduled audit retries: all
    but those :func:`given_up` names."""
    if attempts is None or attempts.height == 0:
        return []
    failed = attempts.filter(pl.col("status") == "failed").select(_KEY).cast(_KEY_SCHEMA)
    kept = failed.join(_given_up_keys(attempts, max_attempts), on=_KEY, how="anti")
    return [tuple(k) for k in kept.iter_rows()]


def reason_counts(candidates: pl.DataFrame) -> dict[str, int]:
    """How many candidates carry each reason (an interaction can carry several)."""
    counts = {r: 0 for r in REASONS}
    if candidates.height:
        for row in candidates["reasons"].explode().drop_nulls().value_counts().iter_rows():
            counts[row[0]] = int(row[1])
    return counts


def attempts_frame(rows: Sequence[tuple[str, str, str, int | None, str | None]]) -> pl.DataFrame:
    """(tenant_id, interaction_id, status, attempts, reason) rows of
    ``store.audit.attempt_rows`` as a frame (the reason's prefix says whether the last failure
    counted, see :func:`given_up`)."""
    return pl.DataFrame([tuple(r) for r in rows],
                        schema={"tenant_id": pl.String, "interaction_id": pl.String,
                                "status": pl.String, "attempts": pl.Int64, "reason": pl.String},
                        orient="row")
