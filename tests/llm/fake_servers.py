"""Stand-in LLM servers for tests: real HTTP on 127.0.0.1, scriptable per test.

``FakeOpenAIServer`` speaks ``POST /v1/chat/completions`` (with ``usage``);
``FakeGeminiServer`` speaks ``POST /v1beta/models/{model}:generateContent`` (and ``/v1/...``; with
``usageMetadata``). Both answer from a queue of behaviours, then from ``default`` (a behaviour or a
callable ``RecordedRequest -> Behaviour``); with neither, an unscripted request gets HTTP 400 so a
test can never pass by accident.

Usage from any test::

    from tests.llm.fake_servers import FakeOpenAIServer, ok, error, rate_limited, hang

    with FakeOpenAIServer() as server:
        server.push(error(500), ok('{"verdict": "ok"}'))
        provider = OpenAIProvider("gpt-test", base_url=server.base_url, api_key_env="MY_KEY")
        ...
        assert server.calls == 2

The servers answer requests side by side (a thread each) and count them: ``in_flight`` is how many
are being answered now, ``max_in_flight`` the most at once, so a test of a concurrency limit
asserts on what the server saw.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


# ---- behaviours -------------------------------------------------------------------------------
@dataclass
class Behaviour:
    kind: str  # "ok" | "error" | "disconnect" | "raw"
    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    message: str = ""
    body: bytes = b""
    echo_key: bool = False


def ok(text: str, *, prompt_tokens: int | None = None, completion_tokens: int | None = None,
       delay_s: float = 0.0) -> Behaviour:
    """A normal completion with ``text``. Token counts default to word counts."""
    return Behaviour("ok", text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     delay_s=delay_s)


def error(status: int = 500, message: str = "internal error", *, headers: dict[str, str] | None = None,
          echo_key: bool = False) -> Behaviour:
    """An API error body with ``status``. ``echo_key`` puts the received API key in the message
    (as some servers do), to prove the client side redacts it."""
    return Behaviour("error", status=status, message=message, headers=dict(headers or {}), echo_key=echo_key)


def rate_limited(retry_after: float | str | None = 1, message: str = "rate limit exceeded") -> Behaviour:
    """HTTP 429 with a ``Retry-After`` header (seconds), or none when ``retry_after`` is None."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return error(429, message, headers=headers)


def hang(seconds: float, text: str = '{"late": true}') -> Behaviour:
    """Answer only after ``seconds`` (longer than the client's timeout)."""
    return ok(text, delay_s=seconds)


def malformed(text: str = '{"verdict": "error", "category": ') -> Behaviour:
    """A 200 whose model text is not valid JSON."""
    return ok(text)


def truncated(text: str = '{"verdict": "error", "explanation": "the reply was cut') -> Behaviour:
    """A 200 whose text stops mid-JSON with finish reason length / MAX_TOKENS."""
    b = ok(text)
    b.finish_reason = "length"
    return b


def disconnect() -> Behaviour:
    """Close the connection without answering."""
    return Behaviour("disconnect")


def raw(body: bytes | str, status: int = 200, content_type: str = "application/json") -> Behaviour:
    """Send ``body`` verbatim (e.g. a broken API envelope)."""
    data = body.encode() if isinstance(body, str) else body
    return Behaviour("raw", body=data, status=status, headers={"Content-Type": content_type})


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (or the raw text when it was not JSON)
    model: str | None
    received_at: float

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return self.headers.get("x-goog-api-key")


