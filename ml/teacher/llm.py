"""The LLM Teacher: the versioned teacher prompt + the conversation + the auditor's finding, sent
through a role's ``ml.llm.Router``; answers a validated :class:`TeacherOutput`.

A per-interaction failure is raised as one of :attr:`LLMTeacher.ROW_FAILURES`: every provider of
the role failed (``ProviderError``: HTTP errors, timeouts, unusable replies, unexpected provider
exceptions, malformed JSON after the repair retry) or the row's own data is malformed
(:class:`~ml.conversation.RowInputError`, e.g. bad ``messages`` JSON). A caller looping over rows
catches exactly those, records the reason and goes on; configuration errors still stop the run.
:func:`ml.audit.failures.classify_failure` says whether one counts toward the retry cap
(request-specific) or is an outage (retried on every run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ml.audit.failures import ROW_FAILURES as _ROW_FAILURES
from ml.conversation import RowInputError, clip, render_conversation
from ml.llm import LLMRequest, LLMResponse, Router
from ml.prompts import Prompt, load_prompt
from ml.teacher.retrieval import Proposal

__all__ = ["LLMTeacher", "RowInputError", "TeacherOutput"]


class TeacherOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corrected_response: str = Field(min_length=1, max_length=8000)
    rationale: str = Field(min_length=1, max_length=1000)


class LLMTeacher:
    """Write corrected replies with an LLM through ``router`` (``ml.llm.from_env("teacher")``)."""

    # what propose() raises for one row that should not stop the others (see the module doc)
    ROW_FAILURES: tuple[type[Exception], ...] = _ROW_FAILURES

    def __init__(self, router: Router, prompt: Prompt | None = None, *, max_tokens: int = 600):
        self.router = router
        self.prompt = prompt or load_prompt("teacher")
        self.max_tokens = max_tokens

    @property
    def prompt_version(self) -> str:
        return self.prompt.version

    def build_request(self, row: dict[str, Any], finding: str) -> LLMRequest:
        iid = str(row.get("interaction_id"))
        messages = self.prompt.render(
            conversation=render_conversation(row.get("messages"), row.get("user_message"), iid),
            response=clip(row.get("original_response") or row.get("response") or ""),
            finding=finding or "none given",
        )
        return LLMRequest(messages=messages, temperature=0.2, max_tokens=self.max_tokens,
                          response_schema=TeacherOutput,
                          metadata={"interaction_id": iid, "prompt_version": self.prompt_version})

    def propose(self, row: dict[str, Any], finding: str) -> Proposal:
        """One corrected reply; raises ``ml.llm.ProviderError`` when every provider fails and
        :class:`~ml.conversation.RowInputError` when the row cannot be rendered (both are in
        :attr:`ROW_FAILURES`)."""
        return self._proposal(row, self.router.complete(self.build_request(row, finding)))

    def propose_many(self, rows: Sequence[dict[str, Any]],
                     findings: Sequence[str]) -> list[Proposal | Exception]:
        """:meth:`propose` for each row and its finding, the requests sent side by side
        (``Router.complete_many``); in row order, a :class:`Proposal` or the row's failure (one
        of :attr:`ROW_FAILURES`, returned, not raised) in each place."""
        if len(rows) != len(findings):
            raise ValueError(f"propose_many: {len(rows)} rows but {len(findings)} findings")
        out: list[Proposal | Exception | None] = [None] * len(rows)
        to_send: list[int] = []
        requests: list[LLMRequest] = []
        for i, (row, finding) in enumerate(zip(rows, findings, strict=True)):
            try:
                requests.append(self.build_request(row, finding))
            except RowInputError as exc:
                out[i] = exc
                continue
            to_send.append(i)
        for i, answer in zip(to_send, self.router.complete_many(requests), strict=True):
            out[i] = answer if isinstance(answer, Exception) else self._proposal(rows[i], answer)
        return out  # type: ignore[return-value]  # every place is filled

    def _proposal(self, row: dict[str, Any], response: LLMResponse) -> Proposal:
        out = TeacherOutput.model_validate(response.parsed)
        return Proposal(str(row["interaction_id"]), out.corrected_response,
                        f"llm:{response.provider}", {
                            "rationale": out.rationale, "prompt_version": self.prompt_version,
                            "model": response.model, "cached": response.cached,
                        })
