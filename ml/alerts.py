"""Alert channels: where one alert goes once the operational store decided it should be sent.

An alert is a plain dict (``store.alerts.alert_dict``): ``kind``, ``severity``, ``message``,
``details``, ``id``, ``created_at``, ``occurrences`` (and the store's other fields). A channel
delivers it or raises :class:`AlertDeliveryError` naming the channel and what went wrong, never a
secret (a webhook URL's credentials, path or query; a header value; the SMTP password).

* :class:`LogChannel`: Python logging, logger ``learnloop.alerts``; always on.
* :class:`WebhookChannel`: an HTTP POST of the alert as JSON (plus a one-line ``text``, which chat
  tools' incoming webhooks show).
* :class:`SmtpChannel`: an e-mail through an SMTP server (STARTTLS by default).

:class:`AlertSettings` reads the ``LEARNLOOP_ALERT_*`` variables when built (never at import) and
:func:`channels` turns them into the configured channels. This module imports nothing
first-party: the store records and de-duplicates alerts (``store.alerts``), and
``assets.alerting.raise_alert`` wires the two.
"""

from __future__ import annotations

import email.policy
import json
import logging
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
# the same values as store.models.ALERT_KINDS (tests/store/test_alerts_store.py asserts it); who
# raises each one: docs/deployment.md, "Alerts"; what to do about each: docs/operations.md,
# "Alerts"
ALERT_KINDS: tuple[str, ...] = ("quality_degradation", "provider_error_rate", "cost_over_budget",
                                "rollback", "gate_failed", "review_queue_stalled",
                                "experiment_decided")
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}
# details keys whose values never leave the process (matched case-insensitively, as substrings)
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "api_key", "apikey",
                    "authorization", "credential", "private_key")
REDACTED = "[redacted]"

log = logging.getLogger("learnloop.alerts")


class AlertDeliveryError(RuntimeError):
    """A channel could not deliver an alert; the message names the channel and the cause."""

    def __init__(self, channel: str, problem: str, status: int | None = None):
        super().__init__(f"alert channel {channel}: {problem}")
        self.channel, self.problem, self.status = channel, problem, status


class Channel(Protocol):
    name: str

    def send(self, alert: Mapping[str, Any]) -> None: ...


def check_severity(severity: str) -> None:
    if severity not in SEVERITIES:
        raise ValueError(f"alert severity {severity!r} is not one of {list(SEVERITIES)}")


def check_alert(kind: str, severity: str) -> None:
    """ValueError naming the allowed values unless ``kind`` and ``severity`` are known."""
    if kind not in ALERT_KINDS:
        raise ValueError(f"alert kind {kind!r} is not one of {list(ALERT_KINDS)}")
    check_severity(severity)


def at_least(severity: str, minimum: str) -> bool:
    """True when ``severity`` is ``minimum`` or higher (info < warning < critical)."""
    check_severity(severity)
    check_severity(minimum)
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[minimum]


def redact_details(value: Any) -> Any:
    """``value`` with every mapping entry whose key names a secret (password, token, api_key,
    authorization, ...) replaced by ``[redacted]``, at any depth."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if any(p in str(k).lower() for p in SECRET_KEY_PARTS)
                else redact_details(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_details(v) for v in value]
    return value


def first_line(text: str, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def subject(alert: Mapping[str, Any]) -> str:
    """``[learnloop] <severity> <kind>: <first line of the message>``."""
    return (f"[learnloop] {alert.get('severity')} {alert.get('kind')}: "
            f"{first_line(str(alert.get('message') or ''))}")


def body_text(alert: Mapping[str, Any]) -> str:
    """The plain-text body of an e-mail (and what a reader of the log needs)."""
    lines = [str(alert.get("message") or ""), "",
             f"kind: {alert.get('kind')}", f"severity: {alert.get('severity')}",
             f"alert id: {alert.get('id')}", f"source: {alert.get('source') or '-'}",
             f"occurrences: {alert.get('occurrences')}",
             f"first seen: {alert.get('created_at')}",
             f"last seen: {alert.get('last_seen_at') or alert.get('created_at')}"]
    details = {k: v for k, v in (alert.get("details") or {}).items() if k != "delivery"}
    if details:
        lines += ["", "details:", json.dumps(redact_details(details), indent=2, sort_keys=True,
                                             default=str)]
    return "\n".join(lines) + "\n"


# ---- channels ------------------------------------------------------------------------------------
class LogChannel:
    """Python logging (logger ``learnloop.alerts``): info -> INFO, warning -> WARNING,
    critical -> CRITICAL."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log

    def send(self, alert: Mapping[str, Any]) -> None:
        level = LOG_LEVELS.get(str(alert.get("severity")), logging.WARNING)
        self.logger.log(level, "alert #%s %s %s (x%s, source %s): %s", alert.get("id"),
                        alert.get("severity"), alert.get("kind"), alert.get("occurrences"),
                        alert.get("source") or "-", first_line(str(alert.get("message") or ""),
                                                               500))


