"""Versioned training datasets and the evaluation suite, as pure functions (no Dagster, no store).

* ``examples``: :class:`Example` (one candidate), :class:`HeldOut`, :func:`prompt_hash`,
  :func:`example_hash`;
* ``spec``: :class:`DatasetSpec` (the recipe, validated; its canonical JSON is hashed);
* ``similarity``: cosine near neighbours through an in-memory LanceDB table;
* ``build``: :func:`build_dataset` -> :class:`DatasetBuild` (filters, held-out, exact and near
  de-duplication, caps with k-means diversity sampling, balance, session-grouped stratified
  split, replay), with a content ``version_hash``;
* ``exports``: :func:`write_exports` (OpenAI chat JSONL, Gemini/Vertex JSONL, a Hugging Face
  ``datasets`` folder, DPO JSONL, ``manifest.json``), byte-deterministic;
* ``schemas``: JSON schemas of every exported line format;
* ``checks``: validation checks over a build (PII, roles, empty turns, tokens, leakage,
  held-out, size, balance) and ``resolve_tokenizer``;
* ``eval_suite``: :func:`select_eval_suite` (stable, growing evaluation set and a retention set)
  and its writer.

Reproducibility: every function here is a function of its inputs' *content*: input order,
process, machine and time do not change a result, a hash or a written byte.
"""

from ml.datasets.build import DatasetBuild, Dropped, build_dataset, stored_vectors
from ml.datasets.checks import CheckResult, resolve_tokenizer, run_checks
from ml.datasets.eval_suite import EvalSuite, select_eval_suite, write_eval_suite
from ml.datasets.examples import Example, HeldOut, example_hash, prompt_hash
from ml.datasets.exports import dataset_checksum, verify_exports, write_exports
from ml.datasets.spec import DatasetSpec, Filters

__all__ = ["CheckResult", "DatasetBuild", "DatasetSpec", "Dropped", "EvalSuite", "Example",
           "Filters", "HeldOut", "build_dataset", "dataset_checksum", "example_hash",
           "prompt_hash", "resolve_tokenizer", "run_checks", "select_eval_suite",
           "stored_vectors", "verify_exports", "write_eval_suite", "write_exports"]
