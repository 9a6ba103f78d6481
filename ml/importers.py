"""Importers: external chat logs -> interaction records (DESIGN.md, "The interaction record").

Four formats, one entry point (``import_file``):

* ``native``: the contract itself, JSONL (one record per line) or Parquet (one record per row,
  nested structs allowed; a NULL cell is an absent field).
* ``openai-chat``: OpenAI chat / fine-tuning JSONL, ``{"messages": [{role, content}, ...]}``.
* ``hh-rlhf``: Anthropic HH-RLHF preference pairs ``{"chosen": ..., "rejected": ...}`` (gzip or
  plain).
* ``oasst``: OpenAssistant message trees (one tree per line, replies nested, sibling ranks and
  emoji votes).

Each reader is a generator over ``(line_no, text)`` that yields :class:`Accepted` records (already
validated with ``ml.schema.validate_record``; the record is the plain JSON-ready dict that goes into
the landing zone) and :class:`Rejected` lines (line number, a reason naming the field and the
record, the raw text). Nothing is dropped silently: blank lines are not records and are counted.

Importers do not de-duplicate: a native file holding the same ``interaction_id`` twice lands as it
is and the ingest stage drops the exact copy (or quarantines a conflicting one), like any other
landing file.

Records without a time of their own (hh-rlhf pairs; openai-chat lines without ``created``; oasst
messages without ``created_date``) get a *deterministic* timestamp: the ``timestamp`` argument when
given, else the imported file's modification time (UTC, whole seconds). Formats without ids of
their own (hh-rlhf, openai-chat) get ids that are hashes of the *line's content* (and the turn):
the same line imported again, from any file under any name, at any position, gets the same id
(ingest drops the identical copy), and different lines never share one (the four hh-rlhf splits
are all called ``test.jsonl.gz``; ids derived from the file name and line number collided).

``import_to_landing`` writes the accepted records into the landing zone, one file per UTC day of
their timestamps (``LandingStore.write``: a folder or a bucket prefix), and the rejected lines into today's (UTC)
folder as ``<source>-rejected-...jsonl`` so the ingest stage quarantines them with their raw text.
A native line rejected by the record validator is written verbatim (ingest rejects it for the same
reason); any other rejected line (bad JSON structure of a foreign format, bad UTF-8, ...) is
wrapped as ``{"import_rejected": {format, source, line_no, reason, raw}}`` so the importer's reason
reaches the quarantine table too (the envelope has no ``interaction_id``, so ingest always rejects
it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from ml.landing import encode_lines, timestamp_problem
from ml.landing_store import LandingStore, open_landing
from ml.schema import RecordError, validate_record

FORMATS: tuple[str, ...] = ("native", "openai-chat", "hh-rlhf", "oasst")


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    line_no: int
    record: dict[str, Any]
    day: str  # UTC day of the record's timestamp, YYYY-MM-DD
    timestamp: datetime | None = None  # the validated timestamp


@dataclass(frozen=True)
class Rejected:
    line_no: int
    reason: str
    raw: str
    envelope: bool = True  # False: ``raw`` is a native record line, written to landing verbatim

    def as_dict(self) -> dict[str, Any]:
        return {"line_no": self.line_no, "reason": self.reason, "raw": self.raw}


@dataclass
class ImportResult:
    fmt: str
    source: str  # the imported file's name
    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {line_no, reason, raw}
    days: list[str] = field(default_factory=list)  # parallel to ``records``: UTC day
    blank_lines: int = 0
    timestamp_rejected: int = 0  # of ``rejected``: future timestamps, or before the first day
    _rejected_items: list[Rejected] = field(default_factory=list, repr=False)


# ---- line readers -------------------------------------------------------------------------------


def _check_path(path: Path | str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"import file not found: {p}")
    if not p.is_file():
        raise IsADirectoryError(f"import path is not a file: {p}")
    return p


def _open_bytes(p: Path):
    with open(p, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(p, "rb") if magic == b"\x1f\x8b" else open(p, "rb")


def iter_lines(path: Path | str) -> Iterator[tuple[int, str | bytes]]:
    """``(line_no, text)`` of a plain or gzip (detected by its magic bytes) text file; 1-based.

    A line that is not valid UTF-8 is yielded as ``bytes`` so the caller rejects it by number."""
    p = _check_path(path)
    with _open_bytes(p) as fh:
        for no, raw in enumerate(fh, 1):
            raw = raw.rstrip(b"\r\n")
            try:
                yield no, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield no, raw


def _blank(text: str) -> bool:
    return not text.strip(" \t\r")


def _parse_json_line(no: int, text: str | bytes, what: str) -> tuple[Any, Rejected | None]:
    if isinstance(text, bytes):
        return None, Rejected(no, f"line {no}: not valid UTF-8", text.decode("utf-8", "replace"))
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, Rejected(no, f"line {no}: invalid JSON ({exc.msg} at column {exc.colno})",
                              text, envelope=(what != "native"))


def _json_lines(path: Path, what: str) -> Iterator[int | Rejected | tuple[int, str, Any]]:
    """The lines of ``path``: a blank line as its number, an undecodable one as ``Rejected``,
    every other as ``(line_no, text, parsed JSON)``."""
    for no, text in iter_lines(path):
        if isinstance(text, str) and _blank(text):
            yield no
            continue
        obj, bad = _parse_json_line(no, text, what)
        yield bad if bad is not None else (no, text, obj)


def _validated(no: int, rec: dict[str, Any], raw_for_reject: str, *,
               native: bool = False) -> Accepted | Rejected:
    try:
        model = validate_record(rec)
    except RecordError as exc:
        who = f"record {exc.interaction_id!r}" if exc.interaction_id else "record"
        return Rejected(no, f"line {no}: {who}: {exc.reason}", raw_for_reject, envelope=not native)
    return Accepted(no, rec, model.timestamp.date().isoformat(), model.timestamp)


def content_digest(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes: what importer ids and the timestamp registry key on."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hid(prefix: str, *parts: object) -> str:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return f"{prefix}-{h[:24]}"


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---- native -------------------------------------------------------------------------------------


def read_native_jsonl(path: Path | str) -> Iterator[Accepted | Rejected | int]:
    """Native JSONL: each line is one record. Yields ``Accepted``/``Rejected``; a blank line
    yields its line number (an ``int``) so it is counted, not silently skipped."""
    for item in _json_lines(path, "native"):
        if not isinstance(item, tuple):  # a blank line's number or a rejected line
            yield item
            continue
        no, text, obj = item
        yield _validated(no, obj, text, native=True)


def _jsonable(v: Any) -> Any:
    """A Parquet cell as JSON: datetimes to ISO-8601 UTC, NULL struct fields removed."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, datetime):
        return _iso(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return v


def read_native_parquet(path: Path | str) -> Iterator[Accepted | Rejected]:
    """Native Parquet: one record per row (row number = line number, 1-based)."""
    import polars as pl

    p = _check_path(path)
    frame = pl.read_parquet(p)
    for no, row in enumerate(frame.iter_rows(named=True), 1):
        rec = _jsonable(row)
        yield _validated(no, rec, json.dumps(rec, ensure_ascii=False, default=str), native=True)


# ---- openai-chat --------------------------------------------------------------------------------

_OPENAI_ROLE = {"system": "system", "developer": "system", "user": "user",
                "assistant": "assistant", "tool": "tool", "function": "tool"}


_NON_TEXT_PARTS = ("image_url", "input_audio", "file")


def _openai_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") in _NON_TEXT_PARTS:
                continue  # non-text parts carry no text to learn from
            else:
                raise ValueError(f"{where}.content[{j}]: expected a text part, got {part!r:.80}")
        return "\n".join(texts)
    raise ValueError(f"{where}.content: expected a string or a list of text parts, "
                     f"got {type(content).__name__}")


def read_openai_chat(path: Path | str, tenant_id: str = "default",
                     timestamp: datetime | None = None) -> Iterator[Accepted | Rejected | int]:
    """OpenAI chat / fine-tuning JSONL: ``{"messages": [{role, content}, ...], ...}``.

    Every assistant turn becomes one interaction: ``messages`` = the turns before it, ``response``
    = its content. ``interaction_id`` = hash(line text, turn); ``session_id`` = the line's
    ``id`` when it is a string, else hash(line text); ``turn_index`` = the ordinal of the
    assistant turn in the conversation (0, 1, ...). ``timestamp`` = the line's ``created`` (unix
    seconds) when present, else ``timestamp`` (default: the file's mtime). Roles ``developer``
    -> system, ``function`` -> tool; list contents are their text parts joined by newlines
    (image, audio and file parts carry no text and are left out; any other part rejects the
    line); ``content: null`` (an assistant turn that only calls tools) is an empty string. A line
    with no assistant turn is rejected.
    """
    p = _check_path(path)
    fallback = _iso(timestamp or file_timestamp(p))
    for item in _json_lines(p, "openai-chat"):
        if not isinstance(item, tuple):  # a blank line's number or a rejected line
            yield item
            continue
        no, text, obj = item
        try:
            turns, ts, session, extra = _openai_conversation(obj, text, fallback)
        except ValueError as exc:
            yield Rejected(no, f"line {no}: {exc}", text)
            continue
        k = 0
        for i, (role, content) in enumerate(turns):
            if role != "assistant":
                continue
            rec: dict[str, Any] = {
                "interaction_id": _hid("oai", text, i),
                "tenant_id": tenant_id,
                "session_id": session,
                "turn_index": k,
                "timestamp": ts,
                "channel": "import",
                "messages": [{"role": r, "content": c} for r, c in turns[:i]],
                "response": content,
                **extra,
            }
            k += 1
            yield _validated(no, rec, text)


def _openai_conversation(obj: Any, line: str, fallback_ts: str):
    if not isinstance(obj, dict):
        raise ValueError(f"line is a JSON {type(obj).__name__}, expected an object with `messages`")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("messages: expected a non-empty list of {role, content}")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where}: expected an object, got {type(m).__name__}")
        role = _OPENAI_ROLE.get(m.get("role")) if isinstance(m.get("role"), str) else None
        if role is None:
            raise ValueError(f"{where}.role: {m.get('role')!r} is not one of "
                             f"{sorted(_OPENAI_ROLE)}")
        turns.append((role, _openai_content(m.get("content"), where)))
    if not any(r == "assistant" for r, _ in turns):
        raise ValueError("messages: no assistant turn, nothing to import")
    created = obj.get("created")
    if created is None:
        ts = fallback_ts
    elif isinstance(created, (int, float)) and not isinstance(created, bool):
        try:
            ts = _iso(datetime.fromtimestamp(created, tz=UTC))
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"created: {created!r} is not a valid unix time ({exc})") from None
    else:
        raise ValueError(f"created: expected unix seconds (a number), got {created!r:.60}")
    sid = obj.get("id")
    session = sid if isinstance(sid, str) and sid else _hid("oai-session", line)
    extra: dict[str, Any] = {}
    if isinstance(obj.get("model"), str):
        extra["model"] = {"provider": "openai", "name": obj["model"]}
    meta: dict[str, Any] = {"tags": ["import:openai-chat"]}
    src_meta = obj.get("metadata")
    if src_meta is not None:
        if not isinstance(src_meta, dict):
            raise ValueError(f"metadata: expected an object, got {type(src_meta).__name__}")
        for key in ("intent", "language"):
            if isinstance(src_meta.get(key), str):
                meta[key] = src_meta[key]
        meta["source_metadata"] = src_meta
    extra["metadata"] = meta
    return turns, ts, session, extra


