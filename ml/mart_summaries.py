"""What the Dagster UI shows of the model-performance marts: a markdown table of their latest rows
and a small, stable set of figures it can plot across materializations.

The marts (dbt_project/models/marts) are ``model_performance`` (one row per model name, model
version and UTC day) and ``experiment_arms`` (one row per experiment, arm and model version). Both
carry the counts behind each rate, so the figures here pool rows by summing counts, never by
averaging rates.

Figures (metric names in ``METRICS``):

- ``model_performance``: for each of the ``max_versions`` busiest (model, version) pairs of the
  last ``figure_days`` days of the mart (its last day and the days before it, not today's date, so
  a quiet warehouse still shows its last week), ``<metric>_7d__<model>_v<version>``, e.g.
  ``mean_quality_score_7d__support-bot_v3``; plus ``model_versions`` (pairs in the table window).
- ``experiment_arms``: for the latest experiment (highest id), ``<metric>__<arm>``, e.g.
  ``thumbs_up_rate__treatment``, pooled over the arm's versions; plus ``experiment_id`` (which
  experiment the per-arm figures describe) and ``experiments`` (experiments in the mart).

A figure whose rate has an empty denominator (no thumbs given, nothing audited, ...) is left out
rather than reported as 0. The queries read only the mart table and are bounded by LIMIT.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import duckdb

# the plotted metrics, in the order the tables show them: name -> SQL pooling the mart's counts
METRICS: dict[str, str] = {
    "interactions": "sum(interactions)",
    "thumbs_up_rate": "sum(thumbs_up) / nullif(sum(thumbs_given), 0)",
    "handoff_rate": "sum(handoffs) / nullif(sum(handoff_signals), 0)",
    "auditor_error_rate": "sum(audited_errors) / nullif(sum(audited), 0)",
    "mean_quality_score": "sum(mean_quality_score * scored) / nullif(sum(scored), 0)",
}

PERFORMANCE_DAYS = 14
FIGURE_DAYS = 7
MAX_VERSIONS = 5
MAX_PERFORMANCE_ROWS = 100
EXPERIMENTS = 5
MAX_ARM_ROWS = 50

# columns of the markdown tables: (mart column, header, kind)
_METRIC_COLUMNS = [
    ("interactions", "interactions", "int"),
    ("thumbs_up_rate", "thumbs up", "rate"),
    ("thumbs_given", "thumbs given", "int"),
    ("mean_rating", "mean rating", "num"),
    ("ratings_given", "ratings", "int"),
    ("handoff_rate", "handoff", "rate"),
    ("auditor_error_rate", "auditor errors", "rate"),
    ("audited", "audited", "int"),
    ("mean_quality_score", "quality", "num3"),
]
_PERFORMANCE_COLUMNS = [("day", "day", "text"), ("model_name", "model", "text"),
                        ("model_version", "version", "text"), *_METRIC_COLUMNS]
_ARM_COLUMNS = [("experiment_id", "experiment", "text"), ("arm", "arm", "text"),
                ("model_version", "version", "text"), *_METRIC_COLUMNS,
                ("first_ts", "first reply", "text"), ("last_ts", "last reply", "text")]


@dataclass(frozen=True)
class MartSummary:
    """A mart's latest rows as markdown, numeric figures to plot, and short text notes."""

    markdown: str
    figures: dict[str, int | float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "rate":
        return f"{100 * value:.1f}%"
    if kind == "num":
        return f"{value:.2f}"
    if kind == "num3":
        return f"{value:.3f}"
    if kind == "int":
        return str(int(value))
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[tuple[str, str, str]],
                   rows: Iterable[dict[str, Any]]) -> str:
    """A GitHub-style markdown table of ``rows`` (dicts) with ``columns`` (key, header, kind);
    kind: rate (percent), num (2 decimals), num3, int, text. None shows as an en dash."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---:" if k in ("rate", "num", "num3", "int") else "---"
                            for _, _, k in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c], k) for c, _, k in columns) + " |")
    return "\n".join(lines)


def metric_key(metric: str, label: str) -> str:
    """``<metric>__<label>`` with every character of the label outside [A-Za-z0-9_.-] made ``_``
    (a stable metadata key the Dagster UI plots)."""
    return f"{metric}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}"


def version_label(model_name: str, model_version: str) -> str:
    """``<model>_v<version>`` for a numeric registry version, else ``<model>_<version>``."""
    version = f"v{model_version}" if str(model_version).isdigit() else str(model_version)
    return f"{model_name}_{version}"


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict]:
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _pooled(select_keys: str) -> str:
    return ", ".join([select_keys] + [f"{sql} AS {name}" for name, sql in METRICS.items()])


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def model_performance_summary(con: duckdb.DuckDBPyConnection, relation: str, *,
                              days: int = PERFORMANCE_DAYS, figure_days: int = FIGURE_DAYS,
                              max_versions: int = MAX_VERSIONS,
                              max_rows: int = MAX_PERFORMANCE_ROWS) -> MartSummary:
    """The last ``days`` days of ``relation`` (the model_performance table, e.g.
    ``"analytics"."model_performance"``) per model version, newest first, at most ``max_rows``
    rows; figures per (model, version) pooled over the last ``figure_days`` days."""
    days, figure_days = _positive("days", days), _positive("figure_days", figure_days)
    max_versions, max_rows = _positive("max_versions", max_versions), _positive("max_rows",
                                                                                 max_rows)
    (last_day,) = con.execute(f"SELECT max(day) FROM {relation}").fetchone()
    if last_day is None:
        return MartSummary("No interactions in the warehouse yet.", {"model_versions": 0})
    window = _rows(con, f"""
        SELECT * FROM {relation} WHERE day > ?::DATE - {days}
        ORDER BY day DESC, model_name, model_version LIMIT {max_rows + 1}""", [last_day])
    first_day = min(r["day"] for r in window[:max_rows])
    title = (f"Last {days} days of model_performance ({first_day} to {last_day}), per model "
             f"version, newest first")
    if len(window) > max_rows:
        title += f"; the first {max_rows} rows"
    (versions,) = con.execute(
        f"SELECT count(DISTINCT (model_name, model_version)) FROM {relation} "
        f"WHERE day > ?::DATE - {days}", [last_day]).fetchone()
    figures: dict[str, int | float] = {"model_versions": int(versions)}
    for row in _rows(con, f"""
            SELECT {_pooled('model_name, model_version')} FROM {relation}
            WHERE day > ?::DATE - {figure_days}
            GROUP BY model_name, model_version
            ORDER BY interactions DESC, model_name, model_version LIMIT {max_versions}""",
                     [last_day]):
        label = version_label(row["model_name"], row["model_version"])
        for name in METRICS:
            if row[name] is not None:
                value = int(row[name]) if name == "interactions" else float(row[name])
                figures[metric_key(f"{name}_{figure_days}d", label)] = value
    return MartSummary(f"{title}.\n\n{markdown_table(_PERFORMANCE_COLUMNS, window[:max_rows])}",
                       figures, {"last_day": str(last_day)})


def experiment_arms_summary(con: duckdb.DuckDBPyConnection, relation: str, *,
                            experiments: int = EXPERIMENTS,
                            max_rows: int = MAX_ARM_ROWS) -> MartSummary:
    """Every arm of the last ``experiments`` experiments of ``relation`` (the experiment_arms
    table), newest experiment first, at most ``max_rows`` rows; figures per arm of the latest
    experiment, pooled over its versions."""
    experiments, max_rows = _positive("experiments", experiments), _positive("max_rows", max_rows)
    (count, latest) = con.execute(
        f"SELECT count(DISTINCT experiment_id), max(experiment_id) FROM {relation}").fetchone()
    if not count:
        return MartSummary("No served experiment traffic yet: the learnloop serving API tags "
                           "the replies an experiment routes ('experiment:<id>', 'arm:<arm>').",
                           {"experiments": 0})
    rows = _rows(con, f"""
        SELECT * FROM {relation}
        WHERE experiment_id IN (SELECT DISTINCT experiment_id FROM {relation}
                                ORDER BY experiment_id DESC LIMIT {experiments})
        ORDER BY experiment_id DESC, arm, model_version LIMIT {max_rows + 1}""")
    shown = len({r["experiment_id"] for r in rows[:max_rows]})
    plural = "s" if shown != 1 else ""
    title = f"Arms of the last {shown} experiment{plural} of {count}, newest first"
    if len(rows) > max_rows:
        title += f"; the first {max_rows} rows"
    figures: dict[str, int | float] = {"experiments": int(count), "experiment_id": int(latest)}
    for row in _rows(con, f"""
            SELECT {_pooled('arm')} FROM {relation} WHERE experiment_id = ?
            GROUP BY arm ORDER BY arm NULLS LAST LIMIT 10""", [latest]):
        for name in METRICS:
            if row[name] is not None:
                value = int(row[name]) if name == "interactions" else float(row[name])
                figures[metric_key(name, str(row["arm"]))] = value
    return MartSummary(f"{title}.\n\n{markdown_table(_ARM_COLUMNS, rows[:max_rows])}", figures)
