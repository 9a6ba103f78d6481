"""Serving registered model versions: which generator makes a version's replies, and a cache of
loaded models for the serving API.

:func:`generator_for_version` maps a registry version to its generator: a version whose source
is a local checkpoint (a folder, or a ``file://`` URI) is loaded with
:class:`~ml.evaluation.generation.LocalGenerator` (greedy, batched, ChatML, stops at
``<|im_end|>``); a version fine-tuned at a provider (source ``openai:<model id>`` or
``gemini:<model id>``, with the version tags ``provider_base_url`` / ``api_key_env`` when set)
is served through an ``ml.llm`` provider (:class:`~ml.evaluation.generation.ProviderGenerator`).
The evaluation asset and the serving API share it.

:class:`ModelCache` keeps at most ``max_models`` generators, least recently used first out. A
version is loaded once: concurrent first requests for it wait for the one load (a per-version
lock), requests for other versions are not held up by it. Local generation is serialised per
model (one ``generate`` at a time: torch on a small machine is faster that way, and the model
is not re-entrant); concurrent requests to the same version are *micro-batched*: whoever gets
the model's turn takes up to ``batch_size`` waiting requests with the same token limit and
generates them in one batch (greedy decoding: the same replies as one by one, up to float
rounding of left padding). Provider versions are not serialised (each reply is an HTTP call).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.evaluation.generation import (
    Generation,
    LocalGenerator,
    Prompt,
    ProviderGenerator,
    check_prompt,
)

PROVIDER_PREFIXES = ("openai:", "gemini:")


class ModelLoadError(RuntimeError):
    """A version's model could not be loaded; the message names the version and its source."""

    def __init__(self, message: str, *, version: str, source: str):
        super().__init__(message)
        self.version, self.source = version, source


def local_source_path(source: str | None) -> Path | None:
    """The local folder of a version's source (a path or a ``file://`` URI); None for a provider
    source (``openai:...`` / ``gemini:...``)."""
    source = source or ""
    if source.startswith(PROVIDER_PREFIXES):
        return None
    return Path(source[len("file://"):] if source.startswith("file://") else source)


def generator_for_version(info: Any, *, max_new_tokens: int = 96, batch_size: int = 8,
                          model_name: str | None = None):
    """The generator of a registry version (:class:`ml.registry.ModelVersionInfo`, or anything
    with ``version``, ``source`` and ``tags``): a :class:`LocalGenerator` on its checkpoint or a
    :class:`ProviderGenerator` on its provider model. Raises :class:`ModelLoadError` naming the
    version and the source when it cannot be made."""
    source = info.source or ""
    label = f"{model_name or getattr(info, 'name', None) or 'model'} v{info.version}"
    tags = dict(getattr(info, "tags", None) or {})
    try:
        if source.startswith(PROVIDER_PREFIXES):
            from ml.llm.config import build_provider

            kind, model = source.split(":", 1)
            if not model:
                raise ValueError(f"the source {source!r} names no provider model")
            spec: dict[str, Any] = {"kind": kind, "model": model}
            if tags.get("provider_base_url"):
                spec["base_url"] = tags["provider_base_url"]
            if tags.get("api_key_env"):
                spec["api_key_env"] = tags["api_key_env"]
            return ProviderGenerator(build_provider(spec), model=model,
                                     max_new_tokens=max_new_tokens)
        path = local_source_path(source)
        if not source or path is None or not path.exists():
            raise FileNotFoundError("its checkpoint does not exist on this machine")
        return LocalGenerator(path, max_new_tokens=max_new_tokens, batch_size=batch_size)
    except (OSError, ValueError, ImportError) as exc:  # ml.llm's ConfigError is a ValueError
        raise ModelLoadError(f"{label} (source {source!r}) cannot be loaded: {exc}",
                             version=str(info.version), source=source) from exc


@dataclass(eq=False)  # identity: two requests with the same prompt are still two requests
class _Request:
    messages: list[dict[str, str]]
    max_new_tokens: int
    result: Generation | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _Entry:
    version: str
    generator: Any
    serialise: bool  # all but provider models: one generate at a time, micro-batched
    lock: threading.Lock = field(default_factory=threading.Lock)  # the model's turn
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    queue: list[_Request] = field(default_factory=list)


