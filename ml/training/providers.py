"""Provider fine-tunes (OpenAI, Gemini) as jobs: one call submits, later polls follow.

Nothing here waits or sleeps: :meth:`FineTuneProvider.submit` uploads the data and creates the
job, :meth:`~FineTuneProvider.poll` reads its state once, :meth:`~FineTuneProvider.cancel` asks
the API to stop it. A caller (a Dagster sensor) stores ``job_id`` and polls on its own schedule.

Both providers read a dataset version folder (``ml.datasets.exports``): ``openai/train.jsonl`` /
``openai/validation.jsonl`` and ``gemini/train.jsonl`` / ``gemini/validation.jsonl``.

Every state comes back as a :class:`JobState` whose ``status`` is one of :data:`STATUSES`.
Errors are :class:`FineTuneError` (``status_code`` is the HTTP status when there was one);
configuration problems (a missing key variable, a missing file, an unknown hyperparameter) are
:class:`FineTuneConfigError`. API keys come from the env var *named* by ``api_key_env``, are
registered with :mod:`ml.llm.redaction` and are redacted from every message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
import openai
from google import genai
from google.genai import _common as genai_common
from google.genai import errors as genai_errors
from google.genai import types

from ml.llm.redaction import read_api_key, redact

log = logging.getLogger(__name__)

try:  # google-genai and openai may run on httpx2 (a fork with its own exception classes)
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover - depends on the installed SDKs
    _TRANSPORT_ERRORS = (httpx.TransportError,)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})

# the hyperparameters both providers take (OpenAI names); anything else is refused
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")

OPENAI_TRAIN, OPENAI_VALIDATION = "openai/train.jsonl", "openai/validation.jsonl"
GEMINI_TRAIN, GEMINI_VALIDATION = "gemini/train.jsonl", "gemini/validation.jsonl"


# ---- common types -----------------------------------------------------------------------------

class FineTuneError(Exception):
    """A fine-tuning call failed. ``provider`` is ``openai`` or ``gemini``; ``status_code`` is
    the HTTP status of the API's answer (None for a transport error or a local problem). The
    message is redacted of every registered API key."""

    def __init__(self, provider: str, message: str, *, status_code: int | None = None) -> None:
        self.provider = provider
        self.status_code = status_code
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(redact(f"{provider} fine-tune{status}: {message}"))


class FineTuneConfigError(FineTuneError, ValueError):
    """The fine-tune cannot be asked for as configured (names the variable, file or field)."""


@dataclass(frozen=True)
class JobState:
    """One observation of a provider fine-tuning job.

    ``status`` is normalised to :data:`STATUSES`; ``raw_status`` is the provider's word.
    ``model_id`` is the fine-tuned model to call, set only when the job succeeded.
    ``trained_tokens`` is what the provider bills (None when it did not say). ``progress``
    holds what the API reports on the way (steps, epochs, estimates). ``created_at`` and
    ``finished_at`` are epoch seconds.
    """

    provider: str
    job_id: str
    status: str
    raw_status: str
    model_id: str | None = None
    trained_tokens: int | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None
    finished_at: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"JobState.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def finished(self) -> bool:
        """True once the job will not change any more (succeeded, failed or cancelled)."""
        return self.status in FINISHED


def cost_usd(state: JobState, price_per_million_training_tokens: float) -> float | None:
    """The training cost of ``state``'s job in USD; None when the provider reported no tokens."""
    if price_per_million_training_tokens < 0:
        raise ValueError(f"price_per_million_training_tokens must not be negative, "
                         f"got {price_per_million_training_tokens}")
    if state.trained_tokens is None:
        return None
    return state.trained_tokens * price_per_million_training_tokens / 1e6


@runtime_checkable
class FineTuneProvider(Protocol):
    def submit(self, dataset_dir: str | Path, base_model: str, *, suffix: str | None = None,
               hyperparameters: Mapping[str, Any] | None = None) -> JobState: ...

    def poll(self, job_id: str) -> JobState: ...

    def cancel(self, job_id: str) -> JobState: ...


# ---- helpers ----------------------------------------------------------------------------------