# ---- hh-rlhf ------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str, where: str) -> list[tuple[str, str]]:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` -> ``[(role, content), ...]`` (user/assistant)."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"{where}: text before the first 'Human:'/'Assistant:' turn: "
                         f"{parts[0][:60]!r}")
    turns = [(_HH_ROLE[r], c) for r, c in zip(parts[1::2], parts[2::2], strict=True)]
    if not turns:
        raise ValueError(f"{where}: no 'Human:'/'Assistant:' turns found")
    if turns[-1][0] != "assistant":
        raise ValueError(f"{where}: the last turn is a Human turn, expected an Assistant turn")
    return turns


def read_hh_rlhf(path: Path | str, tenant_id: str = "default",
                 timestamp: datetime | None = None) -> Iterator[Accepted | Rejected | int]:
    """Anthropic HH-RLHF pairs. One interaction per line:

    * ``response`` = the last Assistant turn of ``rejected`` (the dispreferred reply, so
      ``feedback.thumbs`` = ``"down"``);
    * ``human_correction`` = ``{agent_id: "hh-rlhf", corrected_response: <last Assistant turn of
      chosen>, reason: "preferred by annotator"}``;
    * ``messages`` = the turns the two transcripts share before their last turns (all of them in
      almost every pair; 9 pairs of the helpful-base test split diverge earlier and are tagged
      ``hh-rlhf:context-differs``);
    * ``interaction_id`` / ``session_id`` = hashes of the line's text; ``turn_index`` = number of
      assistant turns before the response; ``timestamp`` = ``timestamp`` (default: the file's
      mtime).
    """
    p = _check_path(path)
    ts = _iso(timestamp or file_timestamp(p))
    for item in _json_lines(p, "hh-rlhf"):
        if not isinstance(item, tuple):  # a blank line's number or a rejected line
            yield item
            continue
        no, text, obj = item
        try:
            if not isinstance(obj, dict):
                raise ValueError(f"line is a JSON {type(obj).__name__}, expected an object")
            for key in ("chosen", "rejected"):
                if not isinstance(obj.get(key), str):
                    raise ValueError(f"{key}: expected a transcript string, got "
                                     f"{type(obj.get(key)).__name__}")
            chosen = parse_hh_transcript(obj["chosen"], "chosen")
            rejected = parse_hh_transcript(obj["rejected"], "rejected")
        except ValueError as exc:
            yield Rejected(no, f"line {no}: {exc}", text)
            continue
        context_r, context_c = rejected[:-1], chosen[:-1]
        shared = 0
        while (shared < min(len(context_r), len(context_c))
               and context_r[shared] == context_c[shared]):
            shared += 1
        tags = ["import:hh-rlhf"]
        if shared != len(context_r) or shared != len(context_c):
            tags.append("hh-rlhf:context-differs")
        rec = {
            "interaction_id": _hid("hh", text),
            "tenant_id": tenant_id,
            "session_id": _hid("hh-session", text),
            "turn_index": sum(1 for r, _ in context_r[:shared] if r == "assistant"),
            "timestamp": ts,
            "channel": "import",
            "model": {"provider": "anthropic", "name": "hh-rlhf"},
            "messages": [{"role": r, "content": c} for r, c in context_r[:shared]],
            "response": rejected[-1][1],
            "feedback": {"thumbs": "down"},
            "human_correction": {"agent_id": "hh-rlhf", "corrected_response": chosen[-1][1],
                                 "reason": "preferred by annotator"},
            "metadata": {"language": "en", "tags": tags},
        }
        yield _validated(no, rec, text)


