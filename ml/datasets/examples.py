"""One training example (:class:`Example`), what is held out of training (:class:`HeldOut`), and
the content hashes that name examples across versions and stores.

An example is a conversation up to and including the last user turn (``messages``) and the
target assistant reply (``completion``). Its identity is ``key``: ``sample:<review item id>``
(a reviewer-approved correction) or ``interaction:<tenant>/<interaction id>`` (a good historical
interaction). ``session_key`` names its conversation: a session is never on both sides of a split.

Hashes (SHA-256, hex), stable across processes, machines and input order:

* :func:`prompt_hash` (messages): every message as ``(role, text)``, the text NFC-normalised,
  whitespace runs collapsed to one space, stripped and **casefolded**. Two prompts that differ
  only in case or spacing share it; the evaluation suite is held out of training by it.
* :func:`example_hash` (messages, completion): the prompt hash and the completion (NFC,
  whitespace collapsed, stripped; case kept: a reply's case is part of the reply). Exact
  de-duplication and the dataset's version hash use it.

``Example.from_dict`` checks the *types* of every field and raises ``ValueError`` naming the
field and the key; the *conversation rules* (role order, empty turns) are checked by
:func:`conversation_problem` and the build drops an example that breaks them, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

ROLES = ("system", "user", "assistant")
UNCATEGORIZED = "uncategorized"
KEY_PREFIXES = ("sample:", "interaction:")
REPLAY_SOURCES = ("replay:approved", "replay:interaction")
_WS = re.compile(r"\s+")


# ---- normalisation and hashes -----------------------------------------------------------------

def normalise_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped (case kept)."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _sha(payload: object) -> str:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _message_pairs(messages: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(str(m["role"]), str(m["content"])) for m in messages]


def prompt_hash(messages: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 of the normalised prompt: each message's role and its text normalised
    (:func:`normalise_text`) and casefolded."""
    return _sha([[role, normalise_text(text).casefold()]
                 for role, text in _message_pairs(messages)])


def example_hash(messages: Iterable[Mapping[str, Any]], completion: str) -> str:
    """SHA-256 of (:func:`prompt_hash`, the normalised completion, case kept)."""
    return _sha([prompt_hash(messages), normalise_text(completion)])


def seeded_rank(seed: int, *parts: object) -> str:
    """A seeded, input-order-free sort key: SHA-256 of ``seed`` and ``parts``. Sorting by it is
    a deterministic shuffle in which adding items never reorders the others."""
    return hashlib.sha256(json.dumps([seed, *[str(p) for p in parts]]).encode()).hexdigest()


# ---- conversation rules -----------------------------------------------------------------------

def role_problem(roles: Sequence[Any], *, ends_with: str = "assistant") -> str | None:
    """Why the role sequence is not valid, or None: an optional ``system`` first, then ``user``
    and ``assistant`` alternating, starting with ``user`` and ending with ``ends_with``."""
    if not roles:
        return "no messages"
    for i, role in enumerate(roles):
        if role not in ROLES:
            return f"message {i}: role {role!r} is not one of {list(ROLES)}"
    body = list(roles[1:]) if roles[0] == "system" else list(roles)
    if not body:
        return "only a system message"
    for i, role in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            at = i + (len(roles) - len(body))
            return f"message {at}: expected role {want}, got {role} (optional system first, " \
                   f"then user and assistant alternating, starting with user)"
    if body[-1] != ends_with:
        return f"the conversation ends with {body[-1]}, expected {ends_with}"
    return None


def empty_turns(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indexes of the messages whose content is not a string with a non-blank character."""
    return [i for i, m in enumerate(messages)
            if not isinstance(m.get("content"), str) or not m["content"].strip()]


def conversation_problem(messages: Sequence[Mapping[str, Any]], *,
                         ends_with: str = "assistant") -> str | None:
    """Why ``messages`` is not a valid conversation, or None: the roles follow
    :func:`role_problem` and no turn is empty (blank after stripping)."""
    why = role_problem([m.get("role") for m in messages], ends_with=ends_with)
    if why:
        return why
    empty = empty_turns(messages)
    if empty:
        return f"message {empty[0]} ({messages[empty[0]].get('role')}): empty turn"
    return None


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The content of the last non-blank user message (what ``interaction_embeddings``
    embeds as the ``question`` vector)."""
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].strip():
            return m["content"]
    return None


# ---- Example ----------------------------------------------------------------------------------

