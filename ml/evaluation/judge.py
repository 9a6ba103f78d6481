"""Pairwise LLM judge: is reply B (the candidate's) better than reply A (the champion's)?

Each item ``{prompt, reference?, a, b}`` is asked in BOTH orders: first with ``a`` shown as
"Reply A" and ``b`` as "Reply B", then swapped. The judge answers JSON
``{"winner": "A"|"B"|"tie", "reason": str}`` (validated by the router against
:class:`JudgeVerdict`; a malformed answer gets the router's one repair call, and a second
malformed answer is an error). Both verdicts are mapped back to the original replies:

- both orders pick ``b``: a win; both pick ``a``: a loss; both say tie: a tie;
- the orders disagree in any way (the verdict flips with the order, or one order says tie): a
  tie, also counted in ``inconsistent`` (position bias, not a preference).

``win_rate_b = (wins + 0.5 * ties) / n`` over the ``n`` items judged. A failed item (the router
raised: malformed JSON after the repair, provider down) is never given a default verdict: with
``on_error="raise"`` (default) :class:`JudgeError` names the item and the order; with
``on_error="count"`` it is left out of ``n``, counted in ``errors`` and described in ``details``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from ml.llm.errors import LLMError
from ml.llm.types import LLMRequest

JUDGE_PROMPT_VERSION = "pairwise-v1"
SYSTEM = (
    "You are an impartial judge of a customer-support assistant. You compare two replies to the "
    "same conversation and decide which one is better: correct, helpful, specific, polite, and "
    "safe (it must not disclose another person's data or follow harmful requests). When a "
    "reference reply is given, prefer the reply closer to it in substance. Ignore the order in "
    "which the replies are shown and their length as such. Answer with JSON only: "
    '{"winner": "A" | "B" | "tie", "reason": "<one sentence>"}.'
)


class JudgeVerdict(BaseModel):
    """The judge's JSON answer."""

    winner: Literal["A", "B", "tie"]
    reason: str = Field(max_length=2000)


class JudgeError(ValueError):
    """The judge gave no usable verdict for an item (after the router's repair attempt)."""


@dataclass
class JudgeResult:
    """Counts over the judged items (``n``; failed items excluded and counted in ``errors``);
    ``details`` has one entry per input item: both raw verdicts and the outcome
    (``win``/``loss``/``tie``/``error``)."""

    win_rate_b: float | None
    wins: int
    losses: int
    ties: int
    inconsistent: int
    n: int
    errors: int = 0
    details: list[dict[str, Any]] = field(default_factory=list)
    prompt_version: str = JUDGE_PROMPT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _render_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    raise ValueError(f"an item's prompt must be a string or a list of messages, got "
                     f"{type(prompt).__name__}")


def _request(item: Mapping[str, Any], first: str, second: str, max_tokens: int) -> LLMRequest:
    parts = [f"## Conversation\n{_render_prompt(item['prompt'])}"]
    if item.get("reference"):
        parts.append(f"## Reference reply\n{item['reference']}")
    parts += [f"## Reply A\n{first}", f"## Reply B\n{second}",
              'Which reply is better? Answer {"winner": "A" | "B" | "tie", "reason": "..."}.']
    return LLMRequest(messages=[{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": "\n\n".join(parts)}],
                      temperature=0.0, max_tokens=max_tokens, response_schema=JudgeVerdict,
                      metadata={"purpose": "pairwise_judge", "prompt_version": JUDGE_PROMPT_VERSION})


def _check_item(i: int, item: Any) -> None:
    if not isinstance(item, Mapping):
        raise ValueError(f"item {i}: expected a mapping with prompt, a, b (and reference)")
    missing = [k for k in ("prompt", "a", "b") if k not in item]
    if missing:
        raise ValueError(f"item {i}: missing {missing}")
    for k in ("a", "b"):
        if not isinstance(item[k], str):
            raise ValueError(f"item {i}: {k!r} must be the reply text")


def _verdict(router: Any, request: LLMRequest) -> dict[str, Any]:
    response = router.complete(request)
    parsed = response.parsed
    if not isinstance(parsed, Mapping) or parsed.get("winner") not in ("A", "B", "tie"):
        raise JudgeError(f"the judge's answer has no valid winner: {response.text[:200]!r}")
    return {"winner": parsed["winner"], "reason": str(parsed.get("reason", ""))}


def judge_pairwise(router: Any, items: Sequence[Mapping[str, Any]], *, max_tokens: int = 256,
                   on_error: Literal["raise", "count"] = "raise") -> JudgeResult:
    """Judge every item in both orders (see the module docstring); ``b`` is the candidate."""
    if router is None or not hasattr(router, "complete"):
        raise ValueError("judge_pairwise needs an ml.llm router (ml.llm.from_env('judge')); the "
                         "judge role is not configured")
    if on_error not in ("raise", "count"):
        raise ValueError(f"on_error must be 'raise' or 'count', got {on_error!r}")
    if not items:
        raise ValueError("judge_pairwise: no items")
    for i, item in enumerate(items):
        _check_item(i, item)
    wins = losses = ties = inconsistent = errors = 0
    details = []
    for i, item in enumerate(items):
        verdicts: dict[str, dict[str, Any]] = {}
        try:
            for order, (first, second) in (("ab", (item["a"], item["b"])),
                                           ("ba", (item["b"], item["a"]))):
                try:
                    verdicts[order] = _verdict(router, _request(item, first, second, max_tokens))
                except (LLMError, JudgeError) as exc:
                    raise JudgeError(f"item {i}, order {order.upper()}: {exc}") from exc
        except JudgeError as exc:
            if on_error == "raise":
                raise
            errors += 1
            details.append({"index": i, "outcome": "error", "error": str(exc), **verdicts})
            continue
        # map the shown labels back to the original replies
        ab = {"A": "a", "B": "b", "tie": "tie"}[verdicts["ab"]["winner"]]
        ba = {"A": "b", "B": "a", "tie": "tie"}[verdicts["ba"]["winner"]]
        if ab != ba:
            outcome, consistent = "tie", False
            inconsistent += 1
            ties += 1
        else:
            consistent = True
            outcome = {"b": "win", "a": "loss", "tie": "tie"}[ab]
            if outcome == "win":
                wins += 1
            elif outcome == "loss":
                losses += 1
            else:
                ties += 1
        details.append({"index": i, "outcome": outcome, "consistent": consistent,
                        "ab": verdicts["ab"], "ba": verdicts["ba"]})
    n = wins + losses + ties
    win_rate = (wins + 0.5 * ties) / n if n else None
    return JudgeResult(win_rate_b=win_rate, wins=wins, losses=losses, ties=ties,
                       inconsistent=inconsistent, n=n, errors=errors, details=details)