# ---- oasst --------------------------------------------------------------------------------------

_OASST_ROLE = {"prompter": "user", "assistant": "assistant"}


def oasst_rating(rank: int, ranked_siblings: int) -> int:
    """Rank among ranked siblings -> 1-5: linear from 5 (rank 0) to 1 (the worst rank),
    rounded half up: of 2 -> 5, 1; of 3 -> 5, 3, 1; of 4 -> 5, 4, 2, 1; of 5 -> 5, 4, 3, 2, 1."""
    if ranked_siblings < 2:
        raise ValueError(f"rank {rank}: a rating needs at least 2 ranked siblings")
    return 5 - int(4 * rank / (ranked_siblings - 1) + 0.5)


def oasst_feedback(msg: dict[str, Any], ranked_siblings: int) -> dict[str, Any] | None:
    """The feedback of one assistant message (None when there is no evidence).

    * ``rating``: from its ``rank`` among its ranked siblings (``oasst_rating``); no rating when
      it has no rank or is the only ranked reply.
    * ``thumbs``: ``"down"`` when it has a ``red_flag`` emoji or more ``-1`` than ``+1`` votes
      (direct votes on the message win over its rank); else ``"up"`` when it is ranked best
      (rank 0 of 2 or more) or has more ``+1`` than ``-1`` votes; else none.
    * ``labels`` (other oasst exports) with ``spam`` or ``not_appropriate`` above 0.5 count as a
      red flag.
    """
    emojis = msg.get("emojis") or {}
    plus, minus, flags = emojis.get("+1", 0), emojis.get("-1", 0), emojis.get("red_flag", 0)
    labels = msg.get("labels") or {}
    for bad in ("spam", "not_appropriate"):
        lab = labels.get(bad)
        value = lab.get("value") if isinstance(lab, dict) else lab
        if isinstance(value, (int, float)) and value > 0.5:
            flags += 1
    rank = msg.get("rank")
    fb: dict[str, Any] = {}
    if isinstance(rank, int) and ranked_siblings >= 2:
        fb["rating"] = oasst_rating(rank, ranked_siblings)
    if flags > 0 or minus > plus:
        fb["thumbs"] = "down"
    elif (rank == 0 and ranked_siblings >= 2) or plus > minus:
        fb["thumbs"] = "up"
    return fb or None


