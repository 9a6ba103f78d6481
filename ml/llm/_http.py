"""Helpers shared by the HTTP providers: Retry-After parsing and status classification."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping

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
