"""Build a role's router from a plain dict (``build_router``) or from ``LEARNLOOP_*`` env vars
(``from_env``), both read at call time."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml.config import Settings, get_settings
from ml.llm.breaker import CircuitBreaker
from ml.llm.cache import ResponseCache, open_cache
from ml.llm.errors import ConfigError
from ml.llm.pricing import PriceTable
from ml.llm.redaction import install_redaction
from ml.llm.reliability import ResilientProvider, RetryPolicy, provider_concurrency
from ml.llm.router import Router
from ml.llm.types import Provider

ROLES = ("auditor", "teacher", "judge")
LLM_KINDS = ("openai", "gemini", "transformers")
OFFLINE_KINDS = ("rules", "retrieval", "offline", "none")

_PROVIDER_KEYS = {
    "openai": {"kind", "name", "model", "base_url", "api_key_env", "timeout_s", "json_mode", "max_tokens_param"},
    "gemini": {"kind", "name", "model", "base_url", "api_key_env", "timeout_s", "api_version"},
    "transformers": {"kind", "name", "model", "model_path", "device", "timeout_s"},
}
_RETRY_KEYS = {"max_retries", "initial_backoff_s", "max_backoff_s", "jitter_s", "max_retry_after_s"}
_BREAKER_KEYS = {"failure_threshold", "reset_timeout_s", "half_open_max_calls"}
_ROUTER_KEYS = {"providers", "prices", "retry", "breaker", "cache_backend", "cache_dir", "concurrency"}
_SLOT_KEYS = _RETRY_KEYS | {"breaker", "concurrency"}  # taken by ResilientProvider, not the provider


def build_provider(spec: Mapping[str, Any]) -> Provider:
    """One provider from ``{"kind": "openai"|"gemini"|"transformers", "model": ..., ...}``."""
    kind = spec.get("kind")
    if kind not in LLM_KINDS:
        raise ConfigError(f"provider kind must be one of {LLM_KINDS}, got {kind!r}")
    allowed = _PROVIDER_KEYS[kind]
    params = {k: v for k, v in spec.items() if k not in _SLOT_KEYS}
    unknown = set(params) - allowed
    if unknown:
        known = sorted(allowed | _SLOT_KEYS)
        raise ConfigError(f"{kind} provider: unknown field(s) {sorted(unknown)}; allowed {known}")
    params.pop("kind")
    name = params.pop("name", None) or kind
    if "timeout_s" in params:
        params["timeout_s"] = _number(params["timeout_s"], f"{name}.timeout_s")
    if kind == "openai":
        from ml.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(name=name, **params)
    if kind == "gemini":
        from ml.llm.gemini_provider import GeminiProvider

        return GeminiProvider(name=name, **params)
    from ml.llm.transformers_provider import TransformersProvider

    model_path = params.pop("model_path", None) or params.pop("model", None)
    if model_path is None:
        raise ConfigError(f"{name}: a transformers provider needs model_path (a local directory)")
    params.pop("model", None)
    return TransformersProvider(model_path, name=name, **params)


def _number(value: Any, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field} must be a number, got {value!r}") from exc


def _retry_policy(defaults: Mapping[str, Any], spec: Mapping[str, Any], name: str) -> RetryPolicy:
    merged = {**defaults, **{k: v for k, v in spec.items() if k in _RETRY_KEYS}}
    unknown = set(merged) - _RETRY_KEYS
    if unknown:
        raise ConfigError(f"{name}: unknown retry field(s) {sorted(unknown)}")
    try:
        return RetryPolicy(**{k: (int(v) if k == "max_retries" else float(v)) for k, v in merged.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: bad retry setting: {exc}") from exc


def _breaker(defaults: Mapping[str, Any], spec: Mapping[str, Any], name: str) -> CircuitBreaker:
    merged = {**defaults, **(spec.get("breaker") or {})}
    unknown = set(merged) - _BREAKER_KEYS
    if unknown:
        raise ConfigError(f"{name}: unknown breaker field(s) {sorted(unknown)}")
    try:
        return CircuitBreaker(name, **merged)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: bad breaker setting: {exc}") from exc


def _concurrency(default: Any, spec: Mapping[str, Any], provider: Provider) -> int:
    """The provider's limit: its spec's ``concurrency``, else the section's (which a provider
    that runs one call at a time, a transformers model, ignores), else the provider's default."""
    value = spec.get("concurrency")
    if value is None and default is not None and getattr(provider, "max_concurrency", None) is None:
        value = default
    if value is None:
        return provider_concurrency(provider)
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{provider.name}.concurrency must be an integer, got {value!r}") from exc
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{provider.name}.concurrency must be an integer, got {value!r}")
    return provider_concurrency(provider, number)