def read_oasst(path: Path | str, tenant_id: str = "default",
               timestamp: datetime | None = None) -> Iterator[Accepted | Rejected | int]:
    """OpenAssistant message trees, one tree per line (``message_tree_id``, ``prompt`` with nested
    ``replies``). Every assistant message becomes an interaction:

    * ``interaction_id`` = its ``message_id``; ``session_id`` = the tree id; ``turn_index`` = its
      depth (the prompt is depth 0, so first replies are 1); ``messages`` = its ancestor path
      (prompter -> user); ``timestamp`` = its ``created_date`` when present, else ``timestamp``
      (default: the file's mtime);
    * ``feedback`` from its rank and emoji votes (see ``oasst_feedback``);
    * ``human_correction`` when a sibling is ranked better: the best-ranked sibling's text, with
      ``agent_id`` ``"oasst-ranking"`` and the two ranks in ``reason``;
    * ``metadata.language`` = ``lang``; tags ``import:oasst`` (+ ``oasst:synthetic``,
      ``oasst:deleted``, ``oasst:review-failed`` where they apply).
    A message that fails validation is rejected on its own (its tree's other messages still
    import); its raw text is the message without its replies.
    """
    p = _check_path(path)
    fallback = _iso(timestamp or file_timestamp(p))
    for item in _json_lines(p, "oasst"):
        if not isinstance(item, tuple):  # a blank line's number or a rejected line
            yield item
            continue
        no, text, obj = item
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), dict):
            yield Rejected(no, f"line {no}: prompt: expected a message tree object", text)
            continue
        tree_id = obj.get("message_tree_id") or obj["prompt"].get("message_id")
        if not isinstance(tree_id, str) or not tree_id:
            yield Rejected(no, f"line {no}: message_tree_id: missing (and prompt.message_id too)",
                           text)
            continue
        yield from _oasst_walk(obj["prompt"], [], 0, [], no, tree_id, tenant_id, fallback)


