"""The demo's second wave of users: simulated customers served by learnloop's own serving API.

After the quality gate makes a challenger, ``learnloop demo`` starts an A/B experiment and sends
a second wave of users through ``GET /v1/route`` and ``POST /v1/chat/completions``. Each user asks
the questions of the demo generator (same tenants and knowledge bases as the logs; half of the
questions about the facts that changed, see :data:`FOCUS`; :func:`plan_sessions`), the served
model answers, and the user reacts the way the generator's
users react (:func:`reaction`): after a right reply they mostly go on, rarely give feedback and
when they do it is mostly positive; after a wrong one they often abandon or ask for a human and
their feedback is mostly negative. Whether a reply is right is judged from the knowledge base's
answer (:func:`judge_reply`), so a model that answers better earns better feedback: the A/B test
measures a real difference, not a planted one.

Nothing here does I/O: :func:`run_wave` drives a :class:`WaveClient` (the demo's HTTP client in
``cli.demo_loop``; a test can pass its own) and returns what happened per arm.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ml.demo import generate as g
from ml.demo.reviewer import Truth, leaks_personal_data, reply_is_right

# a different stream than the logs' (same seed): the wave's users are new conversations
WAVE_SEED_OFFSET = 1_000_003
_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")
_MONEY = re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?|\d[\d,]*(?:\.\d+)?\s?(?:EUR|USD|GBP)\b")
# a reply this close to the knowledge base's answer (token F1) with the same amounts is right
RIGHT_F1 = 0.6
# Share of the wave's questions about the facts that changed in each tenant's knowledge base
# (its first item's price and its first policy, which the old bot kept stating wrong). A change
# customers notice draws questions: after a price change, many ask about the new price. The logs'
# own mix asks about them in about 10% of turns; a model that learned the corrections differs
# from one that did not mostly there, so a demo-sized A/B test needs the wave to ask about them.
FOCUS = 0.5


@dataclass(frozen=True)
class WaveTurn:
    question: str
    answer: str  # the knowledge base's right reply
    intent: str


@dataclass(frozen=True)
class WaveSession:
    tenant_id: str
    user_id: str  # the routing subject: the same customer always gets the same arm
    session_id: str
    channel: str
    system: str
    turns: tuple[WaveTurn, ...]


def _changed_fact_question(rng: random.Random, tenant) -> tuple[str, str, str]:
    """A question about one of the tenant's changed facts (its first item's price, its first
    policy) with the knowledge base's current answer."""
    spec = tenant.spec
    if rng.random() < 0.5:
        item, price = spec.items[0]
        tmpl = rng.choice(spec.price_a)
        return (rng.choice(spec.price_q).format(item=item),
                tmpl.format(item=item, price=g._money(spec.currency, price)), "price")
    pol = spec.policies[0]
    item = rng.choice(spec.items)[0]
    return rng.choice(pol.questions).format(item=item), pol.answer, "policy"


def plan_sessions(n_sessions: int, seed: int, tenants: int = 3,
                  focus: float = FOCUS) -> list[WaveSession]:
    """``n_sessions`` conversations (1-4 planned turns each; a user may leave earlier) with the
    generator's question mix, from a seeded stream of their own (same arguments, same plan).
    ``focus``: the share of questions about the facts that changed in each tenant's knowledge
    base (see :data:`FOCUS`)."""
    if n_sessions < 1:
        raise ValueError(f"n_sessions must be at least 1, got {n_sessions}")
    if not 0.0 <= focus <= 1.0:
        raise ValueError(f"focus must be in [0, 1], got {focus}")
    if tenants < 1:
        raise ValueError(f"tenants must be at least 1, got {tenants}")
    rng = random.Random(seed + WAVE_SEED_OFFSET)
    ts = []
    for t in range(tenants):
        spec = g.TENANTS[t % len(g.TENANTS)]
        tid = spec.tenant_id if t < len(g.TENANTS) else f"{spec.tenant_id}-{t // len(g.TENANTS) + 1}"
        ts.append(g._Tenant(spec, tid, g._customers(rng, spec, 400),
                            {"role": "system", "content": spec.system},
                            tuple(f"{tid}-agent-{k:02d}" for k in range(1, 9))))
    out = []
    for k in range(n_sessions):
        tenant = ts[int(rng.random() * len(ts))]
        who = int(rng.random() * len(tenant.customers))
        me = tenant.customers[who]
        planned = rng.choice((1, 1, 1, 2, 2, 2, 3, 3, 4))
        turns = []
        for turn in range(planned):
            if rng.random() < focus:
                q, answer, intent = _changed_fact_question(rng, tenant)
            else:
                q, answer, intent, _topic, _price = g._question(rng, tenant, me, None)
            if turn == 0:
                q = rng.choice(g._GREETINGS) + q
            turns.append(WaveTurn(q, answer, intent))
        out.append(WaveSession(tenant.tenant_id, f"{tenant.tenant_id}:customer-{who:03d}",
                               f"wave-{seed}-{k:05d}", rng.choice(g._CHANNELS),
                               tenant.spec.system, tuple(turns)))
    return out


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def token_f1(a: str, b: str) -> float:
    """Token-overlap F1 of two texts (words and numbers, case-folded)."""
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return 0.0
    counts: dict[str, int] = {}
    for t in tb:
        counts[t] = counts.get(t, 0) + 1
    common = 0
    for t in ta:
        if counts.get(t, 0) > 0:
            counts[t] -= 1
            common += 1
    if common == 0:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def _amounts(text: str) -> list[str]:
    return [re.sub(r"[^\d.]", "", m) for m in _MONEY.findall(text)]