def safe_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: no user, password, path or query (a chat webhook's
    path is its secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class WebhookChannel:
    """POST the alert as JSON to ``url``; any answer but 2xx, a redirect included, and any
    connection error raise :class:`AlertDeliveryError` with the status (the URL is named by its
    scheme, host and port only; header values are never shown)."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float = 5.0, headers: Mapping[str, str] | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http(s) with a host, got one for "
                             f"{safe_url(url)!r}")
        if timeout_s <= 0:
            raise ValueError(f"webhook timeout must be positive, got {timeout_s}")
        self._url = url
        self.timeout_s = float(timeout_s)
        self._headers = {str(k): str(v) for k, v in (headers or {}).items()}
        self.target = safe_url(url)

    def __repr__(self) -> str:
        return (f"WebhookChannel({self.target!r}, timeout_s={self.timeout_s}, "
                f"headers={sorted(self._headers)})")

    def payload(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        data = {k: v for k, v in alert.items()}
        data["details"] = redact_details(alert.get("details") or {})
        return {"text": subject(alert), **data}

    def send(self, alert: Mapping[str, Any]) -> None:
        import httpx

        body = json.dumps(self.payload(alert), default=str, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "learnloop-alerts",
                   **self._headers}
        where = f"{self.name} ({self.target})"
        try:
            resp = httpx.post(self._url, content=body, headers=headers, timeout=self.timeout_s,
                              follow_redirects=False)
        except httpx.HTTPError as exc:
            # the exception text may carry the request URL: name the class and the cause only
            cause = exc.__cause__ or exc.__context__
            why = type(cause).__name__ if cause is not None else ""
            raise AlertDeliveryError(where, f"{type(exc).__name__}"
                                            + (f" ({why})" if why else "")
                                            + f" after at most {self.timeout_s:g} s") from None
        if not 200 <= resp.status_code < 300:
            raise AlertDeliveryError(where, f"HTTP {resp.status_code} "
                                            f"{resp.reason_phrase}".rstrip(),
                                     status=resp.status_code)


class SmtpChannel:
    """An e-mail per alert through ``host:port`` (STARTTLS when ``starttls``, verifying the
    server's certificate, then a login when ``username`` is set). Subject:
    ``[learnloop] <severity> <kind>: <message first line>``. A server that does not offer
    STARTTLS while ``starttls`` is on is an error, never a silent plain-text login."""

    name = "smtp"

    def __init__(self, host: str, port: int, sender: str, recipients: Sequence[str],
                 username: str | None = None, password: str | SecretStr | None = None,
                 starttls: bool = True, timeout_s: float = 10.0,
                 tls_context: ssl.SSLContext | None = None):
        if not host:
            raise ValueError("SMTP host is empty")
        if not sender or "@" not in sender:
            raise ValueError(f"SMTP sender must be an e-mail address, got {sender!r}")
        recipients = [r.strip() for r in recipients if r and r.strip()]
        if not recipients:
            raise ValueError("SMTP recipients: give at least one address")
        bad = [r for r in recipients if "@" not in r]
        if bad:
            raise ValueError(f"SMTP recipients must be e-mail addresses, got {bad}")
        if username and password is None:
            raise ValueError(f"SMTP user {username!r} is set but no password")
        self.host, self.port, self.sender = host, int(port), sender
        self.recipients = recipients
        self.username, self.starttls, self.timeout_s = username, starttls, float(timeout_s)
        self.tls_context = tls_context  # None: the system's trusted CAs, host name checked
        self._password = (password if isinstance(password, SecretStr) or password is None
                          else SecretStr(password))

    def __repr__(self) -> str:
        return (f"SmtpChannel({self.host!r}, {self.port}, {self.sender!r}, {self.recipients}, "
                f"username={self.username!r}, starttls={self.starttls})")

    def message(self, alert: Mapping[str, Any]) -> EmailMessage:
        # lines up to RFC 5322's 998 characters: no folding of the subject (whose first line is
        # at most 160 characters), which some readers would show with a leading space
        msg = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
        msg["Subject"] = subject(alert)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["X-Learnloop-Alert"] = f"{alert.get('id')} {alert.get('kind')}"
        msg.set_content(body_text(alert))
        return msg

    def send(self, alert: Mapping[str, Any]) -> None:
        where = f"{self.name} ({self.host}:{self.port})"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=self.tls_context or ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self._password.get_secret_value())
                refused = smtp.send_message(self.message(alert))
        except smtplib.SMTPAuthenticationError as exc:
            raise AlertDeliveryError(where, f"the server refused the login of "
                                            f"{self.username!r} ({exc.smtp_code})",
                                     status=exc.smtp_code) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) \
                else str(exc.smtp_error)
            raise AlertDeliveryError(where, f"{type(exc).__name__} {exc.smtp_code} "
                                            f"{first_line(text)}", status=exc.smtp_code) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise AlertDeliveryError(where, f"every recipient refused: "
                                            f"{sorted(exc.recipients)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise AlertDeliveryError(where, f"{type(exc).__name__}: {exc}") from None
        if refused:
            raise AlertDeliveryError(where, f"refused recipients {sorted(refused)} (the others "
                                            f"got it)")


# ---- settings ------------------------------------------------------------------------------------
class AlertSettings(BaseSettings):
    """Alerting: channels, throttling and the thresholds of the health checks
    (``LEARNLOOP_ALERT_*``; the monthly budget is ``LEARNLOOP_MONTHLY_BUDGET_USD``)."""

    # a bad value is named in the error, never echoed (it may be the webhook URL or a header)
    model_config = SettingsConfigDict(env_prefix="LEARNLOOP_ALERT_", extra="ignore",
                                      populate_by_name=True, hide_input_in_errors=True)

    webhook_url: SecretStr | None = Field(
        default=None, description="POST every alert as JSON here (a chat tool's incoming "
                                  "webhook, an incident tool). Secret: its path often is the key.")
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=120)
    webhook_headers: SecretStr | None = Field(
        default=None, description='Extra request headers as a JSON object, e.g. '
                                  '{"Authorization": "Bearer ..."}; values are never logged.')
    smtp_host: str | None = Field(default=None, description="SMTP server; unset: no e-mail.")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_from: str | None = Field(default=None, description="Sender address of alert e-mails.")
    smtp_to: str = Field(default="", description="Recipients, comma-separated.")
    smtp_user: str | None = Field(default=None, description="Login (unset: no login).")
    smtp_password: SecretStr | None = Field(default=None)
    smtp_starttls: bool = Field(default=True, description="Upgrade the connection with "
                                                          "STARTTLS before the login.")
    smtp_timeout_s: float = Field(default=10.0, gt=0, le=120)
    throttle_s: int = Field(
        default=3600, ge=0, description="An alert still open (same de-duplication key) is "
                                        "not sent again within this many seconds; repeats "
                                        "only count.")
    min_severity: Literal["info", "warning", "critical"] = Field(
        default="info", description="Webhook and e-mail get alerts of this severity and above; "
                                    "the log and the store get every alert.")
    provider_error_rate: float = Field(
        default=0.2, gt=0, le=1, description="Health check: the failed share of the LLM "
                                             "auditor's attempts of the last 24 h above which "
                                             "provider_error_rate is raised.")
    provider_min_attempts: int = Field(default=20, ge=1, description="Health check: attempts "
                                                                     "needed before that share "
                                                                     "counts.")
    review_stall_hours: float = Field(
        default=72.0, gt=0, description="Health check: review_queue_stalled when the oldest "
                                        "pending item is older than this and nobody decided an "
                                        "item for as long.")
    monthly_budget_usd: float | None = Field(
        default=None, ge=0, validation_alias=AliasChoices("monthly_budget_usd",
                                                          "LEARNLOOP_MONTHLY_BUDGET_USD"),
        description="Health check: cost_over_budget when this calendar month's training cost "
                    "(training_runs.cost_usd) exceeds it; unset: no check.")

    @field_validator("webhook_headers", mode="after")
    @classmethod
    def _headers_are_a_json_object(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value().strip():
            try:
                parsed = json.loads(v.get_secret_value())
            except json.JSONDecodeError as exc:
                raise ValueError(f"LEARNLOOP_ALERT_WEBHOOK_HEADERS is not JSON (at character "
                                 f"{exc.pos})") from None
            if not isinstance(parsed, dict) or not all(isinstance(x, str) for x in parsed.values()):
                raise ValueError("LEARNLOOP_ALERT_WEBHOOK_HEADERS must be a JSON object of "
                                 "header name -> string value")
        return v

    @property
    def recipients(self) -> list[str]:
        return [r.strip() for r in self.smtp_to.split(",") if r.strip()]

    def headers(self) -> dict[str, str]:
        if self.webhook_headers is None or not self.webhook_headers.get_secret_value().strip():
            return {}
        return dict(json.loads(self.webhook_headers.get_secret_value()))


def channels(settings: AlertSettings) -> list[Channel]:
    """The log channel, then the webhook when ``LEARNLOOP_ALERT_WEBHOOK_URL`` is set, then e-mail
    when ``LEARNLOOP_ALERT_SMTP_HOST`` is set (which then needs SMTP_FROM and SMTP_TO)."""
    out: list[Channel] = [LogChannel()]
    if settings.webhook_url is not None and settings.webhook_url.get_secret_value().strip():
        out.append(WebhookChannel(settings.webhook_url.get_secret_value().strip(),
                                  settings.webhook_timeout_s, settings.headers()))
    if settings.smtp_host:
        missing = [name for name, v in (("LEARNLOOP_ALERT_SMTP_FROM", settings.smtp_from),
                                        ("LEARNLOOP_ALERT_SMTP_TO", settings.recipients)) if not v]
        if missing:
            raise ValueError(f"LEARNLOOP_ALERT_SMTP_HOST is set but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not")
        out.append(SmtpChannel(settings.smtp_host, settings.smtp_port, settings.smtp_from,
                               settings.recipients, settings.smtp_user, settings.smtp_password,
                               settings.smtp_starttls, settings.smtp_timeout_s))
    return out


def deliver(alert: Mapping[str, Any], targets: Sequence[Channel], min_severity: str = "info"
            ) -> tuple[list[str], dict[str, str]]:
    """Send ``alert`` through each channel in turn: the log channel always, the others when the
    alert's severity is at least ``min_severity``. A channel that fails is logged with its error
    and does not stop the others. Returns (names of the channels that delivered, channel name ->
    error of those that failed)."""
    delivered: list[str] = []
    failed: dict[str, str] = {}
    for ch in targets:
        if ch.name != LogChannel.name and not at_least(str(alert.get("severity")), min_severity):
            continue
        try:
            ch.send(alert)
        except AlertDeliveryError as exc:
            log.error("alert #%s (%s) was not delivered: %s", alert.get("id"), alert.get("kind"),
                      exc)
            failed[ch.name] = str(exc)
            continue
        delivered.append(ch.name)
    return delivered, failed


__all__ = ["ALERT_KINDS", "SEVERITIES", "SEVERITY_RANK", "AlertDeliveryError", "AlertSettings",
           "Channel", "LogChannel", "SmtpChannel", "WebhookChannel", "at_least", "body_text",
           "channels", "check_alert", "check_severity", "deliver", "redact_details", "safe_url",
           "subject"]
