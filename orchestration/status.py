"""Counts per stage for `learnloop status`."""

from __future__ import annotations

from typing import Any

from ml import warehouse
from ml.config import Settings
from ml.registry import Registry


def collect_status(settings: Settings) -> dict[str, Any]:
    """Counts per stage. Stages not built yet report zeros or null. The store must be migrated
    (the CLI migrates it at start-up)."""
    from ml.audit.candidates import DEFAULT_MAX_ATTEMPTS
    from store.audit import attempt_counts
    from store.db import session_scope
    from store.repo import status_counts

    registry = Registry.from_settings(settings)
    with session_scope(settings.store) as session:
        counts = status_counts(session)
        audit_attempts = attempt_counts(session, DEFAULT_MAX_ATTEMPTS)
        deployment = deployment_status(registry, session)
    return {
        "interactions": warehouse.table_count(settings.warehouse_target, "interactions"),
        "quarantined": warehouse.table_count(settings.warehouse_target,
                                             "quarantined_interactions"),
        "scored": warehouse.table_count(settings.warehouse_target, "interaction_quality"),
        "errors": counts["errors"],
        "audit_attempts": audit_attempts,
        "teacher_attempts": teacher_attempt_counts(settings.warehouse_target,
                                                   DEFAULT_MAX_ATTEMPTS),
        "calibration": counts["calibration"],
        "samples": counts["samples"],
        "datasets": counts["datasets"],
        "eval_suite": counts["eval_suite"],
        # the MLflow model registry: name, versions, champion, challenger, latest (a SQLite
        # tracking store that does not exist yet is not created: zeros and None)
        "models": registry.summary(),
        # who serves: the aliases, the deployable versions, the running and the last experiment
        "deployment": deployment,
        "home": str(settings.home),
    }


def deployment_status(registry: Registry, session) -> dict[str, Any]:
    """``champion``, ``challenger``, ``deployable`` (the versions a rollback may return to),
    ``experiment`` (the running one with its latest result summary, or None) and
    ``last_experiment`` (the last decided one: decision, reason, versions, the primary metric
    of each arm; or None). Creates no tracking store."""
    from assets.lifecycle import deployment_state

    state = deployment_state(registry, session, history=0)
    return {k: state[k] for k in ("champion", "challenger", "deployable", "experiment",
                                  "last_experiment")}


def _deploy_line(d: dict[str, Any]) -> str:
    v = lambda x: f"v{x}" if x else "-"  # noqa: E731
    parts = [f"champion {v(d['champion'])}", f"challenger {v(d['challenger'])}",
             f"deployable {', '.join(v(x) for x in d['deployable']) or '-'}"]
    exp = d.get("experiment")
    if exp:
        summary = exp.get("summary") or {}
        arms = summary.get("arms") or {}
        sizes = "/".join(str((arms.get(a) or {}).get("n", 0)) for a in ("control", "treatment"))
        parts.append(f"experiment #{exp['id']} v{exp['challenger_version']} vs "
                     f"v{exp['champion_version']} at {exp['traffic_split']:.0%} (stage "
                     f"{exp['stage'] + 1}/{len(exp['stages'])}"
                     + (f", n {sizes}, last {summary.get('decision')}" if summary else "") + ")")
    last = d.get("last_experiment")
    if last:
        parts.append(f"last #{last['id']} {last['decision']}")
    return "  deploy     " + " · ".join(parts)


def teacher_attempt_counts(path, max_attempts: int) -> dict[str, Any]:
    """LLM teacher attempts (warehouse table ``teacher_attempts``): ``ok``, ``pending`` (failed,
    retried by the next run), ``given_up`` (failed ``max_attempts`` times request-specifically)
    and the latest failure's reason; zeros before any LLM teacher ran."""
    from ml.teacher import TEACHER_ATTEMPTS_TABLE

    out: dict[str, Any] = {"ok": 0, "pending": 0, "given_up": 0, "last_failure": None}
    if not warehouse.exists(path):
        return out
    con = warehouse.connect(path, read_only=True)
    try:
        if not warehouse.table_exists(con, TEACHER_ATTEMPTS_TABLE):
            return out
        cols = {r[0] for r in con.execute(f"DESCRIBE {TEACHER_ATTEMPTS_TABLE}").fetchall()}
        counted = "coalesce(counted_attempts, 0)" if "counted_attempts" in cols else "0"
        for status, exhausted, n in con.execute(
                f"SELECT status, {counted} >= ?, count(*) FROM {TEACHER_ATTEMPTS_TABLE} "
                f"GROUP BY ALL", [max_attempts]).fetchall():
            key = "ok" if status == "ok" else "given_up" if exhausted else "pending"
            out[key] += int(n)
        latest = con.execute(f"SELECT reason FROM {TEACHER_ATTEMPTS_TABLE} WHERE status = "
                             f"'failed' ORDER BY updated_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    if latest and latest[0]:
        out["last_failure"] = latest[0].strip().splitlines()[0][:300]
    return out


def format_status(st: dict[str, Any]) -> str:
    e, c, s, m = st["errors"], st["calibration"], st["samples"], st["models"]
    lines = [
        f"learnloop at {st['home']}",
        f"  ingest     interactions {st['interactions']:>9,}   quarantined {st['quarantined']:>7,}",
        f"  quality    scored       {st['scored']:>9,}",
        f"  audit      errors       pending {e['pending']:,} · confirmed {e['confirmed']:,} · "
        f"dismissed {e['dismissed']:,}",
        # "no error found" verdicts put to reviewers: confirmed = a reply the auditor missed
        f"             calibration  pending {c['pending']:,} · auditor missed {c['confirmed']:,} · "
        f"reply fine {c['dismissed']:,}",
        _attempts_line("audit", st["audit_attempts"]),
        f"  teaching   samples      pending {s['pending']:,} · approved {s['approved']:,} · "
        f"rejected {s['rejected']:,}",
        _attempts_line("teacher", st["teacher_attempts"]),
        f"  datasets   versions {st['datasets']:,} · eval suite "
        + (f"{ev['version'][:12]} ({ev['size']:,} items, retention {ev['retention']:,})"
           if (ev := st.get("eval_suite")) else "-"),
        f"  models     {m['name']}: versions {m['versions']:,} · latest {m['latest'] or '-'} · "
        f"champion {m['champion'] or '-'} · challenger {m['challenger'] or '-'}",
        _deploy_line(st["deployment"]),
    ]
    return "\n".join(lines)


def _attempts_line(what: str, a: dict[str, Any]) -> str:
    """Attempts of the auditor or the LLM teacher: done, failed and retried next run, given up;
    the latest failure's reason when some are failed."""
    line = (f"             {what + ' attempts':<12} ok {a['ok']:,} · failed, retried next run "
            f"{a['pending']:,} · given up {a['given_up']:,}")
    if (a["pending"] or a["given_up"]) and a.get("last_failure"):
        line += f"\n               last failure: {a['last_failure']}"
    return line
