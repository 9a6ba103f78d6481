"""The offline base model: a small causal LM pretrained from the historical logs, no network.

learnloop must be able to fine-tune something even when no pretrained model can be downloaded.
This module builds one from the warehouse's ``interactions``:

1. :func:`corpus_from_warehouse` reads ``messages`` and ``response`` of the ``interactions`` table
   (ordered by ``tenant_id, interaction_id``; a seeded sample when there are more rows than the
   cap) and :func:`conversations_from_rows` turns each row into the conversation
   ``[*messages, {"role": "assistant", "content": response}]``. Bad rows (empty reply, messages
   that are not a JSON list, ...) are skipped and counted by reason, never fatal.
2. :func:`build_base_model` trains the project's byte-level BPE tokenizer with its ChatML template
   (:func:`ml.training.tokenizer.train_chat_tokenizer`) on the conversations, builds a
   ``Qwen2ForCausalLM`` from a :class:`BaseModelSpec` (tied embeddings, grouped-query attention)
   and *briefly* pretrains it with the causal-LM loss on every token of the ChatML-rendered
   conversations: exact duplicates and conversations that are a prefix of another one (the
   earlier turns of a session: each row repeats its session's context) are dropped first, 5% of
   the conversations are held out for a validation loss, and the rest are packed into blocks of
   ``max_seq_len`` tokens (conversations separated by ``<|endoftext|>``, re-shuffled and re-packed
   every epoch). A plain torch loop (AdamW, linear warmup then cosine decay to 10% of the peak
   rate, gradient clipping at 1.0); fp32 on the CPU, autocast mixed precision on CUDA. The
   default spec pretrains on ~3000 demo interactions in about 1-2 minutes on a 2-core CPU and
   replies fluently and on-topic to seen question types, but it is far from memorising the logs:
   a LoRA fine-tune on corrected replies still has room to improve it.
3. The model and tokenizer are saved with ``save_pretrained`` into a temporary sibling folder
   that is renamed into ``out_dir`` only when complete, with ``learnloop_base.json`` (spec,
   corpus stats, metrics, loss curve). :func:`load_base_model` loads it back offline
   (``local_files_only``), :func:`read_base_info` reads the JSON.

Same conversations + same spec (seed) on the same device and thread count give identical weights.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ml.training.chat import IGNORE_INDEX, pick_device
from ml.training.tokenizer import SPECIAL_TOKENS, train_chat_tokenizer

INFO_FILE = "learnloop_base.json"
ROLES = ("system", "user", "assistant")
# other spellings of the three roles found in chat logs; any other role (tool, function, ...) is
# dropped from the conversation and counted
ROLE_ALIASES = {"human": "user", "customer": "user", "developer": "system", "bot": "assistant",
                "ai": "assistant", "model": "assistant", "agent": "assistant"}

Conversation = list[dict[str, str]]
Progress = Callable[[dict[str, Any]], None]


class CorpusError(ValueError):
    """The warehouse cannot give a corpus to pretrain on (missing file, table, or no rows)."""


@dataclass(frozen=True)
class BaseModelSpec:
    """Architecture and pretraining hyper-parameters of the offline base model.

    The defaults (a ~4.5M-parameter Qwen2: 4 layers of width 256, 4 query / 2 key-value heads,
    vocabulary 4096) pretrain on ~3000 demo interactions in about 1-2 minutes on a 2-core CPU.
    ``epochs`` may be fractional. ``batch_size`` counts packed blocks of ``max_seq_len`` tokens.
    ``max_conversations`` caps the corpus read from the warehouse (a seeded sample beyond it).
    """

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    max_seq_len: int = 384
    epochs: float = 8.0
    batch_size: int = 4
    learning_rate: float = 3e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    seed: int = 0
    max_conversations: int = 20000
    val_fraction: float = 0.05
    min_frequency: int = 2  # of a BPE merge
    log_every: int = 10  # steps between progress calls (and validation of nothing else)

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                    "intermediate_size", "max_seq_len", "batch_size", "max_conversations",
                    "min_frequency", "log_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BaseModelSpec.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"BaseModelSpec.hidden_size ({self.hidden_size}) must be a multiple "
                             f"of num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"BaseModelSpec.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"BaseModelSpec: the head size hidden_size/num_heads = "
                             f"{self.hidden_size // self.num_heads} must be even (rotary "
                             f"embeddings)")
        if self.vocab_size < 300:
            raise ValueError(f"BaseModelSpec.vocab_size must be at least 300 (256 bytes + "
                             f"specials), got {self.vocab_size}")
        if self.max_seq_len < 8:
            raise ValueError(f"BaseModelSpec.max_seq_len must be at least 8, got "
                             f"{self.max_seq_len}")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"BaseModelSpec.epochs must be > 0, got {self.epochs!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"BaseModelSpec.learning_rate must be > 0, got "
                             f"{self.learning_rate!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"BaseModelSpec.warmup_ratio must be in [0, 1), got "
                             f"{self.warmup_ratio!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"BaseModelSpec.weight_decay must be >= 0, got "
                             f"{self.weight_decay!r}")
        if not 0 <= self.val_fraction < 0.5:
            raise ValueError(f"BaseModelSpec.val_fraction must be in [0, 0.5), got "
                             f"{self.val_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseModelSpec:
        """The spec of ``to_dict()`` output; an unknown key is an error (not silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"BaseModelSpec: unknown fields {unknown}")
        return cls(**dict(data))


