"""LoRA fine-tuning of a local causal LM on chat examples (transformers + peft), optional DPO (trl).

:func:`train_lora` loads a base model folder (``save_pretrained`` layout, ``local_files_only``),
encodes each conversation with :func:`ml.training.chat.encode_chat` (the loss is on the final
assistant reply only), wraps the model with a peft LoRA adapter and trains it with the Hugging
Face ``Trainer`` (evaluation each epoch, ``EarlyStoppingCallback`` with the best adapter loaded at
the end when ``spec.early_stopping_patience > 0``). The validation loss is measured before and
after training. With ``spec.dpo`` and preference pairs, the SFT-merged model is then tuned with
trl's ``DPOTrainer`` (a second LoRA adapter; the reference model is the same model with the
adapter disabled, trl's default with peft). :func:`train_dpo` runs that stage alone.

The output folder (written under a temporary sibling name and renamed into place, so a reader
never sees half a run; a non-empty ``out_dir`` is refused unless ``overwrite=True``)::

    out_dir/adapter/        the SFT LoRA adapter (peft ``save_pretrained``) + tokenizer; its base
                            is ``base_model_dir``
    out_dir/merged/         the final model, adapters merged (``AutoModelForCausalLM`` alone
                            loads it) + tokenizer: SFT, or SFT then DPO when DPO ran
    out_dir/dpo/adapter/    (DPO only) the DPO adapter; its base is the SFT-merged model (base +
                            ``adapter`` merged)
    out_dir/dpo/training.json (DPO only) the DPO stage's metrics and history
    out_dir/training.json   spec, metrics, history (per-step train loss, per-evaluation val loss)

:func:`train_dpo` writes ``adapter/``, ``merged/`` and ``training.json`` the same way.

Nothing is device specific: the device is :func:`ml.training.chat.pick_device`'s (CUDA with bf16
or fp16 mixed precision, MPS, else the CPU with ``use_cpu``) unless one is named.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ml.training.chat import (
    IGNORE_INDEX,
    Device,
    check_conversation,
    collate,
    encode_chat,
    pick_device,
)

Conversation = list[dict[str, str]]
Progress = Callable[[dict[str, Any]], None]
TRAINING_JSON = "training.json"
MAX_HISTORY_LOGS = 200  # training-loss log points per run (evaluations are always recorded)


# ---- spec -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraSpec:
    """Hyper-parameters of a LoRA fine-tune (and of the optional DPO stage after it).

    The defaults (rank 16 on every linear layer, learning rate 2e-3, 5 epochs) were chosen on the
    demo: a ~4M-parameter offline base and ~70-500 examples on a CPU, where they teach the
    corrected facts without costing retention (docs/training.md, "Choosing the defaults"); for a
    real 0.5B+ base lower ``learning_rate`` (e.g. 2e-4) and ``dpo_learning_rate`` (e.g. 5e-6).
    ``target_modules`` is a tuple of module names or ``"all-linear"``. ``eval_every``: ``None``
    evaluates at the end of each epoch, ``N`` every ``N`` optimizer steps. ``early_stopping_
    patience`` 0 turns early stopping off; otherwise training stops after that many evaluations
    without an improvement of more than ``early_stopping_threshold`` and the best adapter is kept.
    ``warmup_ratio`` is the fraction of the optimizer steps with a linear warm-up.
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str = "all-linear"
    learning_rate: float = 2e-3
    epochs: int = 5
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_seq_len: int = 384
    early_stopping_patience: int = 2
    early_stopping_threshold: float = 0.0
    gradient_checkpointing: bool = False
    seed: int = 0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    eval_every: int | None = None
    dpo: bool = False
    dpo_beta: float = 0.1
    dpo_epochs: int = 1
    dpo_learning_rate: float = 5e-4

    def __post_init__(self) -> None:
        tm = self.target_modules
        if isinstance(tm, str):
            if tm != "all-linear":
                raise ValueError(f"LoraSpec.target_modules: a string must be 'all-linear', got "
                                 f"{tm!r} (give module names as a tuple, e.g. ('q_proj', 'v_proj'))")
        else:
            tm = tuple(tm)
            if not tm or not all(isinstance(m, str) and m for m in tm):
                raise ValueError(f"LoraSpec.target_modules must be 'all-linear' or a non-empty "
                                 f"tuple of module names, got {self.target_modules!r}")
            object.__setattr__(self, "target_modules", tm)
        ints = {"rank": 1, "alpha": 1, "epochs": 1, "batch_size": 1, "gradient_accumulation": 1,
                "max_seq_len": 8, "early_stopping_patience": 0, "seed": 0, "dpo_epochs": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"LoraSpec.{name} must be an integer >= {low}, got {v!r}")
        positive = ("learning_rate", "dpo_learning_rate", "dpo_beta")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 \
                    or not math.isfinite(v):
                raise ValueError(f"LoraSpec.{name} must be a positive number, got {v!r}")
        for name, hi in (("dropout", 1.0), ("warmup_ratio", 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < hi:
                raise ValueError(f"LoraSpec.{name} must be in [0, {hi}), got {v!r}")
        for name in ("weight_decay", "early_stopping_threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < math.inf:
                raise ValueError(f"LoraSpec.{name} must be a number >= 0, got {v!r}")
        if self.eval_every is not None and (isinstance(self.eval_every, bool)
                                            or not isinstance(self.eval_every, int)
                                            or self.eval_every < 1):
            raise ValueError(f"LoraSpec.eval_every must be None (each epoch) or an integer >= 1 "
                             f"(optimizer steps), got {self.eval_every!r}")
        for name in ("gradient_checkpointing", "dpo"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LoraSpec.{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``target_modules`` as a list, or the string ``"all-linear"``)."""
        d = asdict(self)
        if not isinstance(self.target_modules, str):
            d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSpec:
        """The inverse of :meth:`to_dict`; an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"LoraSpec: unknown field(s) {unknown}; known: {sorted(known)}")
        d = dict(data)
        if isinstance(d.get("target_modules"), list):
            d["target_modules"] = tuple(d["target_modules"])
        return cls(**d)


# ---- results ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DpoResult:
    """A DPO run: its folders, ``metrics`` (see :func:`train_dpo`) and per-log ``history``."""

    out_dir: Path
    adapter_dir: Path
    merged_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "adapter_dir": str(self.adapter_dir),
                "merged_dir": None if self.merged_dir is None else str(self.merged_dir),
                "metrics": self.metrics, "history": self.history}


@dataclass(frozen=True)
class LoraResult:
    """A LoRA run: ``merged_dir`` is the final model (after DPO when it ran), ``adapter_dir`` the
    SFT adapter, ``metrics`` (see :func:`train_lora`), ``history`` the SFT loss curve (a list of
    ``{step, epoch, train_loss?, val_loss?}``; step 0 holds the validation loss before training),
    ``dpo`` the DPO stage when it ran."""

    out_dir: Path
    adapter_dir: Path
    merged_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    dpo: DpoResult | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "adapter_dir": str(self.adapter_dir),
                "merged_dir": str(self.merged_dir), "metrics": self.metrics,
                "history": self.history, "dpo": None if self.dpo is None else self.dpo.to_dict()}


# ---- reading JSONL ----------------------------------------------------------------------------

def _jsonl_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            where = f"{path}:{n}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def _messages(value: Any, where: str, key: str) -> Conversation:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: {key!r} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: {key!r} message {i} is not an object")
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: {key!r} message {i} has role {m.get('role')!r}; expected "
                             f"system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: {key!r} message {i} has no text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_chat_jsonl(path: str | Path) -> list[Conversation]:
    """Conversations from an OpenAI chat fine-tuning file (``{"messages": [...]}`` per line, the
    last message the assistant reply to learn). Blank lines are skipped; a bad line is an error
    naming ``file:line``."""
    out = []
    for where, obj in _jsonl_objects(path):
        if "messages" not in obj:
            raise ValueError(f"{where}: no 'messages' key (keys: {sorted(obj)})")
        conv = _messages(obj["messages"], where, "messages")
        check_conversation(conv, where)
        out.append(conv)
    return out


