"""Raising an alert: record it in the operational store, then notify its channels when the store
says so. Assets, sensors and the CLI call :func:`raise_alert`.

The alert is committed before any channel is tried, so a channel that fails (or a crash while
sending) never loses it: the failure is logged with its error and recorded in the alert's
``details.delivery.failed``, and the other channels are still tried. Which channels delivered is
stored in ``notified``.

This module sits below the stage modules (like ``assets/resources.py``): any of them, and the
sensors in ``orchestration/``, may import it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from ml.alerts import AlertSettings, channels, check_alert, deliver, redact_details
from ml.config import Settings
from store.alerts import alert_dict, mark_notified, record_alert
from store.db import session_scope

log = logging.getLogger("learnloop.alerts")


def raise_alert(settings: Settings, *, kind: str, message: str, severity: str = "warning",
                details: dict | None = None, dedupe_key: str | None = None, source: str = "",
                alert_settings: AlertSettings | None = None) -> dict:
    """Record an alert (de-duplicated on ``dedupe_key``, default ``"<kind>:<source>"``) and
    deliver it to every configured channel unless the store throttles it.

    ``kind`` is one of ``ml.alerts.ALERT_KINDS``, ``severity`` one of ``info``, ``warning``,
    ``critical``; entries of ``details`` whose key names a secret (password, token, api_key,
    ...) are stored as ``[redacted]``. Returns :func:`store.alerts.alert_dict` of the alert plus
    ``notified`` (the channels that delivered it now; [] when suppressed), ``failed`` (channel ->
    error) and ``suppressed`` (True when it was a repeat inside the throttle window, or of an
    acknowledged alert)."""
    check_alert(kind, severity)
    if not message or not message.strip():
        raise ValueError(f"raise_alert({kind!r}): message is empty")
    alert_settings = alert_settings or AlertSettings()
    targets = channels(alert_settings)  # a misconfiguration fails before anything is recorded
    key = dedupe_key or f"{kind}:{source}"
    with session_scope(settings.store) as s:
        alert, notify = record_alert(s, kind=kind, severity=severity, message=message,
                                     details=redact_details(dict(details or {})), dedupe_key=key,
                                     source=source, throttle_s=alert_settings.throttle_s)
        data = alert_dict(alert)
    if not notify:
        log.debug("alert #%s (%s) seen again (x%s): not sent (throttled or acknowledged)",
                  data["id"], key, data["occurrences"])
        return {**data, "notified": [], "failed": {}, "suppressed": True}
    delivered, failed = deliver(data, targets, alert_settings.min_severity)
    with session_scope(settings.store) as s:
        data = alert_dict(mark_notified(s, data["id"], delivered, datetime.now(UTC), failed))
    return {**data, "notified": delivered, "failed": failed, "suppressed": False}


def alert_settings_summary(settings: AlertSettings) -> dict[str, Any]:
    """Which channels are configured (names only, no URL or secret), for status output."""
    return {"channels": [c.name for c in channels(settings)], "throttle_s": settings.throttle_s,
            "min_severity": settings.min_severity}


__all__ = ["alert_settings_summary", "raise_alert"]
