"""Settings of the review service and log collector (env prefix ``LEARNLOOP_``, read when built)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return True  # not served by `learnloop serve`: treated like the loopback default
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name other than localhost


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEARNLOOP_", extra="ignore")

    secret_key: SecretStr | None = Field(
        default=None, description="Signs session cookies. Unset: a random key per process "
                                  "(sessions end when the process restarts; a warning is logged).")
    cookie_secure: bool | None = Field(
        default=None, description="Send the session cookie over HTTPS only. Unset: on when the "
                                  "service listens on a non-loopback host, off on loopback.")
    session_max_age_s: int = Field(default=8 * 3600, ge=60)
    login_max_failures: int = Field(default=5, ge=1, description="Sign-in attempts per "
                                                                 "username+IP before 429.")
    login_max_failures_per_ip: int = Field(default=20, ge=1, description="Sign-in attempts per "
                                                                         "client IP (any username) "
                                                                         "before 429.")
    login_window_s: int = Field(default=300, ge=1, description="Window of the sign-in limits.")
    collector_max_records: int = Field(default=1000, ge=1, description="Records per request.")
    collector_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024,
                                     description="Request body bytes of the collector.")
    collector_workers: int = Field(default=1, ge=0, le=64,
                                   description="Worker processes that decode, validate and write "
                                               "large collector bodies (0: worker threads only).")
    collector_process_min_bytes: int = Field(default=64 * 1024, ge=0,
                                             description="Collector bodies of at least this size "
                                                         "go to a worker process; smaller ones "
                                                         "to a worker thread.")
    serve_feedback_window_s: int = Field(
        default=1800, ge=0, description="Seconds a served turn waits for its feedback before it "
                                        "is written to the landing zone (its session's end "
                                        "writes it sooner).")
    serve_max_models: int = Field(default=3, ge=1, le=64,
                                  description="Model versions the serving API keeps loaded "
                                              "(least recently used out).")
    serve_max_new_tokens: int = Field(default=128, ge=1, le=8192,
                                      description="Most tokens of one served reply (a request's "
                                                  "max_tokens above it is capped).")
    serve_batch_size: int = Field(default=8, ge=1, le=256,
                                  description="Most concurrent requests to one model version "
                                              "generated as one batch.")
    serve_flush_interval_s: float = Field(default=5.0, ge=0,
                                          description="Serving requests look for turns whose "
                                                      "feedback window passed at most this "
                                                      "often.")
    page_size: int = Field(default=25, ge=1, le=500)
    proxy_headers: bool = Field(default=False, description="Trust X-Forwarded-For/-Proto from "
                                                           "forwarded_allow_ips (behind a proxy).")
    forwarded_allow_ips: str = Field(default="127.0.0.1", description="Comma-separated proxy "
                                                                      "addresses trusted for "
                                                                      "proxy headers.")

    def secure_cookie(self, host: str | None) -> bool:
        """Whether the session cookie is ``Secure`` when serving on ``host``."""
        if self.cookie_secure is not None:
            return self.cookie_secure
        return not is_loopback(host)
