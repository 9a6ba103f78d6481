"""Stand-in fine-tuning servers for tests: real HTTP on 127.0.0.1, a scriptable job lifecycle.

``FakeOpenAIFineTuneServer`` speaks ``POST /v1/files`` (multipart; the uploaded bytes are kept in
``server.files``), ``POST /v1/fine_tuning/jobs``, ``GET /v1/fine_tuning/jobs/{id}`` and
``POST /v1/fine_tuning/jobs/{id}/cancel``.

``FakeGeminiTuningServer`` speaks what google-genai sends: the Developer API's
``POST /v1beta/tunedModels`` (-> an operation), ``GET /v1beta/tunedModels/{id}`` and
``POST /v1beta/tunedModels/{id}:cancel``; with ``vertex=True`` Vertex AI's
``POST /v1beta1/tuningJobs``, ``GET /v1beta1/projects/.../tuningJobs/{id}`` and ``...:cancel``.

Lifecycle: ``server.script(step, step, ...)`` sets the steps of the *next* job created; the
create reply shows the first step and every read (GET) moves one step on, then stays on the
last. A step is a status word or a dict of fields to set (``{"status": "failed", "error":
{...}}``). ``server.set_status(job_id, status, **fields)`` changes a job at once. Without a
script a job is created in the server's first status and stays there. ``server.fail_next(status,
message, echo_key=False)`` answers the next request with an API error (``echo_key`` puts the
received key in the message, as some servers do, to prove the client redacts it). Unknown
paths are 404, unknown jobs 404, malformed bodies 400: a test cannot pass by accident.

Every request is in ``server.requests`` (method, path, headers, parsed body, raw bytes).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = str | dict[str, Any]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, the multipart fields, or None
    raw: bytes

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return self.headers.get("x-goog-api-key")


@dataclass
class UploadedFile:
    id: str
    filename: str
    purpose: str
    content: bytes


@dataclass
class FakeJob:
    id: str
    fields: dict[str, Any]
    steps: deque[Step] = field(default_factory=deque)


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake = self.server.fake
        recorded = RecordedRequest(method, self.path, headers, None, raw)
        with fake.lock:
            fake.requests.append(recorded)
            failure = fake.failures.popleft() if fake.failures else None
        if failure is not None:
            status, message, echo_key = failure
            if echo_key:
                message = f"{message}: invalid api key {recorded.api_key}"
            self._send(status, fake.error_body(status, message))
            return
        try:
            recorded.body = fake.parse_body(headers, raw)
            with fake.lock:
                payload = fake.route(method, self.path.split("?", 1)[0], recorded)
        except HTTPError as exc:
            self._send(exc.status, fake.error_body(exc.status, exc.message))
            return
        except Exception as exc:  # a broken script: fail the test loudly, never answer 200
            self._send(500, fake.error_body(500, f"fake server bug: {type(exc).__name__}: {exc}"))
            return
        self._send(200, payload)

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: _FakeJobServer


class _FakeJobServer:
    first_status = "queued"

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, FakeJob] = {}
        self.failures: deque[tuple[int, str, bool]] = deque()
        self.lock = threading.RLock()
        self._next_steps: deque[Step] = deque()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # scripting
    def script(self, *steps: Step) -> _FakeJobServer:
        """The lifecycle of the next job created (see the module docstring)."""
        if not steps:
            raise ValueError("script() needs at least one step")
        with self.lock:
            self._next_steps = deque(steps)
        return self

    def set_status(self, job_id: str, status: str, **fields: Any) -> None:
        with self.lock:
            job = self._job(job_id)
            job.steps.clear()
            self._apply(job, {"status": status, **fields})

    def fail_next(self, status: int, message: str = "fake failure", *, echo_key: bool = False) -> None:
        with self.lock:
            self.failures.append((status, message, echo_key))

    def job(self, job_id: str) -> FakeJob:
        with self.lock:
            return self._job(job_id)

    def requests_to(self, method: str, pattern: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path.split("?")[0])]

    # internals
    def _job(self, job_id: str) -> FakeJob:
        if job_id not in self.jobs:
            raise HTTPError(404, f"no job {job_id}")
        return self.jobs[job_id]

    def _new_job(self, job_id: str, fields: dict[str, Any]) -> FakeJob:
        steps, self._next_steps = self._next_steps, deque()
        job = FakeJob(job_id, fields, steps)
        self.jobs[job_id] = job
        self._apply(job, job.steps.popleft() if job.steps else self.first_status)
        return job

    def _advance(self, job: FakeJob) -> None:
        if job.steps:
            self._apply(job, job.steps.popleft())

    def _apply(self, job: FakeJob, step: Step) -> None:
        update = {"status": step} if isinstance(step, str) else dict(step)
        self.on_status(job, update)

    def parse_body(self, headers: dict[str, str], raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPError(400, "the body is not JSON") from None

    # dialect hooks
    def route(self, method: str, path: str, recorded: RecordedRequest) -> Any:
        raise NotImplementedError

    def on_status(self, job: FakeJob, update: dict[str, Any]) -> None:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    # lifecycle
    def start(self) -> _FakeJobServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> _FakeJobServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"


# ---- OpenAI -----------------------------------------------------------------------------------

_OPENAI_FINISHED = {"succeeded", "failed", "cancelled"}
_OPENAI_STATUSES = {"validating_files", "queued", "running", *_OPENAI_FINISHED}


class FakeOpenAIFineTuneServer(_FakeJobServer):
    """``base_url`` is ``http://127.0.0.1:<port>/v1``. Jobs start ``validating_files`` unless
    scripted. A ``succeeded`` step without ``fine_tuned_model`` / ``trained_tokens`` gets
    ``ft:<model>:<suffix>:<job id>`` and ``default_trained_tokens``."""

    first_status = "validating_files"
    default_trained_tokens = 4242

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, UploadedFile] = {}

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def parse_body(self, headers: dict[str, str], raw: bytes) -> Any:
        ctype = headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
            if not message.is_multipart():
                raise HTTPError(400, "a broken multipart body")
            fields: dict[str, Any] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                filename = part.get_filename()
                payload = part.get_payload(decode=True) or b""
                fields[name] = (filename, payload) if filename is not None else payload.decode()
            return fields
        return super().parse_body(headers, raw)

    def route(self, method: str, path: str, recorded: RecordedRequest) -> Any:
        body = recorded.body
        if method == "POST" and path == "/v1/files":
            if not isinstance(body, dict) or not isinstance(body.get("file"), tuple):
                raise HTTPError(400, "POST /v1/files needs a multipart 'file'")
            if body.get("purpose") != "fine-tune":
                raise HTTPError(400, f"purpose must be fine-tune, got {body.get('purpose')!r}")
            filename, content = body["file"]
            file_id = f"file-fake{next(self._ids)}"
            self.files[file_id] = UploadedFile(file_id, filename, body["purpose"], content)
            return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                    "filename": filename, "purpose": "fine-tune", "status": "processed"}
        if method == "POST" and path == "/v1/fine_tuning/jobs":
            return self._create(body)
        m = re.fullmatch(r"/v1/fine_tuning/jobs/([^/]+)", path)
        if method == "GET" and m:
            job = self._job(m.group(1))
            self._advance(job)
            return job.fields
        m = re.fullmatch(r"/v1/fine_tuning/jobs/([^/]+)/cancel", path)
        if method == "POST" and m:
            job = self._job(m.group(1))
            if job.fields["status"] in _OPENAI_FINISHED:
                raise HTTPError(400, f"job {job.id} is already {job.fields['status']}")
            job.steps.clear()
            self._apply(job, "cancelled")
            return job.fields
        raise HTTPError(404, f"no route {method} {path}")

    def _create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise HTTPError(400, "model is required")
        for key in ("training_file", "validation_file"):
            file_id = body.get(key)
            if key == "training_file" or file_id is not None:
                if file_id not in self.files:
                    raise HTTPError(400, f"{key} {file_id!r} was not uploaded")
        hp = (((body.get("method") or {}).get("supervised") or {}).get("hyperparameters")
              or body.get("hyperparameters") or {})
        job_id = f"ftjob-fake{next(self._ids)}"
        fields = {
            "id": job_id, "object": "fine_tuning.job", "created_at": 1_700_000_000,
            "model": body["model"], "organization_id": "org-fake", "result_files": [], "seed": 7,
            "training_file": body["training_file"], "validation_file": body.get("validation_file"),
            "hyperparameters": {"n_epochs": hp.get("n_epochs", "auto"), "batch_size": hp.get("batch_size", "auto"),
                                "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto")},
            "method": body.get("method"), "suffix": body.get("suffix"),
            "fine_tuned_model": None, "finished_at": None, "trained_tokens": None, "error": None,
            "estimated_finish": None,
        }
        return self._new_job(job_id, fields).fields

    def on_status(self, job: FakeJob, update: dict[str, Any]) -> None:
        status = update.get("status", job.fields.get("status"))
        if status not in _OPENAI_STATUSES:
            raise ValueError(f"not an OpenAI job status: {status!r}")
        job.fields.update(update)
        if status in _OPENAI_FINISHED and job.fields.get("finished_at") is None:
            job.fields["finished_at"] = 1_700_003_600
        if status == "succeeded":
            if job.fields.get("fine_tuned_model") is None:
                suffix = job.fields.get("suffix") or "fake"
                job.fields["fine_tuned_model"] = f"ft:{job.fields['model']}:{suffix}:{job.id}"
            if job.fields["trained_tokens"] is None:
                job.fields["trained_tokens"] = self.default_trained_tokens
        if status == "failed" and job.fields.get("error") is None:
            job.fields["error"] = {"code": "fake_error", "message": "the job failed", "param": None}

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# ---- Gemini -----------------------------------------------------------------------------------

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_VERTEX_STATES = {"JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED",
                  "JOB_STATE_FAILED", "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"}
_MLDEV_STATES = {"CREATING", "ACTIVE", "FAILED", "JOB_STATE_CANCELLED"}
_FINISHED_STATES = {"ACTIVE", "FAILED", "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


class FakeGeminiTuningServer(_FakeJobServer):
    """``base_url`` is ``http://127.0.0.1:<port>`` (``HttpOptions(base_url=...)``).

    Developer API mode (default): tuned models ``tunedModels/fake-model-N`` in states
    ``CREATING`` / ``ACTIVE`` / ``FAILED`` (the API's ``TunedModel.State``); a cancel sets
    ``JOB_STATE_CANCELLED`` (the API documents no cancelled state for a tuned model; the SDK
    passes JobState names through). Steps may set ``snapshots`` (the training progress).
    Vertex mode (``vertex=True``, express mode: no project in the create path): tuning jobs
    ``projects/fake-project/locations/us-central1/tuningJobs/N`` in ``JOB_STATE_*`` states; a
    ``JOB_STATE_SUCCEEDED`` step fills ``tunedModel`` and ``tuningDataStats`` (``billable_tokens``).
    """

    def __init__(self, *, vertex: bool = False, billable_tokens: int = 1500) -> None:
        super().__init__()
        self.vertex = vertex
        self.billable_tokens = billable_tokens
        self.first_status = "JOB_STATE_PENDING" if vertex else "CREATING"

    @property
    def base_url(self) -> str:
        return self.root_url

    def created_bodies(self) -> list[Any]:
        path = r"/v1beta1/tuningJobs" if self.vertex else r"/v1beta/tunedModels"
        return [r.body for r in self.requests_to("POST", path)]

    def route(self, method: str, path: str, recorded: RecordedRequest) -> Any:
        if self.vertex:
            return self._route_vertex(method, path, recorded.body)
        return self._route_mldev(method, path, recorded.body)

    def _route_mldev(self, method: str, path: str, body: Any) -> Any:
        if method == "POST" and path == "/v1beta/tunedModels":
            if not isinstance(body, dict) or not isinstance(body.get("baseModel"), str):
                raise HTTPError(400, "baseModel is required")
            examples = (((body.get("tuningTask") or {}).get("trainingData") or {}).get("examples") or {}
                        ).get("examples")
            if not isinstance(examples, list) or not examples or not all(
                    isinstance(e, dict) and isinstance(e.get("textInput"), str) and isinstance(e.get("output"), str)
                    for e in examples):
                raise HTTPError(400, "tuningTask.trainingData.examples.examples must list {textInput, output}")
            name = f"tunedModels/fake-model-{next(self._ids)}"
            fields = {"name": name, "baseModel": body["baseModel"], "displayName": body.get("displayName"),
                      "createTime": "2024-05-01T10:00:00Z", "updateTime": "2024-05-01T10:00:00Z",
                      "tuningTask": {"startTime": "2024-05-01T10:00:00Z",
                                     "hyperparameters": (body.get("tuningTask") or {}).get("hyperparameters", {})}}
            self._new_job(name, fields)
            return {"name": f"{name}/operations/op-1",
                    "metadata": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                                          "CreateTunedModelMetadata",
                                 "tunedModel": name, "totalSteps": 10}}
        m = re.fullmatch(r"/v1beta/(tunedModels/[^/:]+)", path)
        if method == "GET" and m:
            job = self._job(m.group(1))
            self._advance(job)
            return job.fields
        m = re.fullmatch(r"/v1beta/(tunedModels/[^/:]+):cancel", path)
        if method == "POST" and m:
            return self._cancel(m.group(1))
        raise HTTPError(404, f"no route {method} {path}")

    def _route_vertex(self, method: str, path: str, body: Any) -> Any:
        if method == "POST" and path == "/v1beta1/tuningJobs":
            spec = body.get("supervisedTuningSpec") if isinstance(body, dict) else None
            if not isinstance(spec, dict) or not str(spec.get("trainingDatasetUri", "")).startswith("gs://"):
                raise HTTPError(400, "supervisedTuningSpec.trainingDatasetUri must be a gs:// URI")
            name = f"projects/fake-project/locations/us-central1/tuningJobs/{next(self._ids)}"
            fields = {"name": name, "baseModel": body.get("baseModel"),
                      "tunedModelDisplayName": body.get("tunedModelDisplayName"),
                      "createTime": "2024-05-01T10:00:00Z", "supervisedTuningSpec": spec}
            return self._new_job(name, fields).fields
        m = re.fullmatch(r"/v1beta1/(projects/[^:]+/tuningJobs/[^/:]+)", path)
        if method == "GET" and m:
            job = self._job(m.group(1))
            self._advance(job)
            return job.fields
        m = re.fullmatch(r"/v1beta1/(projects/[^:]+/tuningJobs/[^/:]+):cancel", path)
        if method == "POST" and m:
            return self._cancel(m.group(1))
        raise HTTPError(404, f"no route {method} {path}")

    def _cancel(self, name: str) -> dict[str, Any]:
        job = self._job(name)
        if job.fields["state"] in _FINISHED_STATES:
            raise HTTPError(400, f"{name} is already {job.fields['state']}")
        job.steps.clear()
        self._apply(job, "JOB_STATE_CANCELLED")
        return {}

    def on_status(self, job: FakeJob, update: dict[str, Any]) -> None:
        state = update.pop("status", None) or job.fields.get("state")
        allowed = _VERTEX_STATES if self.vertex else _MLDEV_STATES
        if state not in allowed:
            raise ValueError(f"not a {'Vertex' if self.vertex else 'Developer API'} state: {state!r}")
        job.fields["state"] = state
        for key, value in update.items():
            if key == "snapshots":
                job.fields["tuningTask"]["snapshots"] = value
            else:
                job.fields[key] = value
        if state in _FINISHED_STATES:
            if self.vertex:
                job.fields.setdefault("endTime", "2024-05-01T11:00:00Z")
            else:
                job.fields["tuningTask"].setdefault("completeTime", "2024-05-01T11:00:00Z")
        if self.vertex and state == "JOB_STATE_SUCCEEDED":
            job.fields.setdefault("tunedModel", {
                "model": "projects/fake-project/locations/us-central1/models/777@1",
                "endpoint": "projects/fake-project/locations/us-central1/endpoints/888"})
            job.fields.setdefault("tuningDataStats", {"supervisedTuningDataStats": {
                "totalBillableTokenCount": str(self.billable_tokens), "tuningStepCount": "12"}})
        if self.vertex and state == "JOB_STATE_FAILED":
            job.fields.setdefault("error", {"code": 3, "message": "the job failed"})

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}}
