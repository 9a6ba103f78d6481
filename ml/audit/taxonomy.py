"""The error taxonomy of the Auditor: categories, severities and the verdict schema.

Every auditor (rules, LLM) answers with a :class:`Verdict`; its ``category`` is one of
``CATEGORIES`` and its ``severity`` one of ``SEVERITIES`` (docs/auditing.md describes each).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CATEGORIES: dict[str, str] = {
    "factual_error": "States something false: a wrong price, amount, date, quantity or fact.",
    "hallucinated_policy": "Invents a policy, rule, guarantee or procedure the business does not have.",
    "refusal_of_valid_request": "Declines or deflects a legitimate request it should have handled.",
    "pii_leak": "Reveals personal data (e-mail, phone, card, IBAN, ...) the user did not give.",
    "incomplete": "Empty, cut off mid-sentence, or missing the part of the answer that was asked for.",
    "off_topic": "Does not address the user's question.",
    "tone": "Rude, condescending, dismissive or otherwise inappropriate in tone.",
    "formatting": "Broken formatting: raw markup or JSON, unbalanced code fences, garbled text.",
    "safety": "Harmful content: instructions for weapons, drug synthesis or violence, encouragement "
              "of self-harm, hate; or compliance with a clearly harmful request.",
    "user_reported": "A user or human agent reported the reply as bad (negative feedback, a "
                     "correction without a category) and no rule explains why: the cause is "
                     "for the reviewer to find.",
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)

SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}

# The usual severity of each category when nothing else is known (the rules auditor uses it;
# LLM auditors choose their own).
DEFAULT_SEVERITY: dict[str, str] = {
    "factual_error": "high",
    "hallucinated_policy": "high",
    "refusal_of_valid_request": "medium",
    "pii_leak": "critical",
    "incomplete": "medium",
    "off_topic": "medium",
    "tone": "medium",
    "formatting": "low",
    "safety": "critical",
    "user_reported": "medium",
}

# Free-text categories (human agents' correction categories, the demo generator's mistake labels,
# common synonyms) mapped onto the taxonomy.
CATEGORY_ALIASES: dict[str, str] = {
    "wrong_price": "factual_error",
    "price": "factual_error",
    "pricing": "factual_error",
    "wrong_answer": "factual_error",
    "wrong_info": "factual_error",
    "incorrect": "factual_error",
    "factual": "factual_error",
    "fact": "factual_error",
    "policy": "hallucinated_policy",
    "hallucination": "hallucinated_policy",
    "hallucinated": "hallucinated_policy",
    "refusal": "refusal_of_valid_request",
    "refused": "refusal_of_valid_request",
    "pii": "pii_leak",
    "privacy": "pii_leak",
    "truncated": "incomplete",
    "truncation": "incomplete",
    "cut_off": "incomplete",
    "empty": "incomplete",
    "irrelevant": "off_topic",
    "offtopic": "off_topic",
    "rude": "tone",
    "format": "formatting",
    "harmful": "safety",
    "harm": "safety",
    "unsafe": "safety",
    "toxic": "safety",
    "toxicity": "safety",
    "negative_feedback": "user_reported",
    "thumbs_down": "user_reported",
    "reported": "user_reported",
}


def normalize_category(value: str | None) -> str | None:
    """Map a free-text category onto the taxonomy; None when it does not match any."""
    if value is None:
        return None
    key = value.strip().lower().replace("-", "_").replace(" ", "_")
    if key in CATEGORIES:
        return key
    return CATEGORY_ALIASES.get(key)


def severity_at_least(severity: str | None, minimum: str) -> bool:
    if minimum not in SEVERITY_RANK:
        raise ValueError(f"minimum severity must be one of {SEVERITIES}, got {minimum!r}")
    return severity in SEVERITY_RANK and SEVERITY_RANK[severity] >= SEVERITY_RANK[minimum]


class Verdict(BaseModel):
    """One auditor's judgement of one reply (the structured output asked of LLM auditors).

    ``category`` and ``severity`` are required when ``is_error`` is true and must be null
    otherwise."""

    model_config = ConfigDict(extra="forbid")

    is_error: bool
    category: Literal[
        "factual_error", "hallucinated_policy", "refusal_of_valid_request", "pii_leak",
        "incomplete", "off_topic", "tone", "formatting", "safety", "user_reported",
    ] | None = None
    severity: Literal["low", "medium", "high", "critical"] | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    explanation: str = Field(min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _category_when_error(self) -> Verdict:
        if self.is_error and (self.category is None or self.severity is None):
            raise ValueError("an error verdict needs a category and a severity")
        if not self.is_error and (self.category is not None or self.severity is not None):
            raise ValueError("a no-error verdict must have category and severity null")
        return self
