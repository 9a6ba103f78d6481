"""Deterministic traffic assignment of an A/B experiment.

A subject (a user, or a session when there is no user) lands in a bucket in [0, 1) given by the
SHA-256 of ``"<experiment key>:<subject>"``; it gets the treatment when its bucket is below the
treatment's share. The same subject always gets the same arm for the same experiment, different
experiments shuffle subjects independently, and raising the share (10% -> 50% -> 100%) only moves
subjects from control to treatment, never back: nobody flips arms between stages.
"""

from __future__ import annotations

import hashlib

ARMS = ("control", "treatment")


def bucket(subject: str, experiment_key: str) -> float:
    """The subject's bucket in [0, 1) for this experiment (the first 8 bytes of the digest)."""
    if not isinstance(subject, str) or not subject:
        raise ValueError("routing needs a non-empty subject (a user or session id)")
    digest = hashlib.sha256(f"{experiment_key}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_arm(subject: str, experiment_key: str, treatment_share: float) -> str:
    """``"treatment"`` when the subject's bucket is below ``treatment_share``, else
    ``"control"``."""
    if not 0.0 <= treatment_share <= 1.0:
        raise ValueError(f"treatment_share must be in [0, 1], got {treatment_share!r}")
    return "treatment" if bucket(subject, experiment_key) < treatment_share else "control"


def experiment_key(experiment_id: int) -> str:
    """The hashing key of an experiment (its id in the operational store)."""
    return f"experiment-{int(experiment_id)}"
