"""Settings of the review service and log collector (env prefix ``LEARNLOOP_``, read when built)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEARNLOOP_", extra="ignore")

    secret_key: SecretStr | None = Field(
        default=None, description="Signs session cookies. Unset: a random key per process "
                                  "(sessions end when the process restarts; a warning is logged).")
    cookie_secure: bool = Field(default=False, description="Send the session cookie over HTTPS "
                                                           "only (set true behind TLS).")
    session_max_age_s: int = Field(default=8 * 3600, ge=60)
    login_max_failures: int = Field(default=5, ge=1, description="Failed sign-ins per username+IP "
                                                                 "before 429.")
    login_window_s: int = Field(default=300, ge=1, description="Window of the sign-in limit.")
    collector_max_records: int = Field(default=1000, ge=1, description="Records per request.")
    collector_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024,
                                     description="Request body bytes of the collector.")
    page_size: int = Field(default=25, ge=1, le=500)