def _require_key(provider: str, env_name: str | None) -> str:
    if not env_name:
        raise FineTuneConfigError(provider, "api_key_env is empty: name the env var holding the API key")
    key = read_api_key(env_name)
    if key is None:
        raise FineTuneConfigError(provider, f"the API key env var {env_name!r} is not set")
    return key


def _hyperparameters(provider: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``given`` checked: only :data:`HYPERPARAMETERS`, None values dropped."""
    out = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(out) - set(HYPERPARAMETERS))
    if unknown:
        raise FineTuneConfigError(provider, f"unknown hyperparameters {unknown}; "
                                            f"allowed: {list(HYPERPARAMETERS)}")
    for name in ("n_epochs", "batch_size"):
        value = out.get(name)
        if value is not None and value != "auto" and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise FineTuneConfigError(provider, f"hyperparameter {name} must be a positive integer "
                                                f"or 'auto', got {value!r}")
    lrm = out.get("learning_rate_multiplier")
    if lrm is not None and lrm != "auto" and (
            not isinstance(lrm, (int, float)) or isinstance(lrm, bool) or lrm <= 0):
        raise FineTuneConfigError(provider, f"hyperparameter learning_rate_multiplier must be a positive "
                                            f"number or 'auto', got {lrm!r}")
    return out


def _data_file(provider: str, dataset_dir: str | Path, rel: str, *, required: bool) -> Path | None:
    """The export file ``rel`` under ``dataset_dir``; None when optional and missing or empty."""
    path = Path(dataset_dir) / rel
    if not path.is_file() or path.stat().st_size == 0:
        if required:
            what = "is empty" if path.is_file() else "does not exist"
            raise FineTuneConfigError(provider, f"the training file {path} {what}")
        return None
    return path


def _epoch(value: Any) -> float | None:
    """Epoch seconds from an int, a datetime or an RFC 3339 string; None for None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    raise ValueError(f"not a timestamp: {value!r}")


# ---- OpenAI -----------------------------------------------------------------------------------

_OPENAI_STATUS = {"validating_files": QUEUED, "queued": QUEUED, "running": RUNNING,
                  "succeeded": SUCCEEDED, "failed": FAILED, "cancelled": CANCELLED}


class OpenAIFineTuner:
    """Supervised fine-tuning through ``openai.OpenAI``: ``files.create(purpose="fine-tune")``,
    ``fine_tuning.jobs.create`` / ``retrieve`` / ``cancel``.

    ``submit`` uploads ``openai/train.jsonl`` (and ``openai/validation.jsonl`` when it exists
    and is not empty) and creates a job with ``method={"type": "supervised", "supervised":
    {"hyperparameters": {...}}}`` (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``).
    The key is read from the env var named ``api_key_env`` when the tuner is built; it is required
    (also for a ``base_url``). ``max_retries`` is the SDK's own retry count (429 / 5xx /
    connection errors, with its backoff).
    """

    provider = "openai"

    def __init__(self, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60, max_retries: int = 2) -> None:
        if timeout_s <= 0:
            raise FineTuneConfigError(self.provider, f"timeout_s must be positive, got {timeout_s}")
        if max_retries < 0:
            raise FineTuneConfigError(self.provider, f"max_retries must not be negative, got {max_retries}")
        key = _require_key(self.provider, api_key_env)
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout_s,
                                     max_retries=max_retries)

    def __repr__(self) -> str:
        return (f"OpenAIFineTuner(base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, "
                f"timeout_s={self.timeout_s}, max_retries={self.max_retries})")

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except openai.APIStatusError as exc:
            raise FineTuneError(self.provider, f"{what}: {exc.message}",
                                status_code=exc.status_code) from None
        except openai.APITimeoutError:
            raise FineTuneError(self.provider, f"{what}: no reply within {self.timeout_s}s") from None
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "unknown"
            raise FineTuneError(self.provider, f"{what}: connection error ({cause})") from None
        except openai.APIResponseValidationError as exc:
            raise FineTuneError(self.provider, f"{what}: unusable response: {exc}") from None

    def _upload(self, path: Path) -> str:
        uploaded = self._call(f"uploading {path.name}", self._client.files.create,
                              file=(path.name, path.read_bytes(), "application/jsonl"),
                              purpose="fine-tune")
        file_id = getattr(uploaded, "id", None)
        if not isinstance(file_id, str) or not file_id:
            raise FineTuneError(self.provider, f"uploading {path.name}: the reply has no file id")
        return file_id

    def submit(self, dataset_dir: str | Path, base_model: str, *, suffix: str | None = None,
               hyperparameters: Mapping[str, Any] | None = None) -> JobState:
        if not base_model:
            raise FineTuneConfigError(self.provider, "base_model is required")
        hp = _hyperparameters(self.provider, hyperparameters)
        train = _data_file(self.provider, dataset_dir, OPENAI_TRAIN, required=True)
        assert train is not None
        validation = _data_file(self.provider, dataset_dir, OPENAI_VALIDATION, required=False)
        params: dict[str, Any] = {"model": base_model, "training_file": self._upload(train)}
        if validation is not None:
            params["validation_file"] = self._upload(validation)
        if suffix:
            params["suffix"] = suffix
        method: dict[str, Any] = {"type": "supervised", "supervised": {}}
        if hp:
            method["supervised"]["hyperparameters"] = hp
        params["method"] = method
        job = self._call("creating the job", self._client.fine_tuning.jobs.create, **params)
        return self._state(job)

    def poll(self, job_id: str) -> JobState:
        return self._state(self._call(f"reading job {job_id}", self._client.fine_tuning.jobs.retrieve,
                                      fine_tuning_job_id=job_id))

    def cancel(self, job_id: str) -> JobState:
        return self._state(self._call(f"cancelling job {job_id}", self._client.fine_tuning.jobs.cancel,
                                      fine_tuning_job_id=job_id))

    def _state(self, job: Any) -> JobState:
        job_id, raw = getattr(job, "id", None), getattr(job, "status", None)
        if not isinstance(job_id, str) or not job_id or not isinstance(raw, str):
            raise FineTuneError(self.provider, f"the reply is not a fine-tuning job (id={job_id!r}, "
                                               f"status={raw!r})")
        status = _OPENAI_STATUS.get(raw)
        if status is None:
            raise FineTuneError(self.provider, f"job {job_id} has an unknown status {raw!r}")
        error = None
        if status == FAILED:
            err = getattr(job, "error", None)
            message = getattr(err, "message", None) if err is not None else None
            code = getattr(err, "code", None) if err is not None else None
            error = (f"{code}: {message}" if code else message) if message else "failed (no reason given)"
            error = redact(error)
        progress: dict[str, Any] = {}
        hp = getattr(job, "hyperparameters", None)
        for name in HYPERPARAMETERS:
            value = getattr(hp, name, None) if hp is not None else None
            if value is not None:
                progress[name] = value
        if getattr(job, "estimated_finish", None) is not None:
            progress["estimated_finish"] = job.estimated_finish
        trained = getattr(job, "trained_tokens", None)
        return JobState(
            provider=self.provider, job_id=job_id, status=status, raw_status=raw,
            model_id=job.fine_tuned_model if status == SUCCEEDED else None,
            trained_tokens=trained if isinstance(trained, int) else None,
            error=error, progress=progress,
            created_at=_epoch(getattr(job, "created_at", None)),
            finished_at=_epoch(getattr(job, "finished_at", None)),
        )


