"""Alert channels (ml/alerts.py) against real local servers: a webhook receiver (http.server) and
an SMTP server (aiosmtpd, with STARTTLS and AUTH); settings from the environment; delivery that
goes on past a failing channel; no secret in any error message."""

from __future__ import annotations

import logging

import pytest

from ml.alerts import (
    AlertDeliveryError,
    AlertSettings,
    LogChannel,
    SmtpChannel,
    WebhookChannel,
    at_least,
    channels,
    deliver,
    redact_details,
    safe_url,
    subject,
)
from tests.alertkit import SmtpServer, WebhookServer, free_port, self_signed

ALERT = {"id": 7, "kind": "provider_error_rate", "severity": "critical",
         "message": "9 of 30 LLM auditor attempts failed\nsecond line", "source": "health_sensor",
         "details": {"rate": 0.3, "api_key": "sk-live-123", "nested": [{"token": "t0k"}]},
         "created_at": "2026-05-10T12:00:00+00:00", "occurrences": 2}


@pytest.fixture(autouse=True)
def no_alert_env(monkeypatch):
    import os

    for var in list(os.environ):
        if var.startswith("LEARNLOOP_ALERT_") or var == "LEARNLOOP_MONTHLY_BUDGET_USD":
            monkeypatch.delenv(var)


def test_subject_and_redaction():
    assert subject(ALERT) == ("[learnloop] critical provider_error_rate: 9 of 30 LLM auditor "
                              "attempts failed")
    assert redact_details(ALERT["details"]) == {"rate": 0.3, "api_key": "[redacted]",
                                                "nested": [{"token": "[redacted]"}]}
    assert at_least("critical", "warning") and not at_least("info", "warning")
    with pytest.raises(ValueError, match="severity 'high'"):
        at_least("high", "info")
    assert safe_url("https://user:pw@hooks.example.com:8443/services/T0/B0/SECRET?k=v") == \
        "https://hooks.example.com:8443"


def test_log_channel_logs_at_the_severity_level(caplog):
    caplog.set_level(logging.DEBUG, logger="learnloop.alerts")
    LogChannel().send(ALERT)
    LogChannel().send({**ALERT, "severity": "info", "id": 8})
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "learnloop.alerts"]
    assert levels[0][0] == logging.CRITICAL and levels[1][0] == logging.INFO
    assert "alert #7 critical provider_error_rate" in levels[0][1]
    assert "second line" not in levels[0][1]


def test_webhook_posts_the_alert_as_json_with_the_configured_headers():
    with WebhookServer() as hook:
        WebhookChannel(hook.url("/services/SECRET?sig=abc"), timeout_s=5,
                       headers={"Authorization": "Bearer hook-secret"}).send(ALERT)
    (got,) = hook.received
    assert got.path == "/services/SECRET?sig=abc"
    assert got.headers["Authorization"] == "Bearer hook-secret"
    assert got.headers["Content-Type"] == "application/json"
    assert got.body["text"] == subject(ALERT)
    assert got.body["id"] == 7 and got.body["occurrences"] == 2
    assert got.body["details"]["api_key"] == "[redacted]"


def test_webhook_errors_name_the_status_never_the_secrets():
    url_secret, header_secret = "/services/T0/B0/PATHSECRET?sig=QUERYSECRET", "HEADERSECRET"
    with WebhookServer(status=500) as hook:
        ch = WebhookChannel(hook.url(url_secret).replace("http://", "http://u:PWSECRET@"),
                            headers={"X-Key": header_secret})
        with pytest.raises(AlertDeliveryError, match=r"webhook \(http://127\.0\.0\.1:\d+\): "
                                                     r"HTTP 500") as err:
            ch.send(ALERT)
        assert err.value.status == 500 and err.value.channel.startswith("webhook")
        hook.status = 302  # a redirect is not delivery (and is not followed)
        hook.headers = {"Location": "http://127.0.0.1:1/elsewhere"}
        with pytest.raises(AlertDeliveryError, match="HTTP 302"):
            ch.send(ALERT)
        assert len(hook.received) == 2
    closed = free_port()
    with pytest.raises(AlertDeliveryError, match="ConnectError") as refused:
        WebhookChannel(f"http://127.0.0.1:{closed}{url_secret}", timeout_s=2,
                       headers={"X-Key": header_secret}).send(ALERT)
    for e in (err.value, refused.value):
        for secret in ("PATHSECRET", "QUERYSECRET", "PWSECRET", header_secret):
            assert secret not in str(e)
    assert "HEADERSECRET" not in repr(ch) and "PATHSECRET" not in repr(ch)


def test_smtp_sends_one_mail_with_the_subject_and_details():
    with SmtpServer() as smtp:
        SmtpChannel("127.0.0.1", smtp.port, "learnloop@example.com",
                    ["ops@example.com", "ml@example.com"], starttls=False).send(ALERT)
    (msg,) = smtp.messages
    assert msg["Subject"] == ("[learnloop] critical provider_error_rate: 9 of 30 LLM auditor "
                              "attempts failed")
    assert smtp.envelopes == [("learnloop@example.com", ["ops@example.com", "ml@example.com"])]
    body = msg.get_content()
    assert "second line" in body and '"rate": 0.3' in body
    assert "sk-live-123" not in body and "t0k" not in body