def _check_pair(pair: Mapping[str, Any], where: str) -> dict[str, Conversation]:
    for key in ("prompt", "chosen", "rejected"):
        if key not in pair:
            raise ValueError(f"{where}: no {key!r} key (keys: {sorted(pair)})")
    prompt = _messages(pair["prompt"], where, "prompt")
    if prompt[-1]["role"] == "assistant":
        raise ValueError(f"{where}: the prompt must end with a user (or system) message, not the "
                         f"assistant's")
    out = {"prompt": prompt}
    for key in ("chosen", "rejected"):
        reply = _messages(pair[key], where, key)
        if len(reply) != 1 or reply[0]["role"] != "assistant":
            raise ValueError(f"{where}: {key!r} must be exactly one assistant message")
        out[key] = reply
    if out["chosen"][0]["content"] == out["rejected"][0]["content"]:
        raise ValueError(f"{where}: 'chosen' and 'rejected' are the same reply")
    return out


def read_dpo_jsonl(path: str | Path) -> list[dict[str, Conversation]]:
    """Preference pairs from a TRL conversational preference file (``{"prompt": [messages],
    "chosen": [{"role": "assistant", ...}], "rejected": [...]}`` per line); a bad line is an error
    naming ``file:line``."""
    return [_check_pair(obj, where) for where, obj in _jsonl_objects(path)]


