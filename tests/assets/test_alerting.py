"""raise_alert (assets/alerting.py): recorded in the store, delivered to a real webhook receiver
and a real SMTP server, throttled, a failing channel recorded without losing the alert or
stopping the others; secrets never stored."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select

from assets.alerting import alert_settings_summary, raise_alert
from ml.alerts import AlertSettings
from ml.config import Settings
from store.alerts import get_alert
from store.db import session_scope
from store.models import Alert
from tests.alertkit import SmtpServer, WebhookServer


def _settings(url: str, tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", store_url=url)


def _alerting(hook: WebhookServer | None, smtp: SmtpServer | None, **kw) -> AlertSettings:
    values = {"throttle_s": 3600, **kw}
    if hook is not None:
        values["webhook_url"] = hook.url("/hooks/T0/SECRETPATH")
        values["webhook_headers"] = '{"Authorization": "Bearer HEADERSECRET"}'
    if smtp is not None:
        values.update(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_from="ll@example.com",
                      smtp_to="ops@example.com", smtp_starttls=False)
    return AlertSettings(**values)


def test_an_alert_is_recorded_delivered_everywhere_then_throttled(store_url, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="learnloop.alerts")
    settings = _settings(store_url, tmp_path)
    with WebhookServer() as hook, SmtpServer() as smtp:
        alerting = _alerting(hook, smtp)
        first = raise_alert(settings, kind="gate_failed", severity="critical",
                            message="candidate v4 failed the quality gate\nROUGE-L 0.31 < 0.33",
                            details={"version": "4", "openai_api_key": "sk-SHOULD-NOT-STORE"},
                            source="candidate_evaluation", alert_settings=alerting)
        again = raise_alert(settings, kind="gate_failed", severity="critical",
                            message="candidate v5 failed the quality gate",
                            details={"version": "5"}, source="candidate_evaluation",
                            alert_settings=alerting)
    assert first["notified"] == ["log", "webhook", "smtp"] and not first["suppressed"]
    assert first["dedupe_key"] == "gate_failed:candidate_evaluation"
    assert first["details"]["openai_api_key"] == "[redacted]"
    assert first["failed"] == {}
    assert again["suppressed"] and again["notified"] == [] and again["id"] == first["id"]
    assert again["occurrences"] == 2 and again["message"] == "candidate v5 failed the quality gate"
    (posted,) = hook.received
    assert posted.body["id"] == first["id"] and posted.body["kind"] == "gate_failed"
    assert posted.body["details"]["openai_api_key"] == "[redacted]"
    (mail,) = smtp.messages
    assert mail["Subject"] == ("[learnloop] critical gate_failed: candidate v4 failed the "
                               "quality gate")
    assert "sk-SHOULD-NOT-STORE" not in mail.get_content()
    with session_scope(store_url) as s:
        row = get_alert(s, first["id"])
        assert row.notified == ["log", "webhook", "smtp"] and row.occurrences == 2
        assert row.details["delivery"]["delivered"] == ["log", "webhook", "smtp"]
        assert "sk-SHOULD-NOT-STORE" not in str(row.details)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"alert #{first['id']} critical gate_failed" in logged
    assert "SECRETPATH" not in logged and "HEADERSECRET" not in logged


def test_a_failing_webhook_is_recorded_and_does_not_stop_smtp_or_lose_the_alert(
        store_url, tmp_path, caplog):
    settings = _settings(store_url, tmp_path)
    with WebhookServer(status=500) as hook, SmtpServer() as smtp:
        got = raise_alert(settings, kind="rollback", message="v3 rolled back to v2",
                          source="model_deployment", alert_settings=_alerting(hook, smtp))
    assert got["notified"] == ["log", "smtp"] and list(got["failed"]) == ["webhook"]
    assert "HTTP 500" in got["failed"]["webhook"]
    assert len(hook.received) == 1 and len(smtp.messages) == 1
    with session_scope(store_url) as s:
        row = get_alert(s, got["id"])
        assert row.status == "open" and row.kind == "rollback"
        assert "HTTP 500" in row.details["delivery"]["failed"]["webhook"]
        assert "SECRETPATH" not in str(row.details)
    assert any("was not delivered" in r.getMessage() for r in caplog.records)


def test_minimum_severity_keeps_info_alerts_to_the_log(tmp_path, sqlite_store_url):
    settings = _settings(sqlite_store_url, tmp_path)
    with WebhookServer() as hook:
        got = raise_alert(settings, kind="experiment_decided", severity="info",
                          message="experiment #3: promote", source="ab_decision_sensor",
                          alert_settings=_alerting(hook, None, min_severity="warning"))
    assert got["notified"] == ["log"] and hook.received == []


def test_bad_calls_and_bad_configuration_record_nothing(tmp_path, sqlite_store_url):
    settings = _settings(sqlite_store_url, tmp_path)
    with pytest.raises(ValueError, match="alert kind 'disk_full' is not one of"):
        raise_alert(settings, kind="disk_full", message="x")
    with pytest.raises(ValueError, match="severity 'error' is not one of"):
        raise_alert(settings, kind="rollback", severity="error", message="x")
    with pytest.raises(ValueError, match="message is empty"):
        raise_alert(settings, kind="rollback", message="  ")
    with pytest.raises(ValueError, match="LEARNLOOP_ALERT_SMTP_FROM and LEARNLOOP_ALERT_SMTP_TO"):
        raise_alert(settings, kind="rollback", message="x",
                    alert_settings=AlertSettings(smtp_host="127.0.0.1"))
    with session_scope(sqlite_store_url) as s:
        assert s.scalar(select(func.count()).select_from(Alert)) == 0
    assert alert_settings_summary(AlertSettings(webhook_url="https://h.example.com/SECRET")) == {
        "channels": ["log", "webhook"], "throttle_s": 3600, "min_severity": "info"}


@pytest.fixture()
def sqlite_store_url(tmp_path) -> str:
    from store.db import upgrade

    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    return url