def build_router(role: str, config: Mapping[str, Any], *, cache: ResponseCache | None = None) -> Router | None:
    """A role's :class:`Router` from a plain dict; None when the role is set to an offline kind.

    ``config`` is either the role's section or a dict with one section per role (``{"auditor":
    {...}, "teacher": {...}, "prices": {...}}``; top-level keys are shared defaults). A section is
    ``{"providers": [spec, ...], "prices": {...}, "retry": {...}, "breaker": {...},
    "cache_backend": "sqlite"|"jsonl"|"memory"|"none", "cache_dir": path}`` or a single provider
    spec (``{"kind": "openai", "model": ..., ...}``). A provider spec takes ``kind``, ``name``,
    ``model``, ``base_url``, ``api_key_env`` (the env var's *name*), ``timeout_s``,
    ``max_retries`` (and the other retry fields), ``breaker``, ``concurrency`` (calls at once;
    the section's ``concurrency`` is the default of its HTTP providers) and kind-specific options.

    Building a router installs log redaction (:func:`ml.llm.redaction.install_redaction`), so the
    API keys its providers read never reach a log line, the SDKs' included.
    """
    install_redaction()
    section: dict[str, Any] = dict(config)
    if isinstance(config.get(role), Mapping):
        shared = {k: v for k, v in config.items() if k not in ROLES}
        section = {**shared, **config[role]}
    for other in ROLES:
        section.pop(other, None)
    if "kind" in section:
        spec = {k: v for k, v in section.items() if k not in _ROUTER_KEYS}
        section = {k: v for k, v in section.items() if k in _ROUTER_KEYS}
        section["providers"] = [spec]
    unknown = set(section) - _ROUTER_KEYS
    if unknown:
        raise ConfigError(f"role {role!r}: unknown field(s) {sorted(unknown)}; allowed {sorted(_ROUTER_KEYS)}")
    specs = section.get("providers") or []
    if not isinstance(specs, list):
        raise ConfigError(f"role {role!r}: providers must be a list of provider specs")
    kinds = [s.get("kind") for s in specs]
    if not specs or all(k in OFFLINE_KINDS for k in kinds):
        return None
    if any(k in OFFLINE_KINDS for k in kinds):
        raise ConfigError(
            f"role {role!r}: offline kinds {OFFLINE_KINDS} cannot be mixed with LLM providers: {kinds}"
        )
    retry_defaults = dict(section.get("retry") or {})
    breaker_defaults = dict(section.get("breaker") or {})
    slots = []
    for spec in specs:
        provider = build_provider(spec)
        slots.append(ResilientProvider(
            provider,
            retry=_retry_policy(retry_defaults, spec, provider.name),
            breaker=_breaker(breaker_defaults, spec, provider.name),
            concurrency=_concurrency(section.get("concurrency"), spec, provider),
        ))
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        raise ConfigError(f"role {role!r}: provider names must be unique (set 'name'): {names}")
    if cache is None:
        cache = open_cache(section.get("cache_backend"), section.get("cache_dir"))
    return Router(role, slots, cache=cache, prices=PriceTable(section.get("prices")))


def _load_prices(value: str) -> dict[str, Any]:
    text = value.strip()
    source = "LEARNLOOP_LLM_PRICES"
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"LEARNLOOP_LLM_PRICES is neither inline JSON nor an existing file: {text!r}")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        prices = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: price table is not valid JSON: {exc}") from exc
    if not isinstance(prices, dict):
        raise ConfigError(f"{source}: price table must be a JSON object")
    return prices


def _home(environ: Mapping[str, str] | None, home: str | Path | None) -> Path:
    """The LearnLoop home: ``home`` when given, else the settings object's (``Settings().home``,
    ``LEARNLOOP_HOME``); with an explicit ``environ`` mapping, that mapping's ``LEARNLOOP_HOME``."""
    if home is not None:
        return get_settings(home=home).home
    if environ is None:
        return get_settings().home
    return get_settings(home=environ.get("LEARNLOOP_HOME") or Settings.model_fields["home"].default).home


