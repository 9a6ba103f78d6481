"""The demo's second wave: its plan, the reply judge and the users' reactions."""

import random

from ml.demo.wave import (
    WaveTurn,
    judge_reply,
    plan_sessions,
    reaction,
    run_wave,
    token_f1,
)


def test_the_plan_is_seeded_and_follows_the_generators_question_mix():
    a, b = plan_sessions(300, seed=7), plan_sessions(300, seed=7)
    assert a == b
    assert plan_sessions(300, seed=8) != a
    intents = {t.intent for s in a for t in s.turns}
    assert {"price", "policy", "refund"} <= intents
    assert {s.tenant_id for s in a} == {"electroshop", "skyways", "finflow"}
    # users come back: the routing subject repeats across sessions
    users = [s.user_id for s in a]
    assert len(set(users)) < len(users)
    assert all(1 <= len(s.turns) <= 4 for s in a)


def test_judge_takes_the_answer_and_close_paraphrases_but_not_a_wrong_amount():
    turn = WaveTurn("How much is the Nova X2 wireless headset?",
                    "The Nova X2 wireless headset costs $129.00.", "price")
    assert judge_reply("The Nova X2 wireless headset costs $129.00.", turn)
    assert judge_reply("Right now the Nova X2 wireless headset costs $129.00 in our shop.", turn)
    assert not judge_reply("The Nova X2 wireless headset costs $155.99.", turn)
    assert not judge_reply("", turn)
    policy = WaveTurn("Can I return it?", "You can return any item within 30 days for a full "
                                          "refund.", "policy")
    assert judge_reply("You can return any item within 30 days for a full refund!", policy)
    assert not judge_reply("Returns are not possible after opening the box.", policy)
    assert not judge_reply("You can return any item within 30 days, write to ann@example.com",
                           policy)
    assert token_f1("a b c", "a b c") == 1.0 and token_f1("a", "b") == 0.0


def test_wrong_replies_get_worse_reactions_than_right_ones():
    rng = random.Random(0)
    right = [reaction(rng, True, False, "policy") for _ in range(4000)]
    wrong = [reaction(rng, False, False, "policy") for _ in range(4000)]

    def rate(rows, key):
        return sum(s[key] for _, s in rows) / len(rows)

    def down(rows):
        fbs = [f for f, _ in rows if f is not None]
        neg = sum(1 for f in fbs if f.get("thumbs") == "down" or f.get("rating", 5) <= 2)
        return neg / len(fbs)

    assert rate(wrong, "requested_human") > rate(right, "requested_human") + 0.15
    assert rate(wrong, "abandoned") > rate(right, "abandoned") + 0.15
    assert down(wrong) > 0.7 > 0.2 > down(right)


class ScriptedServer:
    """The serving API's answers: treatment replies with the knowledge base's answer, control
    with a wrong one (what the wave reports back is recorded)."""

    def __init__(self, plan):
        self.answers = {s.session_id: [t.answer for t in s.turns] for s in plan}
        self.feedbacks, self.ended, self.n = [], [], 0

    def route(self, subject):
        arm = "treatment" if hash(subject) % 2 else "control"
        return {"model": f"learnloop:{2 if arm == 'treatment' else 1}", "arm": arm,
                "version": "2" if arm == "treatment" else "1"}

    def chat(self, *, model, messages, user, session_id, tenant_id, channel):
        turn = sum(1 for m in messages if m["role"] == "user") - 1
        right = self.answers[session_id][turn]
        text = right if model.endswith(":2") else "I cannot help with that."
        self.n += 1
        return {"choices": [{"message": {"content": text}}],
                "learnloop": {"interaction_id": f"i{self.n}"}}

    def feedback(self, interaction_id, feedback, signals):
        self.feedbacks.append((interaction_id, feedback, signals))

    def end_session(self, session_id, signals):
        self.ended.append(session_id)


def test_run_wave_tallies_each_arm_and_reports_every_session_end():
    plan = plan_sessions(200, seed=3)
    server = ScriptedServer(plan)
    tallies = run_wave(server, plan, seed=3)
    assert set(tallies) == {"control", "treatment"}
    t, c = tallies["treatment"], tallies["control"]
    assert t.right == t.turns and c.right == 0
    assert t.sessions + c.sessions == 200 == len(server.ended)
    assert c.handoffs / c.turns > t.handoffs / t.turns
    # users go on after right replies: more turns per session in treatment
    assert t.turns / t.sessions > c.turns / c.sessions
    assert server.feedbacks and all(f[0].startswith("i") for f in server.feedbacks)


def test_focus_sets_the_share_of_questions_about_the_changed_facts():
    from ml.demo import generate as g

    changed = {t.tenant_id: (t.items[0][0], t.policies[0].answer) for t in g.TENANTS}

    def share(plan):
        turns = [(s.tenant_id, t) for s in plan for t in s.turns]
        hits = sum(1 for tid, t in turns
                   if (t.intent == "price" and changed[tid][0] in t.question)
                   or (t.intent == "policy" and t.answer == changed[tid][1]))
        return hits / len(turns)

    assert 0.5 <= share(plan_sessions(400, seed=1)) <= 0.65  # FOCUS 0.5 + the mix's own
    assert share(plan_sessions(400, seed=1, focus=0.0)) < 0.2
    assert share(plan_sessions(400, seed=1, focus=1.0)) == 1.0