# ---- servers ----------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY the body waits for the client's
    # delayed ACK (about 40 ms on loopback), which would add to every request's latency
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length).decode("utf-8") if length else ""
        try:
            body: Any = json.loads(raw_body) if raw_body else None
        except json.JSONDecodeError:
            body = raw_body
        fake = self.server.fake
        model = fake.match(self.path)
        if model is None:
            self._send(404, {"error": {"code": 404, "message": f"no route {self.path}"}}, {})
            return
        recorded = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body, model,
                                   time.monotonic())
        fake.enter()
        try:
            self._answer(fake, recorded)
        finally:
            fake.leave()

    def _answer(self, fake: _FakeServer, recorded: RecordedRequest) -> None:
        behaviour = fake.next_behaviour(recorded)
        if behaviour.delay_s:
            if fake.stopping.wait(behaviour.delay_s):
                return
        if behaviour.kind == "disconnect":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if behaviour.kind == "raw":
            self._send_bytes(behaviour.status, behaviour.body, behaviour.headers)
            return
        if behaviour.kind == "error":
            message = behaviour.message
            if behaviour.echo_key:
                message = f"{message}: invalid api key {recorded.api_key}"
            self._send(behaviour.status, fake.error_body(behaviour.status, message), behaviour.headers)
            return
        self._send(200, fake.ok_body(recorded, behaviour), behaviour.headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})

    def _send_bytes(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # the client gave up (a timeout test); nothing left to answer
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: a burst of concurrent clients connects at once
    fake: _FakeServer


Default = Behaviour | Callable[[RecordedRequest], Behaviour] | None


class _FakeServer:
    def __init__(self, default: Default = None) -> None:
        self.default = default
        self.requests: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self.in_flight = 0  # requests being answered now (read, not yet fully answered)
        self.max_in_flight = 0  # the most at once since start (or reset)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # scripting
    def push(self, *behaviours: Behaviour) -> _FakeServer:
        with self._lock:
            self._queue.extend(behaviours)
        return self

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def next_behaviour(self, recorded: RecordedRequest) -> Behaviour:
        with self._lock:
            self.requests.append(recorded)
            if self._queue:
                return self._queue.popleft()
        if self.default is None:
            return error(400, f"fake server: no behaviour scripted for request #{len(self.requests)}")
        if isinstance(self.default, Behaviour):
            return self.default
        return self.default(recorded)

    # lifecycle
    def start(self) -> _FakeServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> _FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # dialect hooks
    def match(self, path: str) -> str | None:
        raise NotImplementedError

    def ok_body(self, recorded: RecordedRequest, behaviour: Behaviour) -> dict[str, Any]:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError


def _words(text: str) -> int:
    return max(1, len(text.split()))


class FakeOpenAIServer(_FakeServer):
    """``base_url`` is ``http://127.0.0.1:<port>/v1`` (what ``openai.OpenAI(base_url=...)`` takes)."""

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def match(self, path: str) -> str | None:
        return "chat" if path.rstrip("/") == "/v1/chat/completions" else None

    def ok_body(self, recorded: RecordedRequest, behaviour: Behaviour) -> dict[str, Any]:
        body = recorded.body if isinstance(recorded.body, dict) else {}
        recorded.model = body.get("model")
        prompt_text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        prompt = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else _words(prompt_text)
        completion = (behaviour.completion_tokens if behaviour.completion_tokens is not None
                      else _words(behaviour.text))
        return {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": behaviour.text},
                "finish_reason": behaviour.finish_reason,
            }],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(status, "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}


_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                  504: "DEADLINE_EXCEEDED"}


class FakeGeminiServer(_FakeServer):
    """``base_url`` is ``http://127.0.0.1:<port>`` (``HttpOptions(base_url=...)``; the client adds
    ``/v1beta/models/{model}:generateContent``)."""

    @property
    def base_url(self) -> str:
        return self.root_url

    def match(self, path: str) -> str | None:
        path = path.split("?", 1)[0]
        for prefix in ("/v1beta/models/", "/v1/models/"):
            if path.startswith(prefix) and path.endswith(":generateContent"):
                return path[len(prefix):-len(":generateContent")]
        return None

    def ok_body(self, recorded: RecordedRequest, behaviour: Behaviour) -> dict[str, Any]:
        body = recorded.body if isinstance(recorded.body, dict) else {}
        texts = [p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", [])]
        system = body.get("systemInstruction") or body.get("system_instruction") or {}
        texts += [p.get("text", "") for p in system.get("parts", [])]
        prompt = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else _words(" ".join(texts))
        completion = (behaviour.completion_tokens if behaviour.completion_tokens is not None
                      else _words(behaviour.text))
        finish = "MAX_TOKENS" if behaviour.finish_reason == "length" else "STOP"
        return {
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": behaviour.text}]},
                "finishReason": finish,
                "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                              "totalTokenCount": prompt + completion},
            "modelVersion": recorded.model,
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}