def _oasst_walk(msg: Any, path: list[dict[str, str]], depth: int, siblings: list[Any],
                no: int, tree_id: str, tenant_id: str, fallback: str
                ) -> Iterator[Accepted | Rejected]:
    where = f"tree {tree_id} message {msg.get('message_id') if isinstance(msg, dict) else '?'}"
    if not isinstance(msg, dict):
        yield Rejected(no, f"line {no}: {where}: expected an object", json.dumps(msg)[:10_000])
        return
    bare = {k: v for k, v in msg.items() if k != "replies"}
    role = _OASST_ROLE.get(msg.get("role"))
    text = msg.get("text")
    if role is None or not isinstance(text, str):
        problem = (f"role: {msg.get('role')!r} is not prompter/assistant" if role is None
                   else f"text: expected a string, got {type(text).__name__}")
        yield Rejected(no, f"line {no}: {where}: {problem} (its replies are skipped too)",
                       json.dumps(bare, ensure_ascii=False))
        return
    if role == "assistant":
        ranked = [s for s in siblings if isinstance(s, dict) and isinstance(s.get("rank"), int)]
        tags = ["import:oasst"]
        for flag, tag in (("synthetic", "oasst:synthetic"), ("deleted", "oasst:deleted")):
            if msg.get(flag) is True:
                tags.append(tag)
        if msg.get("review_result") is False:
            tags.append("oasst:review-failed")
        rec: dict[str, Any] = {
            "interaction_id": msg.get("message_id"),
            "tenant_id": tenant_id,
            "session_id": tree_id,
            "turn_index": depth,
            "timestamp": msg["created_date"] if isinstance(msg.get("created_date"), str)
            else fallback,
            "channel": "import",
            "messages": list(path),
            "response": text,
        }
        if isinstance(msg.get("model_name"), str):
            rec["model"] = {"provider": "oasst", "name": msg["model_name"]}
        fb = oasst_feedback(msg, len(ranked))
        if fb is not None:
            rec["feedback"] = fb
        rank = msg.get("rank")
        better = [s for s in ranked if isinstance(rank, int) and s["rank"] < rank]
        if better:
            best = min(better, key=lambda s: s["rank"])
            if isinstance(best.get("text"), str) and best["text"]:
                rec["human_correction"] = {
                    "agent_id": "oasst-ranking",
                    "corrected_response": best["text"],
                    "reason": f"sibling reply ranked {best['rank']} vs this reply's {rank} "
                              f"by annotators",
                }
        meta: dict[str, Any] = {"tags": tags}
        if isinstance(msg.get("lang"), str):
            meta["language"] = msg["lang"]
        rec["metadata"] = meta
        yield _validated(no, rec, json.dumps(bare, ensure_ascii=False))
    replies = msg.get("replies") or []
    if not isinstance(replies, list):
        yield Rejected(no, f"line {no}: {where}: replies: expected a list, got "
                           f"{type(replies).__name__}", json.dumps(bare, ensure_ascii=False))
        return
    child_path = path + [{"role": role, "content": text}]
    for reply in replies:
        yield from _oasst_walk(reply, child_path, depth + 1, replies, no, tree_id, tenant_id,
                               fallback)


