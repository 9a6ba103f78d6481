"""JSON schemas of every exported line format, and their validators (``jsonschema``).

* :data:`OPENAI_CHAT`: OpenAI chat fine-tuning, one ``{"messages": [{"role", "content"}, ...]}``
  per line (also the evaluation suite's ``eval.jsonl`` / ``retention.jsonl``).
* :data:`GEMINI`: Gemini / Vertex AI supervised tuning, ``{"systemInstruction": {"role":
  "system", "parts": [{"text"}]}`` (optional), ``"contents": [{"role": "user" | "model",
  "parts": [{"text"}]}, ...]}``.
* :data:`DPO`: TRL ``DPOTrainer``'s conversational preference format, ``{"prompt": [messages],
  "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}``.

Standard JSON Schema (draft 2020-12) checks the structure: required fields, no unknown ones,
roles from the allowed set, non-blank texts. It cannot say "alternating" for an array of any
length, so the schemas carry one extension keyword, ``x-roleSequence``, which :data:`Validator`
(Draft 2020-12 extended with it) enforces: ``{"roleField": ..., "system": <role allowed once,
first> | null, "first": <role>, "alternate": [<a>, <b>], "last": <role>}``; for Gemini the role
sits on each content item (``roleField: "role"``) and the system prompt is outside
``contents``. A plain Draft 2020-12 validator ignores the extension keyword.

:func:`validate_line` raises ``jsonschema.ValidationError``; :func:`line_errors` lists messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

_TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}


def _role_sequence(validator: Any, rule: dict[str, Any], instance: Any,
                   schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "array"):
        return
    field = rule.get("roleField", "role")
    roles = [m.get(field) if isinstance(m, dict) else None for m in instance]
    system = rule.get("system")
    body = roles[1:] if system and roles and roles[0] == system else roles
    if system and system in body:
        yield ValidationError(f"role {system!r} is allowed only as the first message")
        return
    if not body:
        yield ValidationError("no turns after the system message")
        return
    a, b = rule["alternate"]
    if body[0] != rule["first"]:
        yield ValidationError(f"the first turn must have role {rule['first']!r}, "
                              f"got {body[0]!r}")
        return
    for i, role in enumerate(body):
        want = a if i % 2 == 0 else b
        if role != want:
            yield ValidationError(f"turn {i}: expected role {want!r} (roles alternate "
                                  f"{a!r}/{b!r}), got {role!r}")
            return
    if body[-1] != rule["last"]:
        yield ValidationError(f"the last turn must have role {rule['last']!r}, "
                              f"got {body[-1]!r}")


Validator = validators.extend(Draft202012Validator, {"x-roleSequence": _role_sequence})


def _message(roles: list[str]) -> dict[str, Any]:
    return {"type": "object", "required": ["role", "content"], "additionalProperties": False,
            "properties": {"role": {"enum": roles}, "content": _TEXT}}


_CHAT_SEQUENCE = {"roleField": "role", "system": "system", "first": "user",
                  "alternate": ["user", "assistant"], "last": "assistant"}

OPENAI_CHAT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "OpenAI chat fine-tuning example",
    "type": "object",
    "required": ["messages"],
    "additionalProperties": False,
    "properties": {
        "messages": {
            "type": "array", "minItems": 2,
            "items": _message(["system", "user", "assistant"]),
            "x-roleSequence": _CHAT_SEQUENCE,
        },
    },
}

_PARTS = {"type": "array", "minItems": 1,
          "items": {"type": "object", "required": ["text"], "additionalProperties": False,
                    "properties": {"text": _TEXT}}}

GEMINI: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Gemini / Vertex AI supervised tuning example",
    "type": "object",
    "required": ["contents"],
    "additionalProperties": False,
    "properties": {
        "systemInstruction": {
            "type": "object", "required": ["parts"], "additionalProperties": False,
            "properties": {"role": {"const": "system"}, "parts": _PARTS},
        },
        "contents": {
            "type": "array", "minItems": 2,
            "items": {"type": "object", "required": ["role", "parts"],
                      "additionalProperties": False,
                      "properties": {"role": {"enum": ["user", "model"]}, "parts": _PARTS}},
            "x-roleSequence": {"roleField": "role", "system": None, "first": "user",
                               "alternate": ["user", "model"], "last": "model"},
        },
    },
}

DPO: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "TRL DPO conversational preference example",
    "type": "object",
    "required": ["prompt", "chosen", "rejected"],
    "additionalProperties": False,
    "properties": {
        "prompt": {
            "type": "array", "minItems": 1,
            "items": _message(["system", "user", "assistant"]),
            "x-roleSequence": {"roleField": "role", "system": "system", "first": "user",
                               "alternate": ["user", "assistant"], "last": "user"},
        },
        "chosen": {"type": "array", "minItems": 1, "maxItems": 1,
                   "items": _message(["assistant"])},
        "rejected": {"type": "array", "minItems": 1, "maxItems": 1,
                     "items": _message(["assistant"])},
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {"openai_chat": OPENAI_CHAT, "gemini": GEMINI, "dpo": DPO}

for _schema in SCHEMAS.values():
    Validator.check_schema(_schema)
_VALIDATORS = {name: Validator(schema) for name, schema in SCHEMAS.items()}


def validate_line(fmt: str, obj: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is a valid line of format ``fmt``
    (``openai_chat``, ``gemini`` or ``dpo``)."""
    if fmt not in _VALIDATORS:
        raise ValueError(f"unknown export format {fmt!r}; known: {sorted(_VALIDATORS)}")
    _VALIDATORS[fmt].validate(obj)


def line_errors(fmt: str, obj: Any) -> list[str]:
    """Every schema violation of ``obj`` as ``<path>: <message>`` (empty when valid)."""
    if fmt not in _VALIDATORS:
        raise ValueError(f"unknown export format {fmt!r}; known: {sorted(_VALIDATORS)}")
    errors = sorted(_VALIDATORS[fmt].iter_errors(obj), key=lambda e: [str(p) for p in e.path])
    return ["/".join(str(p) for p in e.absolute_path) + ": " + e.message for e in errors]
