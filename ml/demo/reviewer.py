"""The demo reviewer: the decision a careful reviewer would make on a review item, from the demo
generator's ground truth (``truth.jsonl``: {interaction_id, mistake, intent, answer}).

Demo material only: ``learnloop demo`` records these decisions under the reviewer
``demo-reviewer`` through ``orchestration.demo_review`` (the store functions of the web app), and
only when a ``truth.jsonl`` lies in the landing root. Real users never get simulated decisions.

What a careful reviewer does with the truth at hand:

* ``error`` item flagged by the auditor: *confirm* when the reply has a planted mistake (even when
  the auditor named another category: the note says which), *dismiss* when the reply was right.
* ``error`` item "no error found" (calibration): the same question, the same answer: *confirm*
  when the reply has a mistake (the auditor missed it), *dismiss* when it was right.
* ``sample`` item: *approve* when the proposed reply is right for the question
  (:func:`reply_is_right`: the reference reply, or the same price in other words), *edit* it into
  the reference reply when the proposal is wrong and the bot's reply needed a correction,
  *reject* it when the bot's reply was right in the first place (nothing to correct) and the
  proposal is wrong. Without a reference reply (a truth file written before it was recorded) a
  wrong-looking proposal cannot be judged: no decision (left for a human).

A small seeded share of the decisions are a reviewer's mistakes (``mistake_rate``: a confirm
becomes a dismiss and back, an approval a rejection, an edit or a rejection an approval of the
wrong proposal), and a share of the approvals become edits with a small wording change
(``style_edit_rate``), as people do. Both draws are a hash of (seed, purpose, item key), so the
same item gets the same decision whatever order the items come in and however often it runs.
Every decision carries a note saying it was simulated from the demo's ground truth.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ml.demo.truth import category_of_mistake

DEMO_REVIEWER = "demo-reviewer"
MISTAKE_RATE = 0.03
STYLE_EDIT_RATE = 0.10
NOTE_PREFIX = "Simulated by the demo reviewer from the demo generator's ground truth"

_MONEY = re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?|\d[\d,]*(?:\.\d+)?\s?(?:EUR|USD|GBP)\b")
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z_]{2,}\]")  # the scrubber's [EMAIL], [PHONE], ...
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ItemFacts:
    """What the reviewer sees of a pending review item."""

    key: str  # stable across runs and stores (e.g. "sample:<dedup key>"): seeds the draws
    kind: str  # "error" | "sample"
    category: str | None = None  # the auditor's category (error items; None: "no error found")
    calibration: bool = False  # a "no error found" item (confirming it says the reply IS wrong)
    original_response: str | None = None  # the bot's reply
    proposed_response: str | None = None  # sample items: the teacher's proposal
    source: str | None = None  # sample items: human_agent | retrieval | llm:<provider>


@dataclass(frozen=True)
class Truth:
    """The generator's ground truth of one interaction."""

    mistake: str | None  # the planted mistake, None when the reply is right
    intent: str | None = None
    answer: str | None = None  # the right reply (None in truth files written before it was)


@dataclass(frozen=True)
class Decision:
    """A decision for ``store.repo.decide``; ``ideal`` is what a reviewer without slips decides."""

    decision: str  # confirm | dismiss | approve | edit | reject
    final_response: str | None
    note: str
    ideal: str
    simulated_mistake: bool = False
    style_edit: bool = False


def draw(seed: int, purpose: str, key: str) -> float:
    """A uniform number in [0, 1) from (seed, purpose, key): the same item gets the same draw in
    any order, in any run."""
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _norm(text: str | None) -> str:
    return _SPACE.sub(" ", (text or "").strip()).rstrip(" .!").casefold()


def _amounts(text: str) -> list[str]:
    """The money amounts in ``text``, in order, as plain numbers ("$1,299.00" -> "1299.00")."""
    return [re.sub(r"[^\d.]", "", m) for m in _MONEY.findall(text)]


def leaks_personal_data(text: str) -> bool:
    """An e-mail address, a phone number or a scrubber placeholder in a reply."""
    return bool(_PLACEHOLDER.search(text) or _EMAIL.search(text) or _PHONE.search(text))


def reply_is_right(reply: str | None, truth: Truth) -> bool | None:
    """Whether ``reply`` answers the question right: the reference reply (up to case, spacing
    and the final full stop), or, for a price question, the same price in other words (the first
    amount it states; a complete sentence that leaks no personal data). None when there is no
    reference reply."""
    if truth.answer is None:
        return None
    if not reply or not reply.strip():
        return False
    if _norm(reply) == _norm(truth.answer):
        return True
    if truth.intent != "price":
        return False
    price, stated = _amounts(truth.answer)[:1], _amounts(reply)[:1]
    return (bool(price) and stated == price and reply.rstrip()[-1:] in ".!?"
            and not leaks_personal_data(reply) and len(reply) <= 2 * len(truth.answer) + 40)