# ---- encoding ---------------------------------------------------------------------------------

def encode_conversations(tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                         max_seq_len: int, split: str = "train") -> list[dict[str, list[int]]]:
    """Each conversation as ``input_ids``/``attention_mask``/``labels`` with only the final
    assistant reply labelled (:func:`ml.training.chat.encode_chat`); errors name the split and
    the example's index."""
    return [encode_chat(tokenizer, conv, max_seq_len, where=f"{split} example {i}")
            for i, conv in enumerate(conversations)]


def label_token_count(examples: Sequence[Mapping[str, Sequence[int]]]) -> int:
    """How many positions carry a loss (labels other than ``-100``)."""
    return sum(sum(1 for t in ex["labels"] if t != IGNORE_INDEX) for ex in examples)


# ---- shared helpers ---------------------------------------------------------------------------

def _resolve_device(device: str | Device | None) -> Device:
    if isinstance(device, Device):
        return device
    return pick_device(device)


def _check_model_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} {path} is not a saved model folder (no config.json)")
    return path


def _load_model(model_dir: Path, device: Device) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {model_dir} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    dtype = torch.float32 if device.name != "cuda" else getattr(torch, device.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    return model, tokenizer


def _lora_config(spec: LoraSpec) -> Any:
    from peft import LoraConfig, TaskType

    tm = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=tm, bias="none", task_type=TaskType.CAUSAL_LM)


def _precision_args(device: Device) -> dict[str, Any]:
    on_cuda = device.name == "cuda"
    return {"use_cpu": device.name == "cpu",
            "bf16": on_cuda and device.dtype == "bfloat16",
            "fp16": on_cuda and device.dtype == "float16"}


def _max_len(model: Any, spec: LoraSpec) -> int:
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return min(spec.max_seq_len, limit) if limit else spec.max_seq_len


def _steps_per_epoch(n: int, spec: LoraSpec) -> int:
    return max(1, math.ceil(math.ceil(n / spec.batch_size) / spec.gradient_accumulation))


