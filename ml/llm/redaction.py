"""API-key hygiene: keys come from env vars, are registered here, and are redacted from any text.

Providers call :func:`register_secret` with the key they read. Every message this package puts in
an exception or a log record goes through :func:`redact`. :func:`install_redaction` (called when a
router is built) scrubs every other log record too, the SDKs' (openai, httpx, google-genai) included.
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


# the loggers of the SDKs the providers use, and our own
SDK_LOGGERS = ("openai", "httpx", "httpcore", "google_genai", "google.genai", "ml")


def scrub_record(record: logging.LogRecord) -> None:
    """Rewrite ``record`` in place so no registered secret is in its message, traceback or stack.

    The message is formatted now (``msg % args``) when it holds a secret. A message whose
    arguments do not format is kept as ``msg`` plus the arguments' repr, redacted, so the logging
    call neither fails nor leaks. A traceback (``exc_info``) holding a secret is formatted here
    and stored redacted in ``exc_text``, which formatters print instead of formatting it again.
    """
    try:
        message = record.getMessage()
    except (TypeError, ValueError, KeyError) as exc:
        record.msg = redact(f"{record.msg} (unformattable log arguments {record.args!r}: {exc})")
        record.args = None
    else:
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(text)
        if cleaned != text:
            record.exc_text = cleaned
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites a record with secrets redacted (see :func:`scrub_record`).

    On a *handler* it sees records from every logger that reach the handler; on a *logger* only
    the records logged on that very logger (not its children). :func:`install_redaction` attaches
    it where it is needed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_install_lock = threading.Lock()
_factory_installed = False


def _install_record_factory() -> None:
    """Scrub every record as it is created, whichever logger or handler it goes to (handlers added
    later and child loggers such as ``openai._base_client`` included)."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub_record(record)
        return record

    factory.learnloop_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    _factory_installed = True


def _add_filter(target: logging.Filterer) -> bool:
    if any(isinstance(f, RedactingFilter) for f in target.filters):
        return False
    target.addFilter(RedactingFilter())
    return True


def install_redaction(extra_loggers: tuple[str, ...] = ()) -> int:
    """Make sure no registered secret reaches a log line. Idempotent; safe to call often.

    Installs a record factory that scrubs every log record at creation, and attaches a
    :class:`RedactingFilter` to the root logger, its handlers, and the loggers of the SDKs we use
    (:data:`SDK_LOGGERS` plus ``extra_loggers``) and their handlers, for records built by a
    record factory installed after this one. Returns how many filters were added by this call
    (0 when everything was in place already).
    """
    added = 0
    with _install_lock:
        _install_record_factory()
        root = logging.getLogger()
        targets: list[logging.Filterer] = [root, *root.handlers]
        for name in (*SDK_LOGGERS, *extra_loggers):
            logger = logging.getLogger(name)
            targets += [logger, *logger.handlers]
        for target in targets:
            added += _add_filter(target)
    return added