def _env_concurrency(env: Mapping[str, str], prefix: str, kind: str) -> int | None:
    """A provider's concurrency limit from the first variable set of
    ``<prefix>_<KIND>_CONCURRENCY``, ``<prefix>_CONCURRENCY``, ``LEARNLOOP_<KIND>_CONCURRENCY``,
    ``LEARNLOOP_LLM_CONCURRENCY``; None when none is (the provider's default). A transformers
    provider reads only the variables naming its kind: the others are defaults for HTTP
    providers, and a local model runs one call at a time."""
    names = [f"{prefix}_{kind.upper()}_CONCURRENCY", f"{prefix}_CONCURRENCY",
             f"LEARNLOOP_{kind.upper()}_CONCURRENCY", "LEARNLOOP_LLM_CONCURRENCY"]
    if kind == "transformers":
        names = [names[0], names[2]]
    for name in names:
        raw = (env.get(name) or "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if value < 1:
            raise ConfigError(f"{name}={raw!r}: the concurrency limit must be at least 1")
        return value
    return None


def env_config(role: str, environ: Mapping[str, str] | None = None, *,
               home: str | Path | None = None) -> dict[str, Any] | None:
    """The dict :func:`build_router` takes, read from ``LEARNLOOP_<ROLE>*`` env vars now.

    ``environ`` replaces ``os.environ`` (e.g. a copy with an override). The default cache
    directory is ``<home>/llm_cache``; ``home`` defaults to the settings object's home
    (:func:`_home`)."""
    env = os.environ if environ is None else environ
    prefix = f"LEARNLOOP_{role.upper()}"
    raw = env.get(prefix, "").strip().lower()
    if not raw:
        return None
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    if all(k in OFFLINE_KINDS for k in kinds):
        return None
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"{prefix}={raw!r} names a provider kind twice")
    for k in kinds:
        if k not in LLM_KINDS:
            raise ConfigError(f"{prefix}={raw!r}: unknown kind {k!r}; expected {LLM_KINDS} or {OFFLINE_KINDS}")

    def lookup(kind: str, field: str) -> str | None:
        value = env.get(f"{prefix}_{kind.upper()}_{field}") or env.get(f"{prefix}_{field}")
        return value.strip() if value and value.strip() else None

    providers = []
    for kind in kinds:
        spec: dict[str, Any] = {"kind": kind}
        model = lookup(kind, "MODEL")
        if model is None:
            raise ConfigError(f"{prefix}={raw!r} needs {prefix}_MODEL (or {prefix}_{kind.upper()}_MODEL)")
        spec["model_path" if kind == "transformers" else "model"] = model
        for field, key in (("BASE_URL", "base_url"), ("API_KEY_ENV", "api_key_env"),
                           ("TIMEOUT_S", "timeout_s"), ("MAX_RETRIES", "max_retries"),
                           ("JSON_MODE", "json_mode"), ("NAME", "name")):
            value = lookup(kind, field)
            if value is not None:
                if kind == "transformers" and key in ("base_url", "api_key_env", "json_mode"):
                    raise ConfigError(f"{prefix}_{field} does not apply to a transformers provider")
                if key == "api_key_env" and value.lower() == "none":
                    value = ""
                spec[key] = value
        limit = _env_concurrency(env, prefix, kind)
        if limit is not None:
            spec["concurrency"] = limit
        providers.append(spec)
    config: dict[str, Any] = {"providers": providers}
    prices = env.get("LEARNLOOP_LLM_PRICES")
    if prices:
        config["prices"] = _load_prices(prices)
    backend = (env.get("LEARNLOOP_LLM_CACHE") or "sqlite").strip().lower()
    config["cache_backend"] = backend
    if backend in ("sqlite", "jsonl"):
        cache_dir = env.get("LEARNLOOP_LLM_CACHE_DIR")
        if not cache_dir:
            cache_dir = str(_home(environ, home) / "llm_cache")
        config["cache_dir"] = cache_dir
    return config


def from_env(role: str, environ: Mapping[str, str] | None = None, *,
             home: str | Path | None = None) -> Router | None:
    """The role's router from env vars read at call time; None when the role uses its offline
    default (``LEARNLOOP_<ROLE>`` unset or ``rules``/``retrieval``/``offline``/``none``).
    ``home`` (default: the settings object's) holds the default cache directory."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
    config = env_config(role, environ, home=home)
    if config is None:
        return None
    return build_router(role, config)
