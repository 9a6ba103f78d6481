"""The Auditor: which interactions are errors, of what category and severity.

* ``taxonomy``: categories, severities, the ``Verdict`` schema, the ``audited_errors`` columns;
* ``rules``: the rules-and-signals auditor (offline default);
* ``llm``: the LLM auditor (any ``ml.llm`` router);
* ``candidates``: which interactions get audited;
* ``run``: one audit run over its selection (checks, batches' labels and review items, totals);
* ``tables``: the stage's warehouse tables and reads;
* ``metrics``: agreement of two raters (Cohen's kappa); precision/recall against the demo
  generator's truth file is ``ml.demo.truth``.

``make_auditor(router)`` gives the rules auditor for ``router=None`` and the LLM auditor
otherwise; both have ``name``, ``prompt_version`` and ``audit_frame(frame) -> AuditOutcome``.
"""

from __future__ import annotations

import os

from ml.audit.llm import AuditFailure, AuditOutcome, LLMAuditor
from ml.audit.rules import RulesAuditor
from ml.llm import Router, from_env

ROLE = "auditor"


def make_auditor(router: Router | None) -> RulesAuditor | LLMAuditor:
    return RulesAuditor() if router is None else LLMAuditor(router)


def auditor_from_env(override: str = "") -> RulesAuditor | LLMAuditor:
    """The configured auditor (``LEARNLOOP_AUDITOR``, read now): rules, or an LLM auditor on the
    role's router. ``override`` (e.g. ``"rules"``, ``"openai,gemini"``) replaces the variable
    for this call."""
    env = dict(os.environ)
    if override.strip():
        env["LEARNLOOP_AUDITOR"] = override.strip()
    return make_auditor(from_env(ROLE, env))


__all__ = ["AuditFailure", "AuditOutcome", "LLMAuditor", "RulesAuditor", "auditor_from_env",
           "make_auditor"]