# ---- Gemini -----------------------------------------------------------------------------------

_GEMINI_STATUS = {
    # google-genai JobState names (Vertex; the SDK also maps the Developer API's words to these)
    "JOB_STATE_UNSPECIFIED": QUEUED, "JOB_STATE_QUEUED": QUEUED, "JOB_STATE_PENDING": QUEUED,
    "JOB_STATE_RUNNING": RUNNING, "JOB_STATE_UPDATING": RUNNING, "JOB_STATE_PAUSED": RUNNING,
    "JOB_STATE_CANCELLING": RUNNING, "JOB_STATE_SUCCEEDED": SUCCEEDED,
    "JOB_STATE_FAILED": FAILED, "JOB_STATE_EXPIRED": FAILED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": FAILED, "JOB_STATE_CANCELLED": CANCELLED,
    # the Developer API's TunedModel.state
    "STATE_UNSPECIFIED": QUEUED, "CREATING": RUNNING, "ACTIVE": SUCCEEDED, "FAILED": FAILED,
}

_ROLE_LABEL = {"user": "User", "model": "Model"}


def _parts_text(provider: str, where: str, parts: Any) -> str:
    if not isinstance(parts, list) or not parts:
        raise FineTuneConfigError(provider, f"{where}: 'parts' must be a non-empty list")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise FineTuneConfigError(provider, f"{where}: every part must be {{'text': str}}")
        texts.append(part["text"])
    return "".join(texts)