@dataclass(frozen=True)
class BaseModelResult:
    """What :func:`build_base_model` built: the folder, its spec, metrics (as in
    ``learnloop_base.json``), the training loss curve ``[(step, loss), ...]`` and the parameter
    count."""

    path: Path
    spec: BaseModelSpec
    metrics: dict[str, Any]
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    n_params: int = 0


# ---- corpus ------------------------------------------------------------------------------------

def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _row_conversation(row: Mapping[str, Any], dropped: dict[str, int]) -> Conversation | str:
    """The conversation of one row, or the reason it is skipped."""
    response = row.get("response")
    if not isinstance(response, str):
        return "missing_response" if response is None else "response_not_text"
    if not response.strip():
        return "empty_response"
    raw = row.get("messages")
    if raw is None:
        return "missing_messages"
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unparsable_messages"
    if not isinstance(raw, list):
        return "messages_not_a_list"
    out: Conversation = []
    row_dropped: dict[str, int] = {}
    for m in raw:
        if not isinstance(m, Mapping):
            _count(row_dropped, "not_an_object")
            continue
        role = m.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        content = m.get("content")
        if role not in ROLES:
            _count(row_dropped, f"role:{m.get('role')}")
        elif not isinstance(content, str) or not content.strip():
            _count(row_dropped, "empty_content")
        else:
            out.append({"role": role, "content": content})
    out.append({"role": "assistant", "content": response})
    if any(s in m["content"] for m in out for s in SPECIAL_TOKENS):
        return "special_token_in_text"  # would break the ChatML structure of the training text
    for k, v in row_dropped.items():
        dropped[k] = dropped.get(k, 0) + v
    return out


def conversations_from_rows(rows: Iterable[Mapping[str, Any]]
                            ) -> tuple[list[Conversation], dict[str, int]]:
    """Conversations ``[*messages, {"role": "assistant", "content": response}]`` from rows with
    ``messages`` (a JSON string or a list of ``{role, content}``) and ``response``.

    Returns ``(conversations, skipped)``. ``skipped`` counts rows left out by reason
    (``empty_response``, ``missing_response``, ``response_not_text``, ``missing_messages``,
    ``unparsable_messages``, ``messages_not_a_list``, ``special_token_in_text``: a text holding
    ``<|im_start|>`` etc., which would break the ChatML rendering) and, under ``dropped_message:``
    keys, single messages dropped from kept rows: a role other than system/user/assistant (after
    mapping the aliases of ``ROLE_ALIASES``, e.g. ``human`` -> user; ``tool`` is dropped as
    ``dropped_message:role:tool``), an entry that is not an object, or empty content. A bad row
    never raises."""
    conversations: list[Conversation] = []
    skipped: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            _count(skipped, "row_not_a_mapping")
            continue
        got = _row_conversation(row, dropped)
        if isinstance(got, str):
            _count(skipped, got)
        else:
            conversations.append(got)
    skipped.update({f"dropped_message:{k}": v for k, v in sorted(dropped.items())})
    return conversations, skipped