def _utc(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{what}: not an ISO date-time: {value!r}") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"{what}: expected a datetime, got {type(value).__name__}")


@dataclass(frozen=True)
class Example:
    """One candidate training example. Treat ``messages`` as read-only.

    ``vector`` is the MiniLM (384-d, L2-normalised) embedding of the last user message, the
    ``question`` vector of ``interaction_embeddings``; when missing the build computes it.
    ``interaction_id`` is the interaction the example came from (for a sample, the audited
    interaction), so :func:`ml.datasets.build.stored_vectors` can read its stored vector.
    """

    key: str
    tenant_id: str
    session_key: str
    messages: tuple[dict[str, str], ...]
    completion: str
    source: str
    review_item_id: int | None = None
    category: str = UNCATEGORIZED
    intent: str | None = None
    quality: float | None = None
    timestamp: datetime | None = None
    tags: tuple[str, ...] = ()
    thumbs_up: bool | None = None
    interaction_id: str | None = None
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        """An example from a mapping with the field names above (``category`` None ->
        ``uncategorized``; ``vector`` any float sequence). A wrong type raises ``ValueError``
        naming the field and the key."""
        key = d.get("key")
        if not isinstance(key, str) or not key.startswith(KEY_PREFIXES):
            raise ValueError(f"example key must be a string starting with one of "
                             f"{list(KEY_PREFIXES)}, got {key!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"example {key}: unknown fields {unknown}")

        def text(name: str, *, optional: bool = False) -> str | None:
            v = d.get(name)
            if v is None and optional:
                return None
            if not isinstance(v, str) or (not optional and not v.strip()):
                raise ValueError(f"example {key}: {name} must be a non-empty string, got {v!r}")
            return v

        raw = d.get("messages")
        if not isinstance(raw, Sequence) or isinstance(raw, str):
            raise ValueError(f"example {key}: messages must be a list of {{role, content}}")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) \
                    or not isinstance(m.get("content"), str):
                raise ValueError(f"example {key}: messages[{i}] must be {{role: str, content: "
                                 f"str}}, got {m!r}")
            messages.append({"role": m["role"], "content": m["content"]})
        completion = d.get("completion")
        if not isinstance(completion, str):
            raise ValueError(f"example {key}: completion must be a string, got {completion!r}")
        rid = d.get("review_item_id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
            raise ValueError(f"example {key}: review_item_id must be an int or None, got {rid!r}")
        quality = d.get("quality")
        if quality is not None:
            if isinstance(quality, bool) or not isinstance(quality, int | float) \
                    or not math.isfinite(quality):
                raise ValueError(f"example {key}: quality must be a finite number or None, "
                                 f"got {quality!r}")
            quality = float(quality)
        tags = d.get("tags") or ()
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"example {key}: tags must be a list of strings, got {tags!r}")
        thumbs = d.get("thumbs_up")
        if thumbs is not None and not isinstance(thumbs, bool):
            raise ValueError(f"example {key}: thumbs_up must be a bool or None, got {thumbs!r}")
        vector = d.get("vector")
        if vector is not None:
            vector = np.asarray(vector, dtype=np.float32)
            if vector.ndim != 1 or not np.all(np.isfinite(vector)):
                raise ValueError(f"example {key}: vector must be a flat list of finite floats")
        category = d.get("category")
        if category is not None and not isinstance(category, str):
            raise ValueError(f"example {key}: category must be a string or None")
        return cls(
            key=key, tenant_id=text("tenant_id"), session_key=text("session_key"),
            messages=tuple(messages), completion=completion, source=text("source"),
            review_item_id=rid, category=(category or "").strip() or UNCATEGORIZED,
            intent=text("intent", optional=True), quality=quality,
            timestamp=_utc(d.get("timestamp"), f"example {key}: timestamp"),
            tags=tuple(sorted(set(tags))), thumbs_up=thumbs,
            interaction_id=text("interaction_id", optional=True), vector=vector)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (no vector)."""
        return {
            "key": self.key, "tenant_id": self.tenant_id, "session_key": self.session_key,
            "messages": [dict(m) for m in self.messages], "completion": self.completion,
            "source": self.source, "review_item_id": self.review_item_id,
            "category": self.category, "intent": self.intent, "quality": self.quality,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "tags": list(self.tags), "thumbs_up": self.thumbs_up,
            "interaction_id": self.interaction_id,
        }

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.messages)

    @property
    def example_hash(self) -> str:
        return example_hash(self.messages, self.completion)

    @property
    def question(self) -> str | None:
        """The last user message: what the vector embeds."""
        return last_user_text(self.messages)

    def conversation(self) -> list[dict[str, str]]:
        """``messages`` followed by the completion as the final assistant turn."""
        return [dict(m) for m in self.messages] + [{"role": "assistant",
                                                    "content": self.completion}]

    def problem(self) -> str | None:
        """Why this example breaks the conversation rules (:func:`conversation_problem` over the
        prompt, which must end with a user turn, and a non-blank completion), or None."""
        why = conversation_problem(self.messages, ends_with="user")
        if why:
            return why
        if not self.completion.strip():
            return "completion: empty turn"
        return None

    @property
    def is_replay(self) -> bool:
        return self.source.startswith("replay:")

    def with_vector(self, vector: np.ndarray) -> Example:
        return replace(self, vector=np.asarray(vector, dtype=np.float32))


def as_examples(items: Iterable[Example | Mapping[str, Any]], what: str) -> list[Example]:
    """Examples from examples or mappings; a key given twice raises ``ValueError``."""
    out: list[Example] = []
    seen: set[str] = set()
    for n, it in enumerate(items):
        try:
            ex = it if isinstance(it, Example) else Example.from_dict(it)
        except ValueError as exc:
            raise ValueError(f"{what}[{n}]: {exc}") from None
        if ex.key in seen:
            raise ValueError(f"{what}: key {ex.key!r} is given twice")
        seen.add(ex.key)
        out.append(ex)
    return out


# ---- held out ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeldOut:
    """Examples that must never enter training data (the evaluation suites' items), by key and
    by prompt hash. ``store.datasets.held_out`` returns an object of the same shape; any object
    with ``keys`` and ``prompt_hashes`` works where a ``HeldOut`` is expected."""

    keys: frozenset[str] = frozenset()
    prompt_hashes: frozenset[str] = frozenset()

    def __contains__(self, item: tuple[str, str]) -> bool:
        key, phash = item
        return key in self.keys or phash in self.prompt_hashes

    @classmethod
    def of(cls, examples: Iterable[Example]) -> HeldOut:
        examples = list(examples)
        return cls(keys=frozenset(e.key for e in examples),
                   prompt_hashes=frozenset(e.prompt_hash for e in examples))


def held_out_reason(ex: Example, held_out: Any) -> str | None:
    """``held_out:key`` / ``held_out:prompt`` when ``held_out`` (keys, prompt_hashes) holds it."""
    if held_out is None:
        return None
    if ex.key in held_out.keys:
        return "held_out:key"
    if ex.prompt_hash in held_out.prompt_hashes:
        return "held_out:prompt"
    return None