def gemini_example(line: Mapping[str, Any], *, where: str = "line") -> types.TuningExample:
    """A Developer-API ``TuningExample(text_input, output)`` from one ``gemini/*.jsonl`` line.

    The Developer API tunes on (input text, output text) pairs only, so the conversation is
    flattened: ``output`` is the text of the last turn, which must be a ``model`` turn;
    ``text_input`` is everything before it. A single user turn without a system instruction
    is sent as its bare text; otherwise each turn is rendered as ``"System: ..."``,
    ``"User: ..."``, ``"Model: ..."`` blocks joined by blank lines (the system instruction
    first), so multi-turn context and the system prompt are kept as text.
    """
    provider = "gemini"
    contents = line.get("contents") if isinstance(line, Mapping) else None
    if not isinstance(contents, list) or len(contents) < 2:
        raise FineTuneConfigError(provider, f"{where}: 'contents' must list at least a user and a model turn")
    turns = []
    for i, content in enumerate(contents):
        role = content.get("role") if isinstance(content, dict) else None
        if role not in _ROLE_LABEL:
            raise FineTuneConfigError(provider, f"{where}: contents[{i}].role must be user or model, got {role!r}")
        turns.append((role, _parts_text(provider, f"{where}: contents[{i}]", content.get("parts"))))
    if turns[-1][0] != "model" or not turns[-1][1].strip():
        raise FineTuneConfigError(provider, f"{where}: the last turn must be a non-empty model turn")
    system = line.get("systemInstruction")
    system_text = _parts_text(provider, f"{where}: systemInstruction", system.get("parts")) \
        if isinstance(system, dict) else None
    history = turns[:-1]
    if system_text is None and len(history) == 1 and history[0][0] == "user":
        text_input = history[0][1]
    else:
        blocks = [f"System: {system_text}"] if system_text is not None else []
        blocks += [f"{_ROLE_LABEL[role]}: {text}" for role, text in history]
        text_input = "\n\n".join(blocks)
    return types.TuningExample(text_input=text_input, output=turns[-1][1])