def corpus_from_warehouse(warehouse_path: str | Path | Any, max_conversations: int = 20000,
                          seed: int = 0) -> tuple[list[Conversation], dict[str, Any]]:
    """The conversations of the warehouse's ``interactions`` table and their stats.

    Reads only ``messages`` and ``response``, ordered by ``tenant_id, interaction_id``; with more
    rows than ``max_conversations``, a sample of that many rows drawn with ``random.Random(seed)``
    (kept in that order). Raises :class:`CorpusError` naming the file when the warehouse does not
    exist, has no ``interactions`` table, or the table (or the sample) gives no conversation.
    Stats: ``warehouse``, ``rows_in_table``, ``rows_read``, ``sampled``, ``conversations`` and
    ``skipped`` (see :func:`conversations_from_rows`)."""
    from ml.lake import Lake
    from ml.warehouse import connect, exists, table_exists

    if max_conversations < 1:
        raise ValueError(f"max_conversations must be >= 1, got {max_conversations}")
    # the DuckDB file, or a DuckLake (str() of a Lake is redacted)
    path = warehouse_path if isinstance(warehouse_path, Lake) else Path(warehouse_path)
    if not (exists(path) if isinstance(path, Lake) else path.is_file()):
        raise CorpusError(f"warehouse {path} does not exist: ingest some logs first (no corpus "
                          f"to build the base model from)")
    con = connect(path, read_only=True)
    try:
        if not table_exists(con, "interactions"):
            raise CorpusError(f"warehouse {path} has no interactions table: ingest some logs "
                              f"first (no corpus to build the base model from)")
        total = int(con.execute("SELECT count(*) FROM interactions").fetchall()[0][0])
        if total == 0:
            raise CorpusError(f"the interactions table of warehouse {path} is empty: no corpus "
                              f"to build the base model from")
        ordered = ("SELECT messages, response, row_number() OVER "
                   "(ORDER BY tenant_id, interaction_id) - 1 AS rn FROM interactions")
        if total <= max_conversations:
            rows = con.execute(f"SELECT messages, response FROM ({ordered}) ORDER BY rn").fetchall()
        else:
            import pyarrow as pa

            picked = sorted(random.Random(seed).sample(range(total), max_conversations))
            con.register("_picked", pa.table({"rn": pa.array(picked, pa.int64())}))
            try:
                rows = con.execute(f"SELECT messages, response FROM ({ordered}) o "
                                   "SEMI JOIN _picked USING (rn) ORDER BY rn").fetchall()
            finally:
                con.unregister("_picked")
    finally:
        con.close()
    conversations, skipped = conversations_from_rows(
        {"messages": m, "response": r} for m, r in rows)
    if not conversations:
        raise CorpusError(f"no usable conversation among the {len(rows)} interactions read from "
                          f"warehouse {path} (skipped: {skipped})")
    stats = {"warehouse": str(path), "rows_in_table": total, "rows_read": len(rows),
             "sampled": total > max_conversations, "conversations": len(conversations),
             "skipped": skipped}
    return conversations, stats


def drop_redundant(conversations: Sequence[Sequence[Mapping[str, str]]]
                   ) -> tuple[list[Conversation], dict[str, int]]:
    """The conversations without exact duplicates and without those that are a proper prefix of
    another one (each interaction repeats its session's earlier turns as context, so the last
    turn of a session holds all its text). First occurrences are kept, in order. Returns
    ``(kept, {"duplicates": n, "prefixes": n})``."""
    keys = [tuple((m["role"], m["content"]) for m in c) for c in conversations]
    prefixes = {k[:i] for k in keys for i in range(1, len(k))}
    seen: set[tuple] = set()
    kept: list[Conversation] = []
    dropped = {"duplicates": 0, "prefixes": 0}
    for conv, key in zip(conversations, keys, strict=True):
        if key in prefixes:
            dropped["prefixes"] += 1
        elif key in seen:
            dropped["duplicates"] += 1
        else:
            seen.add(key)
            kept.append([dict(m) for m in conv])
    return kept, dropped


# ---- training ----------------------------------------------------------------------------------

def _check_conversations(conversations: Sequence[Sequence[Mapping[str, str]]]) -> None:
    if not conversations:
        raise ValueError("build_base_model: no conversations to pretrain on")
    for i, conv in enumerate(conversations):
        if not conv:
            raise ValueError(f"build_base_model: conversation {i} is empty")
        for j, m in enumerate(conv):
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"build_base_model: conversation {i}, message {j} is not a "
                                 f"{{role: system|user|assistant, content: str}} (got "
                                 f"role {m.get('role')!r}); use conversations_from_rows")


def _pack(docs: Sequence[Sequence[int]], order: Sequence[int], block: int,
          sep: int) -> list[list[int]]:
    """Token lists in ``order``, each followed by ``sep``, cut into blocks of ``block`` tokens (the
    last one shorter)."""
    stream: list[int] = []
    for i in order:
        stream.extend(docs[i])
        stream.append(sep)
    return [stream[s:s + block] for s in range(0, len(stream), block)]


