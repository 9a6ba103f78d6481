"""API-key hygiene: keys come from env vars, are registered here, and are redacted from any text.

Providers call :func:`register_secret` with the key they read. Every message this package puts in
an exception or a log record goes through :func:`redact`, and :class:`RedactingFilter` can be
attached to log handlers so third-party loggers (SDKs, httpx) are scrubbed too.
"""

from __future__ import annotations

import logging
import os
import threading

REDACTED = "[REDACTED]"
_MIN_SECRET_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so :func:`redact` removes it from text."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    """``str(text)`` with every registered secret replaced by ``[REDACTED]``."""
    out = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, REDACTED)
    return out


def read_api_key(env_name: str | None) -> str | None:
    """Read an API key from the env var *named* ``env_name`` (at call time) and register it.

    Returns None when ``env_name`` is empty or the variable is unset; callers decide whether a
    missing key is an error (it is for the hosted APIs, not for a keyless local server).
    """
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value:
        register_secret(value)
        return value
    return None


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites a record's message with secrets redacted.

    Attach it to a *handler* (handler filters see records from every logger, including SDKs):
    ``handler.addFilter(RedactingFilter())``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
