"""Structured output: parse a reply as JSON, validate it against the request's schema, and build
the one repair request sent when it is malformed or truncated."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from ml.llm.errors import ConfigError
from ml.llm.types import LLMRequest

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class SchemaViolation(Exception):
    """The reply is not JSON, or not valid against the schema. The message says why and where."""


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    match = _FENCE.match(stripped)
    return match.group(1).strip() if match else stripped


def parse_and_validate(text: str, request: LLMRequest, finish_reason: str | None = None) -> Any:
    """Return the validated JSON value of ``text`` or raise :class:`SchemaViolation`."""
    body = _strip_fences(text)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        truncated = " (the reply was cut off at max_tokens)" if finish_reason in ("length", "MAX_TOKENS") else ""
        raise SchemaViolation(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}{truncated}") from exc
    schema = request.response_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            return schema.model_validate(value).model_dump(mode="json")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'/'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
            )
            raise SchemaViolation(f"does not match schema {schema.__name__}: {problems}") from exc
    if isinstance(schema, dict):
        try:
            import jsonschema
        except ImportError as exc:  # pragma: no cover - jsonschema ships with the environment
            raise ConfigError("a JSON-schema dict response_schema needs the 'jsonschema' package") from exc
        validator_cls = jsonschema.validators.validator_for(schema)
        validator = validator_cls(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "<root>"
            raise SchemaViolation(f"does not match schema at {where}: {error.message}")
        return value
    return value


def repair_request(request: LLMRequest, bad_text: str, problem: str) -> LLMRequest:
    """The original conversation, the bad reply, and a request for corrected JSON only."""
    schema = json.dumps(request.json_schema(), sort_keys=True)
    instruction = (
        f"Your previous reply was rejected: {problem}. "
        f"Reply again with only a corrected, complete JSON value valid against this JSON schema, "
        f"with no prose and no code fences:\n{schema}"
    )
    return LLMRequest(
        messages=[*request.messages, {"role": "assistant", "content": bad_text},
                  {"role": "user", "content": instruction}],
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        response_schema=request.response_schema,
        metadata={**request.metadata, "repair": True},
    )


def schema_instruction(request: LLMRequest) -> str:
    """A system-prompt line asking for JSON, for backends without native schema support."""
    return (
        "Reply with only a JSON value valid against this JSON schema, with no prose and no code fences:\n"
        + json.dumps(request.json_schema(), sort_keys=True)
    )