def test_smtp_starttls_and_login_and_a_wrong_password(tmp_path):
    server_ctx, client_ctx = self_signed(tmp_path)
    with SmtpServer(tls=server_ctx, users={"alerts": "s3cret-pw"}) as smtp:
        SmtpChannel("127.0.0.1", smtp.port, "learnloop@example.com", ["ops@example.com"],
                    username="alerts", password="s3cret-pw", starttls=True,
                    tls_context=client_ctx).send(ALERT)
        assert smtp.logins == ["alerts"] and len(smtp.messages) == 1
        bad = SmtpChannel("127.0.0.1", smtp.port, "learnloop@example.com", ["ops@example.com"],
                          username="alerts", password="wrong-pw-value", starttls=True,
                          tls_context=client_ctx)
        with pytest.raises(AlertDeliveryError, match="refused the login of 'alerts'") as err:
            bad.send(ALERT)
        assert "wrong-pw-value" not in str(err.value) and "wrong-pw-value" not in repr(bad)
        # the default context checks the certificate: a self-signed one is refused
        with pytest.raises(AlertDeliveryError, match="SSLCertVerificationError"):
            SmtpChannel("127.0.0.1", smtp.port, "learnloop@example.com", ["ops@example.com"],
                        username="alerts", password="s3cret-pw").send(ALERT)
    assert len(smtp.messages) == 1


def test_smtp_starttls_required_but_not_offered_is_an_error():
    with SmtpServer() as smtp, pytest.raises(AlertDeliveryError, match="STARTTLS"):
        SmtpChannel("127.0.0.1", smtp.port, "a@example.com", ["b@example.com"]).send(ALERT)
    assert smtp.messages == []
    with pytest.raises(AlertDeliveryError, match=r"smtp \(127\.0\.0\.1:\d+\): "
                                                 r"ConnectionRefusedError"):
        SmtpChannel("127.0.0.1", free_port(), "a@example.com", ["b@example.com"],
                    starttls=False).send(ALERT)


def test_settings_from_the_environment_make_the_channels(monkeypatch):
    assert [c.name for c in channels(AlertSettings())] == ["log"]
    monkeypatch.setenv("LEARNLOOP_ALERT_WEBHOOK_URL", "https://hooks.example.com/T/B/SECRET")
    monkeypatch.setenv("LEARNLOOP_ALERT_WEBHOOK_HEADERS", '{"Authorization": "Bearer HS"}')
    monkeypatch.setenv("LEARNLOOP_ALERT_SMTP_HOST", "mail.example.com")
    monkeypatch.setenv("LEARNLOOP_ALERT_SMTP_FROM", "learnloop@example.com")
    monkeypatch.setenv("LEARNLOOP_ALERT_SMTP_TO", "ops@example.com, ml@example.com")
    monkeypatch.setenv("LEARNLOOP_ALERT_SMTP_PASSWORD", "PWSECRET")
    monkeypatch.setenv("LEARNLOOP_ALERT_SMTP_USER", "alerts")
    monkeypatch.setenv("LEARNLOOP_ALERT_THROTTLE_S", "60")
    monkeypatch.setenv("LEARNLOOP_ALERT_MIN_SEVERITY", "warning")
    monkeypatch.setenv("LEARNLOOP_MONTHLY_BUDGET_USD", "250")
    s = AlertSettings()
    assert (s.throttle_s, s.min_severity, s.monthly_budget_usd, s.smtp_port) == \
        (60, "warning", 250.0, 587)
    webhook, smtp = channels(s)[1:]
    assert webhook.target == "https://hooks.example.com"
    assert smtp.recipients == ["ops@example.com", "ml@example.com"] and smtp.username == "alerts"
    for text in (repr(s), repr(webhook), repr(smtp), str(s.model_dump())):
        assert "SECRET" not in text and "Bearer HS" not in text
    monkeypatch.delenv("LEARNLOOP_ALERT_SMTP_TO")
    with pytest.raises(ValueError, match="LEARNLOOP_ALERT_SMTP_TO is not"):
        channels(AlertSettings())
    monkeypatch.setenv("LEARNLOOP_ALERT_WEBHOOK_HEADERS", "Authorization: Bearer HS")
    with pytest.raises(ValueError, match="WEBHOOK_HEADERS is not JSON") as err:
        AlertSettings()
    assert "Bearer HS" not in str(err.value)


def test_delivery_goes_on_past_a_failing_channel_and_respects_the_minimum_severity(caplog):
    with WebhookServer(status=503) as bad, SmtpServer() as smtp:
        targets = [LogChannel(), WebhookChannel(bad.url("/x?token=QS")),
                   SmtpChannel("127.0.0.1", smtp.port, "a@example.com", ["b@example.com"],
                               starttls=False)]
        delivered, failed = deliver(ALERT, targets)
        assert delivered == ["log", "smtp"] and list(failed) == ["webhook"]
        assert "HTTP 503" in failed["webhook"] and "QS" not in failed["webhook"]
        assert any("was not delivered" in r.getMessage() and r.levelno == logging.ERROR
                   for r in caplog.records)
        # below the minimum severity only the log gets it
        delivered, failed = deliver({**ALERT, "severity": "info"}, targets, "warning")
        assert delivered == ["log"] and failed == {}
    assert len(smtp.messages) == 1 and len(bad.received) == 1
