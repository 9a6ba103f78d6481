"""Small hand-built examples for the dataset tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest


def make_example(n: int, question: str, answer: str | None = None, *, category: str = "billing",
                 session: str | None = None, quality: float | None = 0.9,
                 source: str = "human", vector=None, key: str | None = None,
                 system: str | None = None, **extra) -> dict:
    """A candidate as the asset hands it over: ``sample:<n>``, one session per example unless
    ``session`` is given."""
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": question}]
    d = {"key": key or f"sample:{n}", "review_item_id": n, "tenant_id": "acme",
         "session_key": session or f"session-{n}", "category": category, "intent": "faq",
         "source": source, "quality": quality,
         "timestamp": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
         "messages": messages, "completion": answer or f"Answer number {n}.", **extra}
    if vector is not None:
        d["vector"] = [float(x) for x in vector]
    return d


def random_vectors(n: int, dim: int = 16, seed: int = 7) -> np.ndarray:
    """Unit vectors in random directions: pairwise cosines far below any near-dup threshold."""
    v = np.random.default_rng(seed).normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def ex():
    return make_example


@pytest.fixture()
def vecs():
    return random_vectors