def judge_reply(reply: str, turn: WaveTurn) -> bool:
    """Whether a customer would take ``reply`` as the right answer to ``turn``: the demo
    reviewer's rule (:func:`ml.demo.reviewer.reply_is_right`), or a close paraphrase (token F1 of
    at least ``RIGHT_F1`` with the knowledge base's answer) that states the same amounts and
    leaks no personal data."""
    truth = Truth(mistake=None, intent=turn.intent, answer=turn.answer)
    if reply_is_right(reply, truth):
        return True
    if not reply or leaks_personal_data(reply):
        return False
    if _amounts(reply) != _amounts(turn.answer):
        return False
    return token_f1(reply, turn.answer) >= RIGHT_F1


def reaction(rng: random.Random, right: bool, last: bool, intent: str
             ) -> tuple[dict[str, Any] | None, dict[str, bool]]:
    """The user's feedback (or None) and signals after a reply, drawn as the generator's users
    draw them (``ml.demo.generate``: the same probabilities after a right or a wrong reply)."""
    mistake = None if right else ("wrong_price" if intent == "price" else "off_topic")
    requested_human, abandoned, continued, completed = g.user_signals(rng.random, mistake, last)
    fb = g._feedback(rng, mistake, requested_human)
    return fb, {"user_continued": continued, "abandoned": abandoned,
                "requested_human": requested_human, "completed_action": completed}


class WaveClient(Protocol):
    """What the wave needs of the serving API."""

    def route(self, subject: str) -> dict[str, Any]: ...

    def chat(self, *, model: str, messages: list[dict[str, str]], user: str, session_id: str,
             tenant_id: str, channel: str) -> dict[str, Any]: ...

    def feedback(self, interaction_id: str, feedback: dict[str, Any] | None,
                 signals: dict[str, bool]) -> None: ...

    def end_session(self, session_id: str, signals: dict[str, bool]) -> None: ...


@dataclass
class ArmTally:
    """What one arm's users saw and did."""

    version: str
    sessions: int = 0
    turns: int = 0
    right: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: list[int] = field(default_factory=list)
    handoffs: int = 0
    abandoned: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("ratings")
        d["right_rate"] = round(self.right / self.turns, 4) if self.turns else None
        d["mean_rating"] = round(sum(self.ratings) / len(self.ratings), 3) if self.ratings else None
        d["ratings"] = len(self.ratings)
        return d


def run_wave(client: WaveClient, sessions: Iterable[WaveSession], seed: int,
             on_session: Callable[[], None] | None = None) -> dict[str, ArmTally]:
    """Serve every session through ``client`` and report each reaction back; returns the tally
    per arm (``control`` / ``treatment``; ``champion`` when no experiment routed the user)."""
    rng = random.Random(seed + 2 * WAVE_SEED_OFFSET)
    tallies: dict[str, ArmTally] = {}
    for s in sessions:
        route = client.route(s.user_id)
        arm = route.get("arm") or route.get("alias") or "champion"
        tally = tallies.setdefault(arm, ArmTally(str(route.get("version"))))
        tally.sessions += 1
        messages: list[dict[str, str]] = [{"role": "system", "content": s.system}]
        signals: dict[str, bool] = {}
        for i, turn in enumerate(s.turns):
            messages.append({"role": "user", "content": turn.question})
            answer = client.chat(model=route["model"], messages=list(messages), user=s.user_id,
                                 session_id=s.session_id, tenant_id=s.tenant_id,
                                 channel=s.channel)
            reply = answer["choices"][0]["message"]["content"] or ""
            right = judge_reply(reply, turn)
            last = i == len(s.turns) - 1
            fb, signals = reaction(rng, right, last, turn.intent)
            tally.turns += 1
            tally.right += right
            tally.handoffs += signals["requested_human"]
            tally.abandoned += signals["abandoned"]
            if fb is not None:
                if fb.get("thumbs") == "up":
                    tally.thumbs_up += 1
                elif fb.get("thumbs") == "down":
                    tally.thumbs_down += 1
                if "rating" in fb:
                    tally.ratings.append(int(fb["rating"]))
            iid = answer["learnloop"]["interaction_id"]
            if fb is not None or signals["requested_human"] or signals["abandoned"] \
                    or signals["completed_action"]:
                client.feedback(iid, fb, signals)
            if not signals["user_continued"]:
                break
            messages.append({"role": "assistant", "content": reply})
        client.end_session(s.session_id, signals)
        if on_session is not None:
            on_session()
    return tallies
