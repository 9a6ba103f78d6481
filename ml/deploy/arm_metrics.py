"""Per-arm figures of an A/B experiment, read from the warehouse (DuckDB, read-only SQL on the
connection passed in).

An interaction belongs to experiment ``<id>`` when its ``tags`` hold ``experiment:<id>``, and to
an arm by ``arm:control`` or ``arm:treatment`` (the service tags what it routed). An interaction
tagged with both arms, or with neither, is left out: it cannot be attributed.

Per arm: ``n`` interactions; thumbs (``feedback_thumbs`` 'up' of 'up'/'down'); ratings
(``feedback_rating``: sum, sum of squares, count); handoffs (``requested_human`` true of the rows
where it is not NULL); auditor errors (one verdict per interaction, whatever the auditor: the
latest by ``audited_at``, an error on a tie; ``audited`` counts interactions with a verdict);
quality (``interaction_quality.quality_score``: sum, sum of squares, count). A table that does not
exist yet (``interaction_quality``, ``audited_errors`` before their first run, or
``interactions`` itself) counts as no data, not as an error.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import duckdb

from ml.deploy.experiment import ArmStats
from ml.warehouse import table_exists

_EMPTY_QUALITY = ("(SELECT NULL::VARCHAR AS tenant_id, NULL::VARCHAR AS interaction_id, "
                  "NULL::DOUBLE AS quality_score WHERE false)")
_EMPTY_VERDICTS = ("(SELECT NULL::VARCHAR AS tenant_id, NULL::VARCHAR AS interaction_id, "
                   "NULL::BOOLEAN AS is_error WHERE false)")
_VERDICTS = ("(SELECT tenant_id, interaction_id, is_error FROM audited_errors "
             "WHERE is_error IS NOT NULL "
             "QUALIFY row_number() OVER (PARTITION BY tenant_id, interaction_id "
             "ORDER BY audited_at DESC NULLS LAST, is_error DESC) = 1)")


def experiment_tag(experiment_id: int) -> str:
    """The tag served interactions of the experiment carry."""
    if isinstance(experiment_id, bool) or not isinstance(experiment_id, int):
        raise ValueError(f"experiment_id must be an int, got {experiment_id!r}")
    return f"experiment:{experiment_id}"


def _naive_utc(ts: datetime) -> datetime:
    """The warehouse's ``ts`` is naive UTC: an aware ``since`` is converted, a naive one is taken
    as UTC."""
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def arm_stats(con: duckdb.DuckDBPyConnection, *, experiment_id: int, control_version: str,
              treatment_version: str, since: datetime | None = None
              ) -> tuple[ArmStats, ArmStats]:
    """(control, treatment) figures of experiment ``experiment_id`` over its interactions with
    ``ts >= since`` (all of them when ``since`` is None). The versions only label the arms."""
    control = ArmStats(arm="control", version=str(control_version))
    treatment = ArmStats(arm="treatment", version=str(treatment_version))
    tag = experiment_tag(experiment_id)
    if not table_exists(con, "interactions"):
        return control, treatment
    quality = "interaction_quality" if table_exists(con, "interaction_quality") \
        else _EMPTY_QUALITY
    verdicts = _VERDICTS if table_exists(con, "audited_errors") else _EMPTY_VERDICTS
    params: list = [tag]
    since_sql = ""
    if since is not None:
        since_sql = " AND ts >= ?"
        params.append(_naive_utc(since))
    sql = f"""
        WITH tagged AS (
            SELECT tenant_id, interaction_id, feedback_thumbs, feedback_rating, requested_human,
                   CASE WHEN list_contains(tags, 'arm:treatment') THEN 'treatment'
                        ELSE 'control' END AS arm
            FROM interactions
            WHERE list_contains(tags, ?)
              AND (list_contains(tags, 'arm:control') <> list_contains(tags, 'arm:treatment'))
              {since_sql}
        )
        SELECT t.arm,
               count(*) AS n,
               count(*) FILTER (WHERE t.feedback_thumbs = 'up') AS thumbs_up,
               count(*) FILTER (WHERE t.feedback_thumbs IN ('up', 'down')) AS thumbs_n,
               coalesce(sum(t.feedback_rating::DOUBLE), 0) AS rating_sum,
               coalesce(sum(t.feedback_rating::DOUBLE * t.feedback_rating), 0) AS rating_sumsq,
               count(t.feedback_rating) AS rating_n,
               count(*) FILTER (WHERE t.requested_human) AS handoffs,
               count(t.requested_human) AS handoff_n,
               count(*) FILTER (WHERE v.is_error) AS errors,
               count(v.is_error) AS audited,
               coalesce(sum(q.quality_score), 0) AS quality_sum,
               coalesce(sum(q.quality_score * q.quality_score), 0) AS quality_sumsq,
               count(q.quality_score) AS quality_n
        FROM tagged t
        LEFT JOIN {quality} q USING (tenant_id, interaction_id)
        LEFT JOIN {verdicts} v USING (tenant_id, interaction_id)
        GROUP BY t.arm
    """
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    arms = {"control": control, "treatment": treatment}
    for row in cur.fetchall():
        values = dict(zip(names, row, strict=True))
        target = arms[values.pop("arm")]
        for key, value in values.items():
            setattr(target, key, float(value) if key.endswith(("_sum", "_sumsq")) else int(value))
    # replace() runs ArmStats' checks again on the counts read (thumbs_up <= thumbs_n, ...)
    return replace(control), replace(treatment)


def experiment_interaction_count(con: duckdb.DuckDBPyConnection, experiment_id: int) -> int:
    """How many warehouse interactions carry the experiment's tag (either arm): a cheap cursor
    for a sensor (0 when the table does not exist yet)."""
    tag = experiment_tag(experiment_id)
    if not table_exists(con, "interactions"):
        return 0
    row = con.execute("SELECT count(*) FROM interactions WHERE list_contains(tags, ?)",
                      [tag]).fetchone()
    return int(row[0]) if row else 0


__all__ = ["arm_stats", "experiment_interaction_count", "experiment_tag"]
