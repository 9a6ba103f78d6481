"""Log redaction: install_redaction() keeps a registered API key out of every log line (root
handlers, SDK loggers and their children, handlers added later, tracebacks), and building a
router installs it."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ml.llm import install_redaction
from ml.llm.redaction import RedactingFilter, read_api_key

ROOT = Path(__file__).resolve().parents[2]
ENV = "LEARNLOOP_TEST_REDACT_KEY"


@pytest.fixture()
def secret(monkeypatch) -> str:
    import secrets

    value = "sk-redact-" + secrets.token_hex(12)
    monkeypatch.setenv(ENV, value)
    assert read_api_key(ENV) == value  # read from the real env var, and registered
    return value


def _stream_handler(logger: logging.Logger) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler, stream


def test_install_redaction_scrubs_sdk_and_root_log_lines(secret):
    root = logging.getLogger()
    early, early_stream = _stream_handler(root)        # there before install
    sdk = logging.getLogger("google_genai")
    own, own_stream = _stream_handler(sdk)              # an SDK logger's own handler
    try:
        install_redaction()
        assert install_redaction() == 0                 # idempotent: nothing added twice
        assert sum(isinstance(f, RedactingFilter) for f in early.filters) == 1
        late, late_stream = _stream_handler(root)       # added after install
        try:
            logging.getLogger("openai._base_client").warning("Request options: Bearer %s", secret)
            logging.getLogger("httpx").warning("HTTP Request with key=%s", secret)
            sdk.warning(f"api key {secret} rejected")
            root.warning("root logger: %s", secret)
            logging.getLogger("httpcore.http11").warning("%d bytes", secret)  # args that do not format
            try:
                raise RuntimeError(f"server echoed {secret}")
            except RuntimeError:
                logging.getLogger("ml.llm.test").exception("call failed")
        finally:
            root.removeHandler(late)
    finally:
        root.removeHandler(early)
        sdk.removeHandler(own)
    for stream in (early_stream, late_stream):
        text = stream.getvalue()
        assert secret not in text
        for needle in ("Request options: Bearer [REDACTED]", "HTTP Request with key=[REDACTED]",
                       "api key [REDACTED] rejected", "root logger: [REDACTED]",
                       "httpcore.http11 WARNING %d bytes (unformattable log arguments",
                       "RuntimeError: server echoed [REDACTED]", "Traceback"):
            assert needle in text, (needle, text)
    assert secret not in own_stream.getvalue()
    assert "api key [REDACTED] rejected" in own_stream.getvalue()


def test_filter_alone_scrubs_a_traceback(secret):
    """The filter formats and redacts a traceback itself (a handler formats it only later)."""
    logger = logging.getLogger("some.sdk.redaction-test")
    logger.propagate = False
    handler, stream = _stream_handler(logger)
    handler.addFilter(RedactingFilter())
    try:
        try:
            raise ValueError(f"bad key {secret}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert secret not in stream.getvalue() and "ValueError: bad key [REDACTED]" in stream.getvalue()


BUILD_SCRIPT = textwrap.dedent(f"""
    import io, logging, os
    from ml.llm import build_router
    from ml.llm.redaction import read_api_key

    stream = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(stream))
    key = read_api_key({ENV!r})
    logging.getLogger("openai").warning("before build: %s", key)
    build_router("auditor", {{"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                              "api_key_env": {ENV!r}, "cache_backend": "none"}})
    logging.getLogger("openai").warning("after build: %s", key)
    logging.getLogger("httpx").warning("after build, httpx: %s", key)
    print(stream.getvalue().replace(key, "<THE KEY>"))
""")


def test_building_a_router_installs_redaction(secret):
    """In a fresh interpreter: before any router is built a secret still reaches the log (nothing
    is installed at import), after build_router it does not."""
    done = subprocess.run([sys.executable, "-c", BUILD_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "before build: <THE KEY>" in out
    assert "after build: [REDACTED]" in out and "after build, httpx: [REDACTED]" in out
    assert out.count("<THE KEY>") == 1