def gemini_examples(path: str | Path) -> list[types.TuningExample]:
    """Every line of a ``gemini/*.jsonl`` export as a :func:`gemini_example`."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FineTuneConfigError("gemini", f"{path.name} line {n} is not JSON: {exc.msg}") from None
            out.append(gemini_example(line, where=f"{path.name} line {n}"))
    if not out:
        raise FineTuneConfigError("gemini", f"{path} has no examples")
    return out


class GeminiFineTuner:
    """Supervised tuning through ``google.genai.Client``.

    **Gemini Developer API** (``vertex=False``, the default): the examples go inline, each
    ``gemini/train.jsonl`` line flattened by :func:`gemini_example` (the conversation before the
    last model turn -> ``text_input``, the last model turn -> ``output``). The Developer API has
    no validation set: ``gemini/validation.jsonl`` is not sent. google-genai 3.6.1's
    ``tunings.tune`` silently drops the inline examples and ``learning_rate_multiplier`` in this
    mode (its ``_TuningDataset_to_mldev`` result is discarded), and ``tunings.get`` drops the
    training snapshots. So create and get go through the client's own transport
    (``client._api_client.request``: the same base_url, API version, key header, timeout and
    retries) with the documented REST bodies: ``POST {v}/tunedModels`` (``{baseModel,
    displayName, tuningTask: {trainingData: {examples: {examples: [{textInput, output}]}},
    hyperparameters: {epochCount, batchSize, learningRateMultiplier}}}`` -> an operation whose
    ``metadata.tunedModel`` is the job id) and ``GET {v}/tunedModels/{id}``. Cancel is the SDK's
    ``client.tunings.cancel`` (``POST {name}:cancel``) followed by one read.

    **Vertex AI** (``vertex=True``): ``client.tunings.tune(base_model, TuningDataset(gcs_uri=...),
    CreateTuningJobConfig(tuned_model_display_name, epoch_count, batch_size,
    learning_rate_multiplier, validation_dataset?))``, ``client.tunings.get``,
    ``client.tunings.cancel``. The data must already be in Cloud Storage: ``submit`` takes
    ``gcs_uri`` (the uploaded ``gemini/train.jsonl``) and optionally ``validation_gcs_uri``.
    With ``project`` (and ``location``) the client authenticates with Application Default
    Credentials; without them it uses the API key (Vertex express mode).

    ``api_version`` defaults to ``v1beta`` (Developer API) / ``v1beta1`` (Vertex). The SDK
    retries a failed call ``max_retries`` times.
    """

    provider = "gemini"

    def __init__(self, base_url: str | None = None, api_key_env: str = "GEMINI_API_KEY",
                 vertex: bool = False, *, project: str | None = None, location: str | None = None,
                 timeout_s: float = 60, max_retries: int = 2, api_version: str | None = None) -> None:
        if timeout_s <= 0:
            raise FineTuneConfigError(self.provider, f"timeout_s must be positive, got {timeout_s}")
        if max_retries < 0:
            raise FineTuneConfigError(self.provider, f"max_retries must not be negative, got {max_retries}")
        if (project or location) and not vertex:
            raise FineTuneConfigError(self.provider, "project/location are for Vertex AI: set vertex=True")
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.vertex = vertex
        self.project = project
        self.location = location
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.api_version = api_version or ("v1beta1" if vertex else "v1beta")
        http_options = types.HttpOptions(
            base_url=base_url, api_version=self.api_version, timeout=max(1, int(timeout_s * 1000)),
            retry_options=types.HttpRetryOptions(attempts=max_retries + 1),
        )
        if vertex and project:
            self._client = genai.Client(vertexai=True, project=project, location=location or "us-central1",
                                        http_options=http_options)
        else:
            key = _require_key(self.provider, api_key_env)
            self._client = genai.Client(vertexai=vertex, api_key=key, http_options=http_options)

    def __repr__(self) -> str:
        return (f"GeminiFineTuner(base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, "
                f"vertex={self.vertex}, project={self.project!r}, location={self.location!r}, "
                f"timeout_s={self.timeout_s}, max_retries={self.max_retries})")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except genai_errors.APIError as exc:
            raise FineTuneError(self.provider, f"{what}: {exc.message or exc}", status_code=exc.code) from None
        except _TRANSPORT_ERRORS as exc:
            raise FineTuneError(self.provider, f"{what}: {type(exc).__name__}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise FineTuneError(self.provider, f"{what}: the reply is not JSON: {exc.msg}") from None

    # -- submit

    def submit(self, dataset_dir: str | Path, base_model: str, *, suffix: str | None = None,
               hyperparameters: Mapping[str, Any] | None = None, gcs_uri: str | None = None,
               validation_gcs_uri: str | None = None) -> JobState:
        """Create the tuning job. ``suffix`` becomes the tuned model's display name. ``gcs_uri``
        / ``validation_gcs_uri`` are for Vertex only (required there, refused otherwise)."""
        if not base_model:
            raise FineTuneConfigError(self.provider, "base_model is required")
        hp = _hyperparameters(self.provider, hyperparameters)
        if "auto" in hp.values():
            raise FineTuneConfigError(self.provider, "'auto' hyperparameters are OpenAI's; leave the "
                                                     "hyperparameter out for Gemini's default")
        if self.vertex:
            return self._submit_vertex(base_model, suffix, hp, gcs_uri, validation_gcs_uri)
        if gcs_uri or validation_gcs_uri:
            raise FineTuneConfigError(self.provider, "gcs_uri is for Vertex AI (vertex=True); the "
                                                     "Developer API takes the examples inline")
        train = _data_file(self.provider, dataset_dir, GEMINI_TRAIN, required=True)
        assert train is not None
        examples = gemini_examples(train)
        hyper: dict[str, Any] = {}
        if "n_epochs" in hp:
            hyper["epochCount"] = hp["n_epochs"]
        if "batch_size" in hp:
            hyper["batchSize"] = hp["batch_size"]
        if "learning_rate_multiplier" in hp:
            hyper["learningRateMultiplier"] = hp["learning_rate_multiplier"]
        task: dict[str, Any] = {"trainingData": {"examples": {"examples": [
            {"textInput": e.text_input, "output": e.output} for e in examples]}}}
        if hyper:
            task["hyperparameters"] = hyper
        body: dict[str, Any] = {"baseModel": base_model, "tuningTask": task}
        if suffix:
            body["displayName"] = suffix
        response = self._call("creating the tuned model", self._client._api_client.request,
                              "post", "tunedModels", body, None)
        operation = self._json(response, "creating the tuned model")
        metadata = operation.get("metadata") if isinstance(operation.get("metadata"), dict) else {}
        name = metadata.get("tunedModel")
        if not name and isinstance(operation.get("name"), str):
            name = operation["name"].partition("/operations/")[0]
        if not isinstance(name, str) or not name:
            raise FineTuneError(self.provider, "the create reply names no tuned model "
                                               f"(keys {sorted(operation)})")
        progress = {k: metadata[k] for k in ("totalSteps", "completedSteps", "completedPercent")
                    if k in metadata}
        return JobState(provider=self.provider, job_id=name, status=QUEUED, raw_status="CREATING",
                        progress=_snake(progress))

    def _submit_vertex(self, base_model: str, suffix: str | None, hp: dict[str, Any],
                       gcs_uri: str | None, validation_gcs_uri: str | None) -> JobState:
        if not gcs_uri:
            raise FineTuneConfigError(self.provider, "vertex=True needs gcs_uri: the gs:// URI of the "
                                                     "uploaded gemini/train.jsonl")
        for name, uri in (("gcs_uri", gcs_uri), ("validation_gcs_uri", validation_gcs_uri)):
            if uri is not None and not uri.startswith("gs://"):
                raise FineTuneConfigError(self.provider, f"{name} must be a gs:// URI, got {uri!r}")
        config = types.CreateTuningJobConfig(
            tuned_model_display_name=suffix or None,
            epoch_count=hp.get("n_epochs"),
            batch_size=hp.get("batch_size"),
            learning_rate_multiplier=hp.get("learning_rate_multiplier"),
            validation_dataset=(types.TuningValidationDataset(gcs_uri=validation_gcs_uri)
                                if validation_gcs_uri else None),
        )
        with warnings.catch_warnings():  # "tuning is experimental", on every call: not news
            warnings.simplefilter("ignore", genai_common.ExperimentalWarning)
            job = self._call("creating the tuning job", self._client.tunings.tune,
                             base_model=base_model,
                             training_dataset=types.TuningDataset(gcs_uri=gcs_uri), config=config)
        return self._vertex_state(job)

    # -- poll / cancel

    def poll(self, job_id: str) -> JobState:
        if not job_id:
            raise FineTuneConfigError(self.provider, "job_id is required")
        if self.vertex:
            return self._vertex_state(self._call(f"reading {job_id}", self._client.tunings.get, name=job_id))
        response = self._call(f"reading {job_id}", self._client._api_client.request, "get", job_id, {}, None)
        return self._tuned_model_state(job_id, self._json(response, f"reading {job_id}"))

    def cancel(self, job_id: str) -> JobState:
        """Ask for the cancel, then read the job once (the API may still say it is running)."""
        if not job_id:
            raise FineTuneConfigError(self.provider, "job_id is required")
        self._call(f"cancelling {job_id}", self._client.tunings.cancel, name=job_id)
        return self.poll(job_id)

    # -- replies

    def _json(self, response: Any, what: str) -> dict[str, Any]:
        body = getattr(response, "body", None)
        try:
            data = json.loads(body) if body else None
        except json.JSONDecodeError as exc:
            raise FineTuneError(self.provider, f"{what}: the reply is not JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise FineTuneError(self.provider, f"{what}: the reply is not a JSON object")
        return data

    def _status(self, job_id: str, raw: Any) -> tuple[str, str]:
        raw_text = raw.value if isinstance(raw, types.JobState) else raw
        if not isinstance(raw_text, str) or raw_text not in _GEMINI_STATUS:
            raise FineTuneError(self.provider, f"{job_id} has an unknown state {raw_text!r}")
        return _GEMINI_STATUS[raw_text], raw_text

    def _tuned_model_state(self, job_id: str, model: dict[str, Any]) -> JobState:
        """A Developer API ``TunedModel`` resource as a :class:`JobState`."""
        status, raw = self._status(job_id, model.get("state"))
        task = model.get("tuningTask") if isinstance(model.get("tuningTask"), dict) else {}
        progress: dict[str, Any] = {}
        snapshots = task.get("snapshots")
        if isinstance(snapshots, list) and snapshots and isinstance(snapshots[-1], dict):
            last = snapshots[-1]
            progress = _snake({k: last[k] for k in ("step", "epoch", "meanLoss") if k in last})
        hyper = task.get("hyperparameters")
        if isinstance(hyper, dict):
            progress.update(_snake({k: hyper[k] for k in ("epochCount", "batchSize") if k in hyper}))
        error = None
        if status == FAILED:
            error = "the tuned model is FAILED (the Gemini API reports no reason)"
        name = model.get("name") if isinstance(model.get("name"), str) else job_id
        return JobState(
            provider=self.provider, job_id=job_id, status=status, raw_status=raw,
            model_id=name if status == SUCCEEDED else None,
            trained_tokens=None,  # the Developer API reports no token count
            error=error, progress=progress,
            created_at=_epoch(model.get("createTime")),
            finished_at=_epoch(task.get("completeTime")) if status in FINISHED else None,
        )

    def _vertex_state(self, job: Any) -> JobState:
        """A google-genai ``TuningJob`` (Vertex) as a :class:`JobState`."""
        if not isinstance(job, types.TuningJob) or not job.name:
            raise FineTuneError(self.provider, "the reply is not a tuning job with a name")
        status, raw = self._status(job.name, job.state)
        model_id = None
        if status == SUCCEEDED and job.tuned_model is not None:
            model_id = job.tuned_model.endpoint or job.tuned_model.model
        error = None
        if status == FAILED:
            message = job.error.message if job.error is not None else None
            error = redact(message) if message else f"the job is {raw} (no reason given)"
        progress: dict[str, Any] = {}
        trained = None
        stats = job.tuning_data_stats.supervised_tuning_data_stats if job.tuning_data_stats else None
        spec = job.supervised_tuning_spec.hyper_parameters if job.supervised_tuning_spec else None
        epochs = spec.epoch_count if spec is not None else None
        if epochs is not None:
            progress["epoch_count"] = epochs
        if stats is not None:
            if stats.tuning_step_count is not None:
                progress["tuning_step_count"] = stats.tuning_step_count
            if stats.total_billable_token_count is not None:
                progress["dataset_billable_tokens"] = stats.total_billable_token_count
                if epochs is not None:
                    # Vertex bills the dataset's tokens once per epoch
                    trained = stats.total_billable_token_count * epochs
        return JobState(
            provider=self.provider, job_id=job.name, status=status, raw_status=raw,
            model_id=model_id, trained_tokens=trained, error=error, progress=progress,
            created_at=_epoch(job.create_time),
            finished_at=_epoch(job.end_time) if status in FINISHED else None,
        )


def _snake(values: Mapping[str, Any]) -> dict[str, Any]:
    """camelCase keys -> snake_case (``meanLoss`` -> ``mean_loss``)."""
    out = {}
    for key, value in values.items():
        out["".join(f"_{c.lower()}" if c.isupper() else c for c in key)] = value
    return out