# small wording changes of an approved reply, tried in turn from a seeded start (a replacement
# applies when its text occurs; the greeting and closing lines always do)
_STYLE_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("I'm sorry", "Sorry"),
    ("Right now ", "At the moment "),
    (" costs ", " is priced at "),
    ("You can ", "You're welcome to "),
    (" within ", " in "),
    ("I have ", "I've "),
)
_STYLE_WRAPS: tuple[tuple[str, str], ...] = (
    ("Thanks for reaching out! ", ""),
    ("", " Is there anything else I can help you with?"),
    ("Happy to help. ", ""),
    ("", " Let me know if you have any other questions."),
)


def style_edit(reply: str, seed: int, key: str) -> str:
    """``reply`` with one small, realistic wording change (never the same text)."""
    options: list[str] = []
    for old, new in _STYLE_REPLACEMENTS:
        if old in reply:
            options.append(reply.replace(old, new, 1))
    text = reply.strip()
    options += [f"{pre}{text}{post}" for pre, post in _STYLE_WRAPS]
    options = [o for o in options if o != reply]
    return options[int(draw(seed, "style-choice", key) * len(options))]


def _mistake_phrase(truth: Truth) -> str:
    category = category_of_mistake(truth.mistake)
    return (f"the reply has a planted {truth.mistake} mistake"
            + (f" ({category})" if category and category != truth.mistake else ""))


def _ideal_error(item: ItemFacts, truth: Truth) -> tuple[str, str]:
    if truth.mistake is None:
        reason = ("the auditor found no error and the reply is right" if item.calibration
                  else "the reply is right: no error")
        return "dismiss", reason
    reason = _mistake_phrase(truth)
    if item.calibration:
        reason += ": the auditor missed it"
    elif item.category and item.category != category_of_mistake(truth.mistake):
        reason += f"; the auditor called it {item.category}"
    return "confirm", reason


def _ideal_sample(item: ItemFacts, truth: Truth) -> tuple[str, str | None, str] | None:
    right = reply_is_right(item.proposed_response, truth)
    if right is None:
        if truth.mistake is None and _norm(item.proposed_response) == _norm(
                item.original_response):
            return "approve", None, "the proposal is the bot's reply, which was right"
        return None  # no reference reply to judge the proposal by: left for a human
    if right:
        return "approve", None, "the proposal answers the question right"
    if truth.mistake is None:
        return "reject", None, "the bot's reply was right (nothing to correct) and the proposal is not"
    return ("edit", truth.answer,
            f"the proposal is not right ({_mistake_phrase(truth)}): replaced by the reference reply")


_SLIP = {"confirm": "dismiss", "dismiss": "confirm", "approve": "reject", "edit": "approve",
         "reject": "approve"}


def decide_item(item: ItemFacts, truth: Truth, *, seed: int, mistake_rate: float = MISTAKE_RATE,
                style_edit_rate: float = STYLE_EDIT_RATE) -> Decision | None:
    """The demo reviewer's decision on ``item`` given the ``truth`` of its interaction; None when
    it cannot be judged (a sample without a reference reply to compare with)."""
    for name, rate in (("mistake_rate", mistake_rate), ("style_edit_rate", style_edit_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    if item.kind == "error":
        ideal, reason = _ideal_error(item, truth)
        final = None
    elif item.kind == "sample":
        judged = _ideal_sample(item, truth)
        if judged is None:
            return None
        ideal, final, reason = judged
    else:
        raise ValueError(f"item {item.key}: kind must be 'error' or 'sample', got {item.kind!r}")
    decision, slipped = ideal, draw(seed, "mistake", item.key) < mistake_rate
    if slipped:
        decision, final = _SLIP[ideal], None
        reason += f"; then a deliberate reviewer slip ({decision} instead of {ideal}, " \
                  f"{mistake_rate:.0%} of demo decisions)"
    styled = False
    if decision == "approve" and item.kind == "sample" and item.proposed_response \
            and draw(seed, "style", item.key) < style_edit_rate:
        decision, final, styled = "edit", style_edit(item.proposed_response, seed, item.key), True
        reason += "; approved with a small wording change"
    return Decision(decision=decision, final_response=final, note=f"{NOTE_PREFIX}: {reason}.",
                    ideal=ideal, simulated_mistake=slipped, style_edit=styled)