# ---- entry points -------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def file_timestamp(path: Path | str) -> datetime:
    """The default timestamp of records without one: the file's modification time (UTC, whole
    seconds), the same however often and whenever the file is imported."""
    return datetime.fromtimestamp(int(Path(path).stat().st_mtime), tz=UTC)


def iter_import(fmt: str, path: Path | str, tenant_id: str = "default",
                timestamp: datetime | None = None) -> Iterator[Accepted | Rejected | int]:
    """The reader of ``fmt`` over ``path``: ``Accepted`` / ``Rejected`` items and, for blank
    lines, their line numbers. ``timestamp``: for records without their own (default: the
    file's mtime). Raises ``ValueError`` for an unknown format and ``FileNotFoundError`` for a
    missing file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r}: choose one of {', '.join(FORMATS)}")
    p = _check_path(path)
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ValueError(f"tenant_id: expected a non-empty string, got {tenant_id!r}")
    if fmt == "native":
        if p.suffix.lower() == ".parquet":
            return _retag_native(read_native_parquet(p), tenant_id)
        return _retag_native(read_native_jsonl(p), tenant_id)
    if timestamp is not None and not isinstance(timestamp, datetime):
        raise TypeError(f"timestamp: expected a datetime, got {type(timestamp).__name__}")
    if fmt == "openai-chat":
        return read_openai_chat(p, tenant_id, timestamp)
    if fmt == "hh-rlhf":
        return read_hh_rlhf(p, tenant_id, timestamp)
    return read_oasst(p, tenant_id, timestamp)


def _retag_native(items: Iterable[Accepted | Rejected | int], tenant_id: str
                  ) -> Iterator[Accepted | Rejected | int]:
    """Native records keep their own ``tenant_id``; records without one get ``tenant_id``."""
    for item in items:
        if isinstance(item, Accepted) and "tenant_id" not in item.record:
            item.record["tenant_id"] = tenant_id
        yield item


def import_file(fmt: str, path: Path | str, tenant_id: str = "default",
                timestamp: datetime | None = None,
                now: datetime | None = None) -> ImportResult:
    """Import one file: ``.records`` (validated dicts), ``.rejected`` ({line_no, reason, raw}).
    ``timestamp``: for records without their own (default: the file's mtime). A record whose
    timestamp is in the future (beyond ``ml.landing.FUTURE_TOLERANCE`` after ``now``, default:
    the clock) or before ``ml.landing.FIRST_DAY`` is rejected with that reason (kept, wrapped: it would
    otherwise create a landing day that has not happened)."""
    p = Path(path)
    result = ImportResult(fmt=fmt, source=p.name)
    now = now or _now()
    for item in iter_import(fmt, p, tenant_id, timestamp):
        if isinstance(item, Accepted) and item.timestamp is not None and (
                problem := timestamp_problem(item.timestamp, now)) is not None:
            iid = item.record.get("interaction_id")
            who = f"record {iid!r}" if iid else "record"
            item = Rejected(item.line_no, f"line {item.line_no}: {who}: {problem}",
                            json.dumps(item.record, ensure_ascii=False))
            result.timestamp_rejected += 1
        if isinstance(item, Accepted):
            result.records.append(item.record)
            result.days.append(item.day)
        elif isinstance(item, Rejected):
            result.rejected.append(item.as_dict())
            result._rejected_items.append(item)
        else:
            result.blank_lines += 1
    return result


def landing_source_name(fmt: str, path: Path | str) -> str:
    """``<format>-<file stem>`` reduced to the landing zone's allowed characters (55 at most, so
    ``-rejected`` still fits the 64 the landing zone allows)."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{fmt}-{name}")[:55].rstrip(".") or fmt


IMPORT_REGISTRY = "_imports"  # below the landing root; not a date= folder, so never ingested