def _batch(blocks: Sequence[Sequence[int]], pad_id: int):
    """Right-padded ``input_ids``/``attention_mask``/``labels`` tensors; labels of padding are
    ``-100``. The separator (also the pad token) inside a block is a real, labelled token."""
    import torch

    width = max(len(b) for b in blocks)
    ids = torch.full((len(blocks), width), pad_id, dtype=torch.long)
    labels = torch.full((len(blocks), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(blocks), width), dtype=torch.long)
    for r, b in enumerate(blocks):
        ids[r, :len(b)] = torch.tensor(b, dtype=torch.long)
        labels[r, :len(b)] = ids[r, :len(b)]
        mask[r, :len(b)] = 1
    return ids, mask, labels


def _lr_factor(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _evaluate(model: Any, blocks: Sequence[Sequence[int]], batch_size: int, pad_id: int,
              device: Any, autocast: Any) -> float | None:
    """Mean per-token loss over ``blocks`` (None without blocks)."""
    import torch

    if not blocks:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(blocks), batch_size):
            ids, mask, labels = (t.to(device) for t in _batch(blocks[s:s + batch_size], pad_id))
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            total += float(loss) * n
            count += n
    model.train()
    return total / count


def _make_model(spec: BaseModelSpec, tokenizer: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_seq_len, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, use_cache=True)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def _temp_sibling(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already holds files (a base model?); pass "
                              f"overwrite=True to replace it")


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder to ``out_dir``; an old ``out_dir`` (non-empty only
    with ``overwrite``) is moved aside first and deleted once the new one is in place."""
    _check_target(out_dir, overwrite)
    old = None
    if out_dir.is_dir():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old)


def build_base_model(conversations: Sequence[Sequence[Mapping[str, str]]],
                     out_dir: str | Path, spec: BaseModelSpec | None = None, *,
                     progress: Progress | None = None, device: str | None = None,
                     overwrite: bool = False,
                     corpus_stats: Mapping[str, Any] | None = None) -> BaseModelResult:
    """Train the tokenizer and pretrain a small Qwen2 causal LM on ``conversations`` (lists of
    ``{role, content}``, roles system/user/assistant: see :func:`conversations_from_rows`), and
    save both to ``out_dir`` (see the module docstring for the recipe).

    ``progress`` (optional) is called with ``{step, total_steps, loss, tokens, tokens_per_s,
    lr}`` every ``spec.log_every`` steps and after the last one. ``device`` forces ``cpu``,
    ``cuda`` or ``mps`` (default: :func:`ml.training.chat.pick_device`). A non-empty ``out_dir``
    is refused (``FileExistsError``, checked before training) unless ``overwrite``; the folder
    appears complete or not at all. ``corpus_stats`` (e.g. from :func:`corpus_from_warehouse`)
    is stored in ``learnloop_base.json`` under ``corpus`` next to the build's own counts.
    Torch's default thread count is used as is.
    """
    import contextlib

    import torch

    spec = spec or BaseModelSpec()
    out_dir = Path(out_dir)
    _check_conversations(conversations)
    _check_target(out_dir, overwrite)
    dev = pick_device(device)
    torch_device = torch.device(dev.name)
    amp_dtype = getattr(torch, dev.dtype)
    started = time.perf_counter()

    docs_conv, redundant = drop_redundant(conversations)
    rng = random.Random(spec.seed)
    order = list(range(len(docs_conv)))
    rng.shuffle(order)
    n_val = int(round(len(order) * spec.val_fraction)) if len(order) >= 20 else 0
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])

    tokenizer = train_chat_tokenizer(
        (f"{m['role']}\n{m['content']}" for i in train_idx for m in docs_conv[i]),
        vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
        model_max_length=spec.max_seq_len)
    texts = tokenizer.apply_chat_template(docs_conv, tokenize=False)
    docs = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pad_id, sep = tokenizer.pad_token_id, tokenizer.pad_token_id
    train_docs = [docs[i] for i in train_idx]
    val_blocks = _pack([docs[i] for i in val_idx], range(len(val_idx)), spec.max_seq_len, sep)
    train_tokens_per_epoch = sum(len(d) + 1 for d in train_docs)
    blocks_per_epoch = math.ceil(train_tokens_per_epoch / spec.max_seq_len)
    steps_per_epoch = math.ceil(blocks_per_epoch / spec.batch_size)
    total_steps = max(1, math.ceil(spec.epochs * steps_per_epoch))
    warmup = int(spec.warmup_ratio * total_steps)

    torch.manual_seed(spec.seed)
    model = _make_model(spec, tokenizer).to(torch_device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.learning_rate, betas=(0.9, 0.95), eps=1e-8,
        **({"foreach": True} if dev.name != "cpu" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, warmup))
    use_amp = dev.mixed_precision and dev.name == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dev.dtype == "float16")

    def autocast():
        if use_amp:
            return torch.autocast("cuda", dtype=amp_dtype)
        return contextlib.nullcontext()

    val_loss_initial = _evaluate(model, val_blocks, spec.batch_size, pad_id, torch_device,
                                 autocast)
    loss_history: list[tuple[int, float]] = []
    tokens_seen = 0
    train_started = time.perf_counter()
    step, epoch = 0, 0
    while step < total_steps:
        epoch_order = list(range(len(train_docs)))
        random.Random(spec.seed * 1_000_003 + epoch).shuffle(epoch_order)
        blocks = _pack(train_docs, epoch_order, spec.max_seq_len, sep)
        for s in range(0, len(blocks), spec.batch_size):
            if step >= total_steps:
                break
            ids, mask, labels = (t.to(torch_device)
                                 for t in _batch(blocks[s:s + spec.batch_size], pad_id))
            full = bool(mask.all())  # no padding: no mask, so attention takes its causal path
            with autocast():
                loss = model(input_ids=ids, attention_mask=None if full else mask,
                             labels=labels).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"build_base_model: the training loss became "
                                         f"{float(loss)} at step {step + 1}; lower "
                                         f"learning_rate ({spec.learning_rate})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            tokens_seen += int(mask.sum())
            loss_history.append((step, round(loss.item(), 5)))
            if progress is not None and (step % spec.log_every == 0 or step == total_steps):
                elapsed = time.perf_counter() - train_started
                progress({"step": step, "total_steps": total_steps,
                          "loss": loss_history[-1][1], "tokens": tokens_seen,
                          "tokens_per_s": round(tokens_seen / elapsed, 1) if elapsed else None,
                          "lr": scheduler.get_last_lr()[0]})
        epoch += 1
    train_seconds = time.perf_counter() - train_started
    val_loss = _evaluate(model, val_blocks, spec.batch_size, pad_id, torch_device, autocast)

    tail = [v for _, v in loss_history[-max(1, min(10, len(loss_history) // 10)):]]
    metrics = {
        "first_loss": loss_history[0][1], "final_loss": round(sum(tail) / len(tail), 5),
        "val_loss": None if val_loss is None else round(val_loss, 5),
        "val_loss_initial": None if val_loss_initial is None else round(val_loss_initial, 5),
        "steps": total_steps, "epochs": spec.epochs, "tokens_seen": tokens_seen,
        "train_tokens_per_epoch": train_tokens_per_epoch,
        "tokens_per_s": round(tokens_seen / train_seconds, 1) if train_seconds else None,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2), "n_params": n_params,
        "device": dev.name, "dtype": dev.dtype if use_amp else "float32",
        "torch_threads": torch.get_num_threads(),
    }
    corpus = {**dict(corpus_stats or {}), "conversations_given": len(conversations),
              "dropped_redundant": redundant, "conversations_used": len(docs_conv),
              "train_conversations": len(train_idx), "val_conversations": len(val_idx),
              "vocab_size": len(tokenizer)}
    info = {"format": 1, "spec": spec.to_dict(), "corpus": corpus, "metrics": metrics,
            "loss_history": [list(p) for p in loss_history],
            "versions": {"torch": torch.__version__, "transformers": _transformers_version()}}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(out_dir)
    try:
        model.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _move_into_place(tmp, out_dir, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return BaseModelResult(path=out_dir, spec=spec, metrics=metrics,
                           loss_history=loss_history, n_params=n_params)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ---- loading -----------------------------------------------------------------------------------

def read_base_info(path: str | Path) -> dict[str, Any]:
    """The ``learnloop_base.json`` of a base model folder (spec, corpus, metrics, loss curve);
    ``FileNotFoundError`` naming the file when it is not a folder :func:`build_base_model`
    wrote."""
    info_path = Path(path) / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} does not exist: {path} is not an offline base "
                                f"model folder (build one with build_base_model)")
    return json.loads(info_path.read_text())


def load_base_model(path: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a base model folder, loaded offline (``local_files_only``), the
    model in eval mode. ``FileNotFoundError`` when the folder does not exist."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"base model folder {path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    model.eval()
    return model, tokenizer