@contextlib.contextmanager
def _staging(out_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to write into, renamed to ``out_dir`` on success (an
    existing folder is replaced only with ``overwrite``), removed on failure."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"out_dir {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(f"out_dir {out_dir} exists and is not empty; pass "
                                  f"overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{tag}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)


def _remove_checkpoints(work_dir: Path) -> None:
    """The Trainer's checkpoints (written only for early stopping) are not part of the output."""
    ckpt = work_dir / "checkpoints"
    if ckpt.exists():
        shutil.rmtree(ckpt)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n",
                    encoding="utf-8")


def _save_adapter_and_merged(model: Any, tokenizer: Any, adapter_dir: Path,
                             merged_dir: Path) -> None:
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)


def _recorder(stage: str, progress: Progress | None, history: list[dict[str, Any]],
              keys: Mapping[str, str], total_steps: int) -> Any:
    """A TrainerCallback appending ``{step, epoch, <keys' values>}`` to ``history`` on each log
    holding one of ``keys`` (a Trainer log key -> history key map) and calling ``progress``
    (``total_steps`` stands in for the Trainer's count in logs made before training starts)."""
    from transformers import TrainerCallback

    class _Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.t0: float | None = None
            self.active = True

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not self.active or not logs:
                return
            entry: dict[str, Any] = {"step": int(state.global_step),
                                     "epoch": round(float(state.epoch or 0.0), 4)}
            for src, dst in keys.items():
                if src in logs:
                    entry[dst] = float(logs[src])
            if len(entry) == 2:
                return
            history.append(entry)
            if progress is not None:
                elapsed = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
                seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
                progress({"stage": stage, **entry, "total_steps": int(state.max_steps or total_steps),
                          "tokens_per_s": seen / elapsed if elapsed > 0 else 0.0})

    return _Recorder()


# ---- SFT --------------------------------------------------------------------------------------

@dataclass
class SftSetup:
    """A ready-to-train LoRA ``trainer`` (HF ``Trainer`` over the encoded examples) and what
    :func:`train_lora` reports about it. ``recorder`` fills ``history``."""

    trainer: Any
    model: Any
    tokenizer: Any
    device: Device
    train_examples: list[dict[str, list[int]]]
    validation_examples: list[dict[str, list[int]]]
    history: list[dict[str, Any]]
    recorder: Any
    early_stopping: bool


def prepare_sft(base_model_dir: str | Path, train: Sequence[Sequence[Mapping[str, str]]],
                validation: Sequence[Sequence[Mapping[str, str]]], work_dir: str | Path,
                spec: LoraSpec = LoraSpec(), *, progress: Progress | None = None,
                device: str | Device | None = None) -> SftSetup:
    """Load the base, encode both splits, wrap with LoRA and build the ``Trainer`` (checkpoints,
    only when early stopping needs them, go under ``work_dir/checkpoints``). Used by
    :func:`train_lora`; exposed so the batches the Trainer sees can be inspected."""
    from functools import partial

    from peft import get_peft_model
    from transformers import (
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    base_model_dir = _check_model_dir(base_model_dir, "base_model_dir")
    if not train:
        raise ValueError("train_lora: the train split is empty; nothing to fine-tune on")
    dev = _resolve_device(device)
    model, tokenizer = _load_model(base_model_dir, dev)
    max_len = _max_len(model, spec)
    train_ex = encode_conversations(tokenizer, train, max_len, "train")
    val_ex = encode_conversations(tokenizer, validation, max_len, "validation")

    set_seed(spec.seed)  # LoRA's A matrices are initialised randomly
    model = get_peft_model(model, _lora_config(spec))
    if spec.gradient_checkpointing:
        model.enable_input_require_grads()

    has_val = bool(val_ex)
    early = has_val and spec.early_stopping_patience > 0
    per_epoch = _steps_per_epoch(len(train_ex), spec)
    total = per_epoch * spec.epochs
    if spec.eval_every is None:
        strategy: dict[str, Any] = {"eval_strategy": "epoch" if has_val else "no"}
        if early:
            strategy["save_strategy"] = "epoch"
    else:
        strategy = {"eval_strategy": "steps" if has_val else "no", "eval_steps": spec.eval_every}
        if early:
            strategy |= {"save_strategy": "steps", "save_steps": spec.eval_every}
    if not early:
        strategy["save_strategy"] = "no"
    else:
        strategy |= {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
                     "greater_is_better": False, "save_total_limit": 1, "save_only_model": True}

    args = TrainingArguments(
        output_dir=str(Path(work_dir) / "checkpoints"),
        num_train_epochs=spec.epochs,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        warmup_steps=spec.warmup_ratio,  # a float < 1 is a ratio of the steps in transformers 5
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=max(1, math.ceil(total / MAX_HISTORY_LOGS)),
        report_to="none",
        disable_tqdm=True,
        seed=spec.seed,
        data_seed=spec.seed,
        activation_checkpointing=spec.gradient_checkpointing,  # transformers 5 name
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=dev.name == "cuda",
        **_precision_args(dev),
        **strategy,
    )
    history: list[dict[str, Any]] = []
    recorder = _recorder("sft", progress, history, {"loss": "train_loss", "eval_loss": "val_loss"},
                         total)
    callbacks = [recorder]
    if early:
        callbacks.append(EarlyStoppingCallback(spec.early_stopping_patience,
                                               spec.early_stopping_threshold))
    trainer = Trainer(model=model, args=args, train_dataset=train_ex,
                      eval_dataset=val_ex if has_val else None,
                      data_collator=partial(collate, pad_id=tokenizer.pad_token_id),
                      processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # progress goes to ``progress``, not stdout
    return SftSetup(trainer, model, tokenizer, dev, train_ex, val_ex, history, recorder, early)


def train_lora(base_model_dir: str | Path, train: Sequence[Sequence[Mapping[str, str]]],
               validation: Sequence[Sequence[Mapping[str, str]]], out_dir: str | Path,
               spec: LoraSpec = LoraSpec(), *, progress: Progress | None = None,
               device: str | Device | None = None, overwrite: bool = False,
               dpo_train: Sequence[Mapping[str, Any]] | None = None,
               dpo_validation: Sequence[Mapping[str, Any]] | None = None) -> LoraResult:
    """Fine-tune ``base_model_dir`` with LoRA on ``train`` (conversations whose last message is
    the assistant reply to learn), validating on ``validation`` (may be empty: no validation, no
    early stopping, val metrics ``None``), and write ``out_dir`` (see the module docstring).

    With ``spec.dpo`` and ``dpo_train`` pairs, the SFT-merged model is then tuned with DPO
    (:func:`train_dpo`) and ``merged/`` is the result; ``spec.dpo`` without pairs skips DPO and
    says why in ``metrics["dpo_skipped_reason"]``.

    ``progress(dict)`` is called on each log and evaluation with ``{stage, step, total_steps,
    epoch, train_loss | val_loss, tokens_per_s}`` (DPO logs add reward figures).

    ``metrics``: train_loss (mean over the run), final_train_loss, val_loss_before,
    val_loss_after, best_val_loss, steps, epochs_run, stopped_early, train_examples,
    validation_examples, train_label_tokens, tokens_trained, tokens_per_s, wall_s,
    trainable_params, total_params, device, dtype, max_seq_len, dpo_ran, dpo_skipped_reason (and
    dpo_* summary figures when DPO ran).
    """
    if not isinstance(spec, LoraSpec):
        raise TypeError(f"spec must be a LoraSpec, got {type(spec).__name__}")
    want_dpo = spec.dpo
    skip_reason = None
    if want_dpo and not dpo_train:
        skip_reason = "spec.dpo is set but no DPO training pairs were given"
    elif not want_dpo and dpo_train:
        skip_reason = f"spec.dpo is off: the {len(dpo_train)} DPO pairs given were not used"
    pairs_train = [_check_pair(p, f"dpo_train pair {i}") for i, p in enumerate(dpo_train or [])] \
        if want_dpo else []
    pairs_val = [_check_pair(p, f"dpo_validation pair {i}")
                 for i, p in enumerate(dpo_validation or [])] if want_dpo else []
    out_dir = Path(out_dir)

    with _staging(out_dir, overwrite) as tmp:
        t0 = time.perf_counter()
        setup = prepare_sft(base_model_dir, train, validation, tmp, spec, progress=progress,
                            device=device)
        trainer = setup.trainer
        has_val = bool(setup.validation_examples)
        val_before = float(trainer.evaluate()["eval_loss"]) if has_val else None
        out = trainer.train()
        setup.recorder.active = False
        val_after = float(trainer.evaluate()["eval_loss"]) if has_val else None
        state = trainer.state
        _remove_checkpoints(tmp)

        vals = [h["val_loss"] for h in setup.history if "val_loss" in h and h["step"] > 0]
        trains = [h["train_loss"] for h in setup.history if "train_loss" in h]
        trainable, total_params = setup.model.get_nb_trainable_parameters()
        tokens = int(state.num_input_tokens_seen or 0)
        train_s = float(out.metrics["train_runtime"])
        metrics: dict[str, Any] = {
            "train_loss": float(out.training_loss),
            "final_train_loss": trains[-1] if trains else None,
            "val_loss_before": val_before,
            "val_loss_after": val_after,
            "best_val_loss": min(vals) if vals else None,
            "steps": int(state.global_step),
            "epochs_run": round(float(state.epoch or 0.0), 4),
            "stopped_early": bool(setup.early_stopping and state.global_step < state.max_steps),
            "train_examples": len(setup.train_examples),
            "validation_examples": len(setup.validation_examples),
            "train_label_tokens": label_token_count(setup.train_examples),
            "tokens_trained": tokens,
            "tokens_per_s": tokens / train_s if train_s > 0 else None,
            "wall_s": None,  # set once the folders are written
            "trainable_params": int(trainable),
            "total_params": int(total_params),
            "device": setup.device.name,
            "dtype": setup.device.dtype,
            "max_seq_len": _max_len(setup.model, spec),
            "dpo_ran": False,
            "dpo_skipped_reason": skip_reason,
        }
        history = setup.history
        _save_adapter_and_merged(trainer.model, setup.tokenizer, tmp / "adapter", tmp / "merged")
        del trainer, setup
        metrics["wall_s"] = round(time.perf_counter() - t0, 3)

        dpo_result = None
        if want_dpo and pairs_train:
            dpo_dir = tmp / "dpo"
            dpo_dir.mkdir()
            dpo_metrics, dpo_history = _run_dpo(tmp / "merged", pairs_train, pairs_val, dpo_dir,
                                                spec, progress=progress, device=device)
            _write_json(dpo_dir / TRAINING_JSON,
                        {"spec": spec.to_dict(),
                         "model_dir": "the SFT-merged model: base_model_dir with ../adapter merged",
                         "metrics": dpo_metrics, "history": dpo_history})
            shutil.rmtree(tmp / "merged")
            (dpo_dir / "merged").rename(tmp / "merged")
            metrics["dpo_ran"] = True
            metrics.update({f"dpo_{k}": dpo_metrics[k] for k in DPO_SUMMARY})
            dpo_result = DpoResult(out_dir / "dpo", out_dir / "dpo" / "adapter", None,
                                   dpo_metrics, dpo_history)
        _write_json(tmp / TRAINING_JSON,
                    {"spec": spec.to_dict(), "base_model_dir": str(Path(base_model_dir).resolve()),
                     "metrics": metrics, "history": history,
                     "dpo": None if dpo_result is None else {"metrics": dpo_result.metrics,
                                                             "history": dpo_result.history}})
    return LoraResult(out_dir, out_dir / "adapter", out_dir / "merged", metrics, history,
                      dpo_result)


# ---- DPO --------------------------------------------------------------------------------------

DPO_SUMMARY = ("val_loss_before", "val_loss_after", "reward_margin_before",
               "reward_margin_after", "reward_accuracy_before", "reward_accuracy_after",
               "reward_measured_on", "steps", "train_pairs", "validation_pairs", "wall_s")
_DPO_LOG_KEYS = {"loss": "train_loss", "eval_loss": "val_loss",
                 "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
                 "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
                 "eval_rewards/margins": "val_reward_margin",
                 "eval_rewards/accuracies": "val_reward_accuracy"}


def _run_dpo(model_dir: Path, pairs_train: list[dict[str, Conversation]],
             pairs_val: list[dict[str, Conversation]], stage_dir: Path, spec: LoraSpec, *,
             progress: Progress | None, device: str | Device | None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """DPO with a fresh LoRA adapter on ``model_dir``; writes ``stage_dir/adapter`` and
    ``stage_dir/merged``; returns (metrics, history)."""
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    t0 = time.perf_counter()
    dev = _resolve_device(device)
    model, tokenizer = _load_model(model_dir, dev)
    max_len = _max_len(model, spec)
    train_ds = Dataset.from_list(pairs_train)
    # without validation pairs, rewards before/after are measured on the training pairs
    measured_on = "validation" if pairs_val else "train"
    eval_ds = Dataset.from_list(pairs_val) if pairs_val else train_ds
    per_epoch = _steps_per_epoch(len(pairs_train), spec)
    total = per_epoch * spec.dpo_epochs
    args = DPOConfig(
        output_dir=str(stage_dir / "checkpoints"),
        num_train_epochs=spec.dpo_epochs,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation,
        learning_rate=spec.dpo_learning_rate,
        weight_decay=spec.weight_decay,
        warmup_steps=spec.warmup_ratio,
        beta=spec.dpo_beta,
        max_length=max_len,
        logging_strategy="steps",
        logging_steps=max(1, math.ceil(total / MAX_HISTORY_LOGS)),
        eval_strategy="epoch" if pairs_val else "no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=spec.seed,
        data_seed=spec.seed,
        activation_checkpointing=spec.gradient_checkpointing,  # transformers 5 name
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=dev.name == "cuda",
        **_precision_args(dev),
    )
    set_seed(spec.seed)
    history: list[dict[str, Any]] = []
    recorder = _recorder("dpo", progress, history, _DPO_LOG_KEYS, total)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=_lora_config(spec),
                         callbacks=[recorder])
    trainer.remove_callback(PrinterCallback)
    before = trainer.evaluate()
    out = trainer.train()
    recorder.active = False
    after = trainer.evaluate()
    _remove_checkpoints(stage_dir)
    trains = [h for h in history if "train_loss" in h]
    trainable, total_params = trainer.model.get_nb_trainable_parameters()
    metrics: dict[str, Any] = {
        "train_loss": float(out.training_loss),
        "final_train_loss": trains[-1]["train_loss"] if trains else None,
        "train_reward_margin": trains[-1].get("reward_margin") if trains else None,
        "train_reward_accuracy": trains[-1].get("reward_accuracy") if trains else None,
        "val_loss_before": float(before["eval_loss"]),
        "val_loss_after": float(after["eval_loss"]),
        "reward_margin_before": float(before["eval_rewards/margins"]),
        "reward_margin_after": float(after["eval_rewards/margins"]),
        "reward_accuracy_before": float(before["eval_rewards/accuracies"]),
        "reward_accuracy_after": float(after["eval_rewards/accuracies"]),
        "reward_chosen_after": float(after["eval_rewards/chosen"]),
        "reward_rejected_after": float(after["eval_rewards/rejected"]),
        "reward_measured_on": measured_on,
        "beta": spec.dpo_beta,
        "steps": int(trainer.state.global_step),
        "epochs_run": round(float(trainer.state.epoch or 0.0), 4),
        "train_pairs": len(pairs_train),
        "validation_pairs": len(pairs_val),
        "tokens_trained": int(trainer.state.num_input_tokens_seen or 0),
        "wall_s": 0.0,
        "trainable_params": int(trainable),
        "total_params": int(total_params),
        "device": dev.name,
        "dtype": dev.dtype,
    }
    _save_adapter_and_merged(trainer.model, tokenizer, stage_dir / "adapter",
                             stage_dir / "merged")
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    return metrics, history


def train_dpo(model_dir: str | Path, pairs_train: Sequence[Mapping[str, Any]],
              pairs_validation: Sequence[Mapping[str, Any]], out_dir: str | Path,
              spec: LoraSpec = LoraSpec(), *, progress: Progress | None = None,
              device: str | Device | None = None, overwrite: bool = False) -> DpoResult:
    """DPO (trl ``DPOTrainer``, sigmoid loss, ``spec.dpo_beta``, ``spec.dpo_epochs``,
    ``spec.dpo_learning_rate``) of ``model_dir`` (typically the SFT-merged model) with a LoRA
    adapter shaped by ``spec``; the reference is ``model_dir`` itself (the adapter disabled).
    Pairs are TRL conversational preference rows (``prompt``/``chosen``/``rejected``, see
    :func:`read_dpo_jsonl`). Writes ``out_dir/adapter`` (base: ``model_dir``), ``out_dir/merged``
    and ``out_dir/training.json``.

    ``metrics``: train_loss, final_train_loss, train_reward_margin, train_reward_accuracy (last
    training log), val_loss_before/after, reward_margin_before/after, reward_accuracy_before/
    after, reward_chosen_after, reward_rejected_after (on the validation pairs, or the training
    pairs when there are none: ``reward_measured_on``), beta, steps, epochs_run, train_pairs,
    validation_pairs, tokens_trained, wall_s, trainable_params, total_params, device, dtype.
    ``history``: ``{step, epoch, train_loss?, reward_margin?, reward_accuracy?, reward_chosen?,
    reward_rejected?, val_loss?, val_reward_margin?, val_reward_accuracy?}`` per log.
    """
    model_dir = _check_model_dir(model_dir, "model_dir")
    if not pairs_train:
        raise ValueError("train_dpo: no training pairs; nothing to tune on")
    ptrain = [_check_pair(p, f"pairs_train {i}") for i, p in enumerate(pairs_train)]
    pval = [_check_pair(p, f"pairs_validation {i}") for i, p in enumerate(pairs_validation)]
    out_dir = Path(out_dir)
    with _staging(out_dir, overwrite) as tmp:
        metrics, history = _run_dpo(model_dir, ptrain, pval, tmp, spec, progress=progress,
                                    device=device)
        _write_json(tmp / TRAINING_JSON, {"spec": spec.to_dict(),
                                          "model_dir": str(model_dir.resolve()),
                                          "metrics": metrics, "history": history})
    return DpoResult(out_dir, out_dir / "adapter", out_dir / "merged", metrics, history)