class ModelCache:
    """Loaded generators of ``registry``'s versions (see the module docstring).

    ``max_new_tokens`` is the most a reply may have (a request asking for more gets this many);
    ``batch_size`` the most requests generated together. ``loader(info, max_new_tokens=...,
    batch_size=..., model_name=...)`` makes a generator (default :func:`generator_for_version`).
    ``loads`` counts the loads of each version (a reload after eviction counts again)."""

    def __init__(self, registry: Any, *, max_models: int = 3, max_new_tokens: int = 128,
                 batch_size: int = 8, loader: Callable[..., Any] | None = None) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be positive, got "
                             f"{max_new_tokens} and {batch_size}")
        self.registry = registry
        self.max_models = max_models
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.loader = loader or generator_for_version
        self.loads: dict[str, int] = {}
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"ModelCache({self.registry!r}, loaded={list(self._entries)}, "
                f"max_models={self.max_models})")

    def loaded(self) -> list[str]:
        """The versions loaded now, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _cached(self, version: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(version)
            if entry is not None:
                self._entries.move_to_end(version)
            return entry

    def _entry(self, version: str) -> _Entry:
        version = str(version)
        entry = self._cached(version)
        if entry is not None:
            return entry
        with self._lock:
            load_lock = self._loading.setdefault(version, threading.Lock())
        with load_lock:  # one load per version; other versions load meanwhile
            entry = self._cached(version)
            if entry is not None:
                return entry
            info = self.registry.version(version)  # VersionNotFound names the model and version
            generator = self.loader(info, max_new_tokens=self.max_new_tokens,
                                    batch_size=self.batch_size,
                                    model_name=getattr(self.registry, "model_name", None))
            entry = _Entry(version, generator,
                           serialise=not isinstance(generator, ProviderGenerator))
            with self._lock:
                self.loads[version] = self.loads.get(version, 0) + 1
                self._entries[version] = entry
                while len(self._entries) > self.max_models:
                    # a request still generating with an evicted model keeps its own reference
                    self._entries.popitem(last=False)
                self._loading.pop(version, None)
        return entry

    def generator(self, version: str):
        """The generator of ``version``, loaded on first use (once, also under concurrency)."""
        return self._entry(version).generator

    def reply(self, version: str, messages: Prompt,
              max_new_tokens: int | None = None) -> Generation:
        """One greedy reply of ``version`` to ``messages`` (``max_new_tokens`` at most the
        cache's; None: the cache's). ``latency_s`` of a micro-batched local reply is its
        batch's time divided by the batch size (see ``ml.evaluation.generation``)."""
        prompt = check_prompt(messages, f"v{version}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        limit = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        entry = self._entry(version)
        if not entry.serialise:
            return entry.generator.generate([prompt], max_new_tokens=limit)[0]
        request = _Request(prompt, limit)
        with entry.queue_lock:
            entry.queue.append(request)
        with entry.lock:  # the model's turn: ours, or our request was in an earlier batch
            if not request.done:
                self._run_batch(entry, request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _run_batch(self, entry: _Entry, mine: _Request) -> None:
        """Generate ``mine`` and the requests waiting with the same token limit (up to
        ``batch_size``), holding the model's lock. A failed batch is retried one by one, so a
        request's error reaches that request only."""
        with entry.queue_lock:
            batch = [mine] + [r for r in entry.queue
                              if r is not mine and r.max_new_tokens == mine.max_new_tokens]
            batch = batch[:self.batch_size]
            for r in batch:
                entry.queue.remove(r)
        try:
            results = entry.generator.generate([r.messages for r in batch],
                                               max_new_tokens=mine.max_new_tokens)
        except Exception:  # retried alone below: each request gets its own error
            if len(batch) == 1:
                raise
            self._one_by_one(entry, batch)
            return
        for r, g in zip(batch, results, strict=True):
            r.result, r.done = g, True

    @staticmethod
    def _one_by_one(entry: _Entry, batch: Sequence[_Request]) -> None:
        for r in batch:
            try:
                r.result = entry.generator.generate([r.messages],
                                                    max_new_tokens=r.max_new_tokens)[0]
            except Exception as exc:  # handed to the caller of that request
                r.error = exc
            r.done = True


def timed_reply(cache: ModelCache, version: str, messages: Prompt,
                max_new_tokens: int | None = None) -> tuple[Generation, float]:
    """``cache.reply(...)`` and its wall time in seconds (waiting for the model included)."""
    started = time.perf_counter()
    generation = cache.reply(version, messages, max_new_tokens)
    return generation, time.perf_counter() - started
