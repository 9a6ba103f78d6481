"""Helpers shared by the HTTP providers: API keys, Retry-After parsing and status classification."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping

from ml.llm.errors import ConfigError
from ml.llm.redaction import read_api_key

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


def is_retryable_status(status: int | None) -> bool:
    """429 and friends, and every 5xx."""
    return status is not None and (status in RETRYABLE_STATUS or status >= 500)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date);
    None when the server sent no usable hint."""
    if not headers:
        return None
    ms = (headers.get("retry-after-ms") or "").strip()
    if _NUMBER.match(ms):
        return float(ms) / 1000.0
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    if _NUMBER.match(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # a malformed hint: fall back to exponential backoff
    return max(0.0, when.timestamp() - time.time())


NO_KEY = "no-key"  # sent to keyless local servers; the SDK clients refuse an empty key


def provider_key(name: str, env_name: str | None, base_url: str | None) -> str:
    """The API key a provider client is built with.

    The key comes from the env var named ``env_name``; without it, a provider pointed at its own
    ``base_url`` (a local or self-hosted server) gets the placeholder ``NO_KEY``, and one pointed at
    the hosted API is a configuration error that names the missing variable (never its value).
    """
    key = read_api_key(env_name)
    if key is not None:
        return key
    if base_url is None:
        raise ConfigError(
            f"{name}: the API key env var {env_name!r} is not set "
            "(set it, or give a base_url for a keyless local server)"
        )
    return NO_KEY
