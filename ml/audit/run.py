"""One audit run over the candidates its run selected: the checks before it starts, what is left
to audit, the labels and review items of each batch's verdicts, and the run's totals.

The ``audited_errors`` asset wires these to the warehouse (``ml.audit.tables``), the operational
store (``store.audit.save_audit_batch``) and the auditor; everything here is pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ml.audit.failures import tag_reason
from ml.audit.labels import clean_review_ids, with_label_columns
from ml.audit.llm import AuditFailure
from ml.conversation import parse_messages


class SelectionMismatch(ValueError):
    """The candidates were selected for another auditor or prompt version than the one auditing
    them."""


def check_selection(candidates: pl.DataFrame, auditor: str, prompt_version: str) -> None:
    """Raise :class:`SelectionMismatch` naming both when ``candidates`` were selected for another
    auditor or prompt version."""
    other = candidates.filter((pl.col("auditor") != auditor)
                              | (pl.col("prompt_version") != prompt_version))
    if other.height:
        first = other.row(0, named=True)
        raise SelectionMismatch(
            f"audit_candidates were selected for auditor {first['auditor']!r} prompt "
            f"{first['prompt_version']!r}, but audited_errors runs {auditor!r} "
            f"{prompt_version!r}; re-materialize audit_candidates with the same auditor")


KEY = ["tenant_id", "interaction_id"]  # what identifies an interaction: ids are per tenant


def keys_of(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """The (tenant_id, interaction_id) of each row, in order."""
    return [tuple(k) for k in frame.select(KEY).iter_rows()]


def still_to_audit(candidates: pl.DataFrame, ok_keys: Iterable[tuple[str, str]],
                   limit: int = 0) -> pl.DataFrame:
    """The candidates not audited OK since the selection (e.g. by a concurrent run), at most
    ``limit`` of them (0 = all), in selection order. ``ok_keys``: (tenant_id, interaction_id)."""
    ok = list(ok_keys)
    if ok:
        done = pl.DataFrame(ok, schema={"tenant_id": pl.String, "interaction_id": pl.String},
                            orient="row")
        candidates = candidates.join(done, on=KEY, how="anti", maintain_order="left")
    return candidates.head(limit) if limit > 0 else candidates


def with_reason(candidates: pl.DataFrame, reason: str) -> set[tuple[str, str]]:
    """The (tenant_id, interaction_id) of the candidates selected (also) for ``reason`` (e.g.
    calibration, retry)."""
    if candidates.height == 0:
        return set()
    return set(keys_of(candidates.filter(pl.col("reasons").list.contains(reason))))


def labelled_verdicts(verdicts: pl.DataFrame, calibration_ids: set[tuple[str, str]],
                      clean_review_rate: float) -> tuple[pl.DataFrame, set[tuple[str, str]]]:
    """``verdicts`` with their reviewer-label columns (``ml.audit.labels``), and the clean
    calibration verdicts that get a "no error found" review item."""
    clean_items = clean_review_ids(verdicts, calibration_ids, clean_review_rate)
    return with_label_columns(verdicts, calibration_ids, clean_items, clean_review_rate), clean_items


def review_item_specs(verdicts: pl.DataFrame, interactions: pl.DataFrame, *, auditor: str,
                      prompt_version: str, clean_items: set[tuple[str, str]]
                      ) -> list[dict[str, Any]]:
    """The ``error`` review items of a batch (for ``store.audit.save_audit_batch``):
    one per flagged verdict, and a "no error found" item per clean verdict in ``clean_items``.
    ``interactions`` holds the audited rows (messages, response, session). Raises
    ``ml.conversation.RowInputError`` naming the interaction when its messages are malformed."""
    rows_by_key = {(r["tenant_id"], r["interaction_id"]): r
                   for r in interactions.iter_rows(named=True)}
    actor = f"auditor:{auditor}"[:128]
    specs: list[dict[str, Any]] = []
    for v in verdicts.iter_rows(named=True):
        iid, key = v["interaction_id"], (v["tenant_id"], v["interaction_id"])
        if not v["is_error"] and key not in clean_items:
            continue
        src = rows_by_key[key]
        common: dict[str, Any] = dict(
            actor=actor, tenant_id=v["tenant_id"], interaction_id=iid, session_id=src.get("session_id"),
            messages=parse_messages(src.get("messages"), iid),
            original_response=src.get("response"), confidence=v["confidence"],
            auditor=auditor, prompt_version=prompt_version)
        extra = {"signals": v["signals"], "answered_by": v["answered_by"],
                 "partition_date": str(v["partition_date"]) if v["partition_date"] else None}
        if v["is_error"]:
            specs.append({**common, "category": v["category"], "severity": v["severity"],
                          "explanation": v["explanation"], "tags": [f"auditor:{auditor}"[:64]],
                          "extra": extra})
        else:  # calibration: a clean verdict for a reviewer to check (labels TN / FN)
            specs.append({
                **common, "category": None, "severity": None,
                "explanation": (f"No error found by the auditor (calibration sample). "
                                f"{v['explanation']} Confirm if the reply is in fact wrong; "
                                f"dismiss if it is fine."),
                "tags": [f"auditor:{auditor}"[:64], "calibration", "no_error_found"],
                "extra": {**extra, "verdict": "no error found", "is_error": False}})
    return specs


def failure_rows(failures: Sequence[AuditFailure]) -> list[dict[str, Any]]:
    """Failed attempts as ``store.audit.save_audit_batch`` stores them (reason with its class
    prefix)."""
    return [{"interaction_id": f.interaction_id, "tenant_id": f.tenant_id,
             "reason": tag_reason(f.reason, f.counted), "counted": f.counted} for f in failures]


@dataclass
class AuditTotals:
    """What one run audited, over its batches."""

    audited: int = 0
    errors: int = 0
    created: int = 0
    clean_created: int = 0
    failures: list[AuditFailure] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    by_category: Counter = field(default_factory=Counter)
    by_severity: Counter = field(default_factory=Counter)

    def add(self, verdicts: pl.DataFrame, failures: Sequence[AuditFailure], *, created: int,
            clean_created: int, given_up: Sequence[str]) -> None:
        errors = verdicts.filter(pl.col("is_error")) if verdicts.height else verdicts
        self.audited += verdicts.height
        self.errors += errors.height
        self.created += created
        self.clean_created += clean_created
        self.failures.extend(failures)
        self.given_up.extend(given_up)
        if errors.height:
            self.by_category.update(errors["category"].to_list())
            self.by_severity.update(errors["severity"].to_list())

    @property
    def error_rate(self) -> float:
        return round(self.errors / self.audited, 4) if self.audited else 0.0