def _registered_timestamp(landing: LandingStore, path: Path) -> tuple[str, datetime | None]:
    """Where the default timestamp of ``path``'s content is registered (a name below the
    landing root), and the registered one.

    Keyed by the SHA-256 of the file's bytes: re-importing the same content (touched, copied or
    downloaded again, so with a new mtime) reuses the first import's timestamp, which makes the
    records identical and ingest drops them as exact duplicates instead of quarantining them."""
    entry = f"{IMPORT_REGISTRY}/{content_digest(path)}.json"
    text = landing.read_text(entry)
    if text is None:
        return entry, None
    try:
        return entry, datetime.fromisoformat(json.loads(text)["timestamp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"import registry entry {landing.ref(entry)} is unreadable ({exc}); "
                         f"delete it to re-register {path.name}") from exc


def _register_timestamp(landing: LandingStore, entry: str, path: Path,
                        timestamp: datetime) -> None:
    landing.write_text(entry, json.dumps({"timestamp": timestamp.isoformat(),
                                          "first_source": path.name}))


def import_to_landing(fmt: str, path: Path | str, landing_dir: LandingStore | Path | str,
                      tenant_id: str = "default",
                      import_time: datetime | None = None,
                      timestamp: datetime | None = None,
                      warehouse: Path | str | None = None) -> dict[str, Any]:
    """Import ``path`` and write it into the landing zone.

    Accepted records go to ``date=<UTC day of their timestamp>/<source>-....jsonl`` (one file per
    day); records without a timestamp of their own get ``timestamp`` (default: the timestamp
    registered for this file content by its first import, else the file's mtime; so a re-import
    of the same content, even touched or copied, gives the same records). Rejected lines go to
    the folder of ``import_time``'s
    UTC day (default: now) as ``<source>-rejected-....jsonl`` so the ingest stage quarantines them
    with the importer's reason (see the module docstring). Returns ``{format, source, accepted,
    quarantined, blank_lines, days: {day: records}, files: [paths], ingest_outlook}``
    (``ingest_outlook``: what ingest will do with the accepted records, given the other landing
    files of their days and the ``warehouse`` DuckDB file when given). ``landing_dir``: a
    folder, an ``s3://`` URL or an ``ml.landing_store.LandingStore``; ``files`` are refs (paths
    in a folder, ``s3://bucket/key`` on object storage)."""
    import_time = import_time or _now()
    landing = open_landing(landing_dir)
    registry_entry = None
    if timestamp is None and fmt != "native":
        registry_entry, timestamp = _registered_timestamp(landing, _check_path(path))
        if timestamp is None:
            timestamp = file_timestamp(path)
        else:
            registry_entry = None  # already registered
    result = import_file(fmt, path, tenant_id, timestamp)
    source = landing_source_name(fmt, path)
    by_day: dict[str, list[dict[str, Any]]] = {}
    for rec, day in zip(result.records, result.days, strict=True):
        by_day.setdefault(day, []).append(rec)
    files: list[str] = []
    for day in sorted(by_day):
        files += landing.write(source, {day: encode_lines(by_day[day])})
    if result._rejected_items:
        lines = []
        for item in result._rejected_items:
            if item.envelope:
                lines.append(json.dumps({"import_rejected": {
                    "format": fmt, "source": result.source, "line_no": item.line_no,
                    "reason": item.reason, "raw": item.raw}}, ensure_ascii=False))
            else:
                lines.append(item.raw)
        today = import_time.astimezone(UTC).date()
        files += landing.write(f"{source}-rejected", {today: encode_lines(lines)})
    if registry_entry is not None:
        _register_timestamp(landing, registry_entry, Path(path), timestamp)
    outlook = ingest_outlook(landing, by_day, files, warehouse)
    return {
        "format": fmt,
        "source": result.source,
        "accepted": len(result.records),
        "quarantined": len(result.rejected),
        "timestamp_rejected": result.timestamp_rejected,
        "blank_lines": result.blank_lines,
        "days": {d: len(v) for d, v in sorted(by_day.items())},
        "files": files,
        "ingest_outlook": outlook,
    }


class _Ident(msgspec.Struct):
    interaction_id: Any = None
    tenant_id: Any = "default"


_IDENT = msgspec.json.Decoder(_Ident).decode


def _landing_idents(path: Path | io.BytesIO) -> Iterator[tuple[tuple[str, str], str]]:
    """((tenant_id, interaction_id), trimmed line) of the records of a JSONL landing file
    (gzip-compressed or not; a path, or the bytes of an object); lines without a readable id
    are skipped."""
    if isinstance(path, io.BytesIO):
        fh = gzip.GzipFile(fileobj=path) if path.getvalue()[:2] == b"\x1f\x8b" else path
    else:
        fh = _open_bytes(path)
    with fh:
        for raw in fh:
            try:
                ident = _IDENT(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(ident.interaction_id, str) and isinstance(ident.tenant_id, str):
                yield (ident.tenant_id, ident.interaction_id), raw.decode(
                    "utf-8", "replace").strip(" \t\r\n")


def ingest_outlook(landing_dir: LandingStore | Path | str,
                   by_day: dict[str, list[dict[str, Any]]], written: list[Path | str],
                   warehouse: Path | str | None = None) -> dict[str, Any]:
    """What the ingest stage will do with the records just imported (``by_day``: the accepted
    records per landing day; ``written``: the files the import wrote).

    Ingest keys records on ``(tenant_id, interaction_id)`` per day: of two records with the same
    key the first (by file name, then line) is kept, a later identical copy is dropped and a
    later different one is quarantined; a key another day already holds in the warehouse is
    dropped when identical and quarantined when changed. Counted here: ``duplicates_in_import``
    and ``in_other_landing_files`` (same day, not yet told apart by file order: one of the two
    copies goes), each ``{exact, conflicting}``; ``already_ingested`` (keys the warehouse's
    ``interactions`` table holds; ``None`` when it could not be read, with ``warehouse_note``);
    ``unchecked_files`` (Parquet landing files, not scanned); ``new`` = the rest."""
    out: dict[str, Any] = {"records": 0, "duplicates_in_import": {"exact": 0, "conflicting": 0},
                           "in_other_landing_files": {"exact": 0, "conflicting": 0},
                           "already_ingested": 0, "unchecked_files": 0}
    landing = open_landing(landing_dir)
    written_set = ({str(Path(p).resolve()) for p in written} if landing.is_local
                   else {str(p) for p in written})
    keys: set[tuple[str, str]] = set()
    in_other: set[tuple[str, str]] = set()  # keys another landing file of the day holds too
    for day, recs in by_day.items():
        seen: dict[tuple[str, str], str] = {}
        for rec in recs:
            out["records"] += 1
            key = (rec.get("tenant_id", "default"), rec["interaction_id"])
            text = json.dumps(rec, ensure_ascii=False)
            if key in seen:
                kind = "exact" if seen[key] == text else "conflicting"
                out["duplicates_in_import"][kind] += 1
                continue
            seen[key] = text
            keys.add(key)
        for other in landing.files(day):
            if other.ref in written_set:
                continue
            if other.name.endswith(".parquet"):
                out["unchecked_files"] += 1
                continue
            source = (Path(other.ref) if landing.is_local
                      else io.BytesIO(landing.read_bytes(other.ref)))
            for key, text in _landing_idents(source):
                if key in seen:
                    kind = "exact" if seen[key] == text else "conflicting"
                    out["in_other_landing_files"][kind] += 1
                    in_other.add(key)
    out["already_ingested"] = _already_ingested(keys - in_other, warehouse, out)
    out["new"] = (out["records"] - sum(out["duplicates_in_import"].values()) - len(in_other)
                  - (out["already_ingested"] or 0))
    return out


def _already_ingested(keys: set[tuple[str, str]], warehouse, out: dict[str, Any]) -> int | None:
    """How many of ``keys`` the warehouse's ``interactions`` table holds (read-only);
    ``warehouse``: the DuckDB file or a DuckLake (``ml.warehouse.Target``), or None."""
    import duckdb  # noqa: PLC0415

    from ml.lake import Lake, LakeError  # noqa: PLC0415
    from ml.warehouse import connect, exists, key_table  # noqa: PLC0415

    if warehouse is not None and not isinstance(warehouse, Lake):
        warehouse = Path(warehouse)
    try:
        if not keys or warehouse is None or not exists(warehouse):
            return 0
        con = connect(warehouse, read_only=True)
    except (duckdb.Error, LakeError) as exc:
        out["warehouse_note"] = f"warehouse not read ({' '.join(str(exc).split())[:200]})"
        return None
    try:
        if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = "
                           "'interactions'").fetchall()[0][0]:
            return 0
        con.register("_keys", key_table(keys))
        return con.execute("SELECT count(*) FROM _keys k SEMI JOIN interactions i "
                           "USING (tenant_id, interaction_id)").fetchall()[0][0]
    finally:
        con.close()


__all__ = [
    "FORMATS", "Accepted", "ImportResult", "Rejected", "import_file", "import_to_landing",
    "iter_import", "iter_lines", "landing_source_name", "oasst_feedback", "oasst_rating",
    "parse_hh_transcript", "read_hh_rlhf", "read_native_jsonl", "read_native_parquet",
    "read_oasst", "read_openai_chat",
]
