"""The conversation of one interaction, as the auditor, the teacher and the review items read it.

The warehouse column ``messages`` holds the context of a reply as a JSON list of ``{role,
content}`` (``ml.tables``: ``interactions``). This module turns it back into a list
(:func:`parse_messages`), into ``role: content`` lines for an LLM prompt
(:func:`render_conversation`, each message clipped by :func:`clip`), and finds the last user
message (:func:`last_user_message`). A malformed column raises :class:`RowInputError` naming the
interaction: a request-specific failure of that one row (``ml.audit.failures``), never a crash of
the run.
"""

from __future__ import annotations

import json
from typing import Any

MAX_TEXT_CHARS = 6000  # per message, so one long conversation cannot blow the context window


class RowInputError(ValueError):
    """One interaction's own data cannot be turned into a request (e.g. its ``messages`` column
    is not a JSON list of {role, content}). The message names the interaction."""


def clip(text: str) -> str:
    """``text`` cut to :data:`MAX_TEXT_CHARS`, marked ``[...]`` where it was cut."""
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + " [...]"


def parse_messages(messages_json: str | None, interaction_id: str) -> list[Any]:
    """The ``messages`` column of one interaction as a list ([] when the column is empty).
    Raises :class:`RowInputError` naming the interaction when it is not a JSON list."""
    if not messages_json:
        return []
    if not isinstance(messages_json, str):
        raise RowInputError(f"interaction {interaction_id}: messages must be a JSON string, "
                            f"got {type(messages_json).__name__}")
    try:
        messages = json.loads(messages_json)
    except json.JSONDecodeError as exc:
        raise RowInputError(f"interaction {interaction_id}: messages is not valid JSON: {exc}") from None
    if not isinstance(messages, list):
        raise RowInputError(f"interaction {interaction_id}: messages must be a JSON list")
    return messages


def render_conversation(messages_json: str | None, user_message: str | None,
                        interaction_id: str) -> str:
    """``role: content`` lines from the ``messages`` JSON column (the last user message when the
    column is empty). Raises :class:`RowInputError` naming the interaction when the column is
    malformed."""
    lines = []
    for i, m in enumerate(parse_messages(messages_json, interaction_id)):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowInputError(f"interaction {interaction_id}: messages[{i}] lacks role/content")
        lines.append(f"{m['role']}: {clip(str(m['content']))}")
    if not lines and user_message:
        lines.append(f"user: {clip(user_message)}")
    return "\n".join(lines) if lines else "(no earlier messages)"


def last_user_message(messages: list[dict[str, Any]] | None) -> str | None:
    """The content of the last non-empty user message of a parsed conversation, if any."""
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user" and m.get("content"):
            return str(m["content"])
    return None
