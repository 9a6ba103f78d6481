"""Health checks of the running system and the sensor that runs them (it only raises alerts).

Three checks, each a pure function of figures the store computes (``store.alerts``):

* ``provider_error_rate``: the failed share of the LLM auditors' attempts of the last 24 h is
  above ``LEARNLOOP_ALERT_PROVIDER_ERROR_RATE`` (0.2) with at least
  ``LEARNLOOP_ALERT_PROVIDER_MIN_ATTEMPTS`` (20) attempts; critical from 50% failed.
* ``cost_over_budget``: this calendar month's training cost (``training_runs.cost_usd``) is above
  ``LEARNLOOP_MONTHLY_BUDGET_USD`` (unset: not checked); critical.
* ``review_queue_stalled``: items are pending, the oldest for longer than
  ``LEARNLOOP_ALERT_REVIEW_STALL_HOURS`` (72), and no review decision was made for as long.

A check that fails raises its alert (de-duplicated on ``<kind>:health_sensor``, throttled by the
store); a check that passes resolves that alert when one is open, so the next failure is a new
alert. A check without enough data (fewer attempts than the minimum, no budget set) leaves its
alert as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from assets.alerting import raise_alert
from assets.resources import OperationalStoreResource
from ml.alerts import AlertSettings
from ml.config import Settings

SOURCE = "health_sensor"
ERROR_WINDOW = timedelta(hours=24)
CRITICAL_ERROR_RATE = 0.5
CHECKS = ("provider_error_rate", "cost_over_budget", "review_queue_stalled")


def dedupe_key(kind: str) -> str:
    return f"{kind}:{SOURCE}"


def gather(session, now: datetime) -> dict[str, Any]:
    """The figures the checks read, from one store session."""
    from store.alerts import month_cost, provider_error_rate, review_queue_age

    return {"provider": provider_error_rate(session, now - ERROR_WINDOW),
            "cost": month_cost(session, now), "queue": review_queue_age(session, now)}


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 else f"{x:.1%}"


def check_provider_errors(figures: dict[str, Any], threshold: float,
                          min_attempts: int) -> tuple[str, dict[str, Any] | None]:
    """("skipped" | "ok" | "failed", the finding when failed)."""
    n, failed, rate = figures["attempts"], figures["failed"], figures["rate"]
    if n < min_attempts:
        return "skipped", None
    if rate <= threshold:
        return "ok", None
    worst = max(figures["by_auditor"].items(), key=lambda kv: kv[1]["failed"] / kv[1]["attempts"])
    return "failed", {
        "kind": "provider_error_rate",
        "severity": "critical" if rate >= CRITICAL_ERROR_RATE else "warning",
        "message": f"LLM auditor provider errors: {failed} of {n} attempts ({_pct(rate)}) failed "
                   f"in the last 24 h (threshold {_pct(threshold)}); worst: {worst[0]}",
        "details": {**figures, "threshold": threshold, "min_attempts": min_attempts}}


def check_cost(figures: dict[str, Any],
               budget: float | None) -> tuple[str, dict[str, Any] | None]:
    if budget is None:
        return "skipped", None
    cost = figures["cost_usd"]
    if cost <= budget:
        return "ok", None
    return "failed", {
        "kind": "cost_over_budget", "severity": "critical",
        "message": f"Training cost of {figures['month']} is ${cost:,.2f}, over the monthly "
                   f"budget of ${budget:,.2f} ({figures['runs']} training runs)",
        "details": {**figures, "budget_usd": budget}}


def check_review_queue(figures: dict[str, Any],
                       stall_hours: float) -> tuple[str, dict[str, Any] | None]:
    pending, age, since = figures["pending"], figures["oldest_age_h"], figures["decision_age_h"]
    stalled = (pending >= 1 and age is not None and age > stall_hours
               and (since is None or since > stall_hours))
    if not stalled:
        return "ok", None
    last = "no review decision yet" if since is None else \
        f"the last review decision was {since:.0f} h ago"
    return "failed", {
        "kind": "review_queue_stalled", "severity": "warning",
        "message": f"Review queue stalled: {pending} item(s) pending, the oldest for {age:.0f} h, "
                   f"and {last} (limit {stall_hours:g} h)",
        "details": {**figures, "stall_hours": stall_hours}}


def evaluate(figures: dict[str, Any], alert_settings: AlertSettings
             ) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """check name -> (outcome, finding) for the three checks."""
    return {
        "provider_error_rate": check_provider_errors(figures["provider"],
                                                     alert_settings.provider_error_rate,
                                                     alert_settings.provider_min_attempts),
        "cost_over_budget": check_cost(figures["cost"], alert_settings.monthly_budget_usd),
        "review_queue_stalled": check_review_queue(figures["queue"],
                                                   alert_settings.review_stall_hours)}


def apply(settings: Settings, outcomes: dict[str, tuple[str, dict[str, Any] | None]],
          alert_settings: AlertSettings, now: datetime) -> dict[str, list]:
    """Raise the alert of every failed check, resolve the open alert of every passed one."""
    from store.alerts import resolve_key
    from store.db import session_scope

    raised, resolved = [], []
    for name, (outcome, finding) in outcomes.items():
        if outcome == "failed":
            raised.append(raise_alert(settings, kind=finding["kind"], message=finding["message"],
                                      severity=finding["severity"], details=finding["details"],
                                      dedupe_key=dedupe_key(name), source=SOURCE,
                                      alert_settings=alert_settings))
        elif outcome == "ok":
            with session_scope(settings.store) as s:
                resolved += [a.id for a in resolve_key(s, dedupe_key(name), SOURCE,
                                                       reason="the check passed again", at=now)]
    return {"raised": raised, "resolved": resolved}


def run_health_checks(settings: Settings, alert_settings: AlertSettings | None = None,
                      now: datetime | None = None,
                      figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """Gather (unless ``figures`` are given), evaluate and apply the checks at ``now``."""
    from store.db import session_scope

    alert_settings = alert_settings or AlertSettings()
    now = now or datetime.now(UTC)
    if figures is None:
        with session_scope(settings.store) as s:
            figures = gather(s, now)
    outcomes = evaluate(figures, alert_settings)
    done = apply(settings, outcomes, alert_settings, now)
    return {"figures": figures, "outcomes": {k: v[0] for k, v in outcomes.items()}, **done}


def describe(result: dict[str, Any]) -> str:
    """One line: what was checked, what was raised or resolved."""
    f, o = result["figures"], result["outcomes"]
    p, c, q = f["provider"], f["cost"], f["queue"]
    parts = [f"provider errors {p['failed']}/{p['attempts']} in 24 h ({o['provider_error_rate']})",
             f"cost {c['month']} ${c['cost_usd']:,.2f} ({o['cost_over_budget']})",
             f"review queue {q['pending']} pending, oldest "
             + ("-" if q["oldest_age_h"] is None else f"{q['oldest_age_h']:.0f} h")
             + f" ({o['review_queue_stalled']})"]
    raised = [f"#{a['id']} {a['kind']}" + (" (suppressed)" if a["suppressed"] else "")
              for a in result["raised"]]
    tail = (f"; raised {', '.join(raised)}" if raised else "; nothing raised") + \
        (f"; resolved {', '.join(f'#{i}' for i in result['resolved'])}"
         if result["resolved"] else "")
    return "checked " + "; ".join(parts) + tail


@dg.sensor(minimum_interval_seconds=600, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Health checks every 10 minutes: LLM provider error rate (24 h), training "
                       "cost of the month against LEARNLOOP_MONTHLY_BUDGET_USD, stalled review "
                       "queue. Raises (and resolves) alerts; starts no run.")
def health_sensor(context: dg.SensorEvaluationContext, store: OperationalStoreResource):
    settings = Settings(store_url=store.get_url())
    alert_settings = AlertSettings()  # a bad LEARNLOOP_ALERT_* value fails the tick, by name
    now = datetime.now(UTC)
    with store.session() as s:  # checks the store's revision first
        figures = gather(s, now)
    result = run_health_checks(settings, alert_settings, now, figures)
    text = describe(result)
    context.log.info(text)
    return dg.SkipReason(text)
