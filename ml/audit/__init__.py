"""The Auditor: which interactions are errors, of what category and severity.

* ``taxonomy``: categories, severities, the ``Verdict`` schema, the ``audited_errors`` columns;
* ``rules``: the rules-and-signals auditor (offline default);
* ``llm``: the LLM auditor (any ``ml.llm`` router);
* ``candidates``: which interactions get audited;
* ``metrics``: agreement of two raters (Cohen's kappa); precision/recall against the demo
  generator's truth file is ``ml.demo.truth``.

``make_auditor(router)`` gives the rules auditor for ``router=None`` and the LLM auditor
otherwise; both have ``name``, ``prompt_version`` and ``audit_frame(frame) -> AuditOutcome``.
"""

from __future__ import annotations

from ml.audit.llm import AuditFailure, AuditOutcome, LLMAuditor
from ml.audit.rules import RulesAuditor
from ml.llm import Router


def make_auditor(router: Router | None) -> RulesAuditor | LLMAuditor:
    return RulesAuditor() if router is None else LLMAuditor(router)


__all__ = ["AuditFailure", "AuditOutcome", "LLMAuditor", "RulesAuditor", "make_auditor"]
