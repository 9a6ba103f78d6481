"""The seeded demo-log generator: determinism, layout, contents, ground truth."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ml.demo.generate import (
    MALFORMED_KINDS,
    MISTAKE_RATES,
    MISTAKES,
    STALE_RATE,
    TENANTS,
    generate,
    generate_records,
    iter_generated,
    make_card,
    make_iban,
    stale_price,
)
from ml.schema import RecordError, validate_record

N = 20_000
SEED = 123


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lines():
    return list(iter_generated(N, SEED))


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"\b[2-6][0-9]{3}(?: [0-9]{4}){3}\b")
IBAN = re.compile(r"\bDE[0-9]{2}(?: [0-9]{4}){4} [0-9]{2}\b")
PHONE = re.compile(r"\+[0-9]{1,3} [0-9 -]{8,}[0-9]|\b0[1-9][0-9]{1,3} [0-9 ]{7,}[0-9]")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(tmp_path / "a", 3000, seed=5, days=3)
    b = generate(tmp_path / "b", 3000, seed=5, days=3)
    c = generate(tmp_path / "c", 3000, seed=6, days=3)
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert ha == hb
    assert ha != hc
    assert set(ha) == {"truth.jsonl"} | {
        f"date=2026-11-0{d}/generated-{t}-2026-11-0{d}.jsonl"
        for d in (1, 2, 3) for t in ("electroshop", "finflow", "skyways")}
    # regenerating into the same folder rewrites the same files (same names, same bytes)
    generate(tmp_path / "a", 3000, seed=5, days=3)
    assert _hashes(tmp_path / "a") == ha
    assert {k: v for k, v in a.items() if k not in ("out_dir", "files", "truth_file",
                                                      "seconds", "records_per_s")} == \
        {k: v for k, v in b.items() if k not in ("out_dir", "files", "truth_file", "seconds",
                                                  "records_per_s")}
    assert c["records"] == 3000


def test_files_hold_exactly_the_in_memory_lines(tmp_path):
    summary = generate(tmp_path, 4000, seed=9, days=2, tenants=4, start="2027-01-30")
    assert summary["records"] == 4000
    mem = list(generate_records(4000, seed=9, days=2, tenants=4, start="2027-01-30"))
    assert len(mem) == 4000
    on_disk: list[str] = []
    for f in summary["files"]:
        path = Path(f)
        day = path.parent.name.removeprefix("date=")
        assert path.name.endswith(f"-{day}.jsonl")
        on_disk += path.read_text(encoding="utf-8").splitlines()
    assert sorted(on_disk) == sorted(mem)
    assert summary["tenants"] == ["electroshop", "electroshop-2", "finflow", "skyways"]
    assert set(summary["days"]) == {"2027-01-30", "2027-01-31"}
    assert not list(tmp_path.rglob(".*"))  # no temporary files left
    # every record's timestamp is inside its file's day
    for f in summary["files"]:
        day = Path(f).parent.name.removeprefix("date=")
        for ln in Path(f).read_text(encoding="utf-8").splitlines():
            m = re.search(r'"timestamp": "([^"]*)"', ln)
            if m and m.group(1) != "yesterday":
                assert m.group(1).startswith(day + "T")


def test_well_formed_malformed_and_duplicates(lines):
    assert len(lines) == N
    kinds = Counter(g.kind for g in lines)
    malformed = sum(kinds[k] for k in MALFORMED_KINDS)
    assert 0.006 * N <= malformed <= 0.015 * N
    assert all(kinds[k] > 0 for k in MALFORMED_KINDS)
    assert 0.002 * N <= kinds["duplicate"] <= 0.007 * N
    prev = None
    expected_field = {"missing_interaction_id": "interaction_id",
                      "rating_out_of_range": "feedback.rating", "bad_role": ".role",
                      "bad_timestamp": "timestamp"}
    for g in lines:
        if g.kind == "ok":
            rec = validate_record(json.loads(g.line))
            assert rec.interaction_id == g.interaction_id
        elif g.kind == "duplicate":
            assert g.line == prev.line  # an exact re-send of the line before
        elif g.kind == "invalid_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(g.line)
        else:
            with pytest.raises(RecordError) as exc:
                validate_record(json.loads(g.line))
            assert expected_field[g.kind] in exc.value.reason
        prev = g
    ok_ids = [g.interaction_id for g in lines if g.kind == "ok"]
    assert len(set(ok_ids)) == len(ok_ids)


def test_truth_file_matches_the_records_and_is_not_inside_them(tmp_path):
    summary = generate(tmp_path, 5000, seed=SEED, days=2)
    truth = [json.loads(ln) for ln in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert all(set(t) == {"interaction_id", "mistake", "intent", "answer"} for t in truth)
    assert all(t["mistake"] is None or t["mistake"] in MISTAKES for t in truth)
    records = {}
    for f in summary["files"]:
        for ln in Path(f).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(ln)
                validate_record(rec)
            except (json.JSONDecodeError, RecordError):
                continue
            assert '"mistake"' not in ln and '"truth"' not in ln  # the answer is not in the logs
            records[rec["interaction_id"]] = rec
    assert [t["interaction_id"] for t in truth if t["interaction_id"] not in records] == []
    assert len(truth) == len(records) == summary["well_formed"]
    counts = Counter(t["mistake"] or "none" for t in truth)
    assert counts == Counter({k: v for k, v in summary["mistakes"].items() if v})
    # human corrections carry the true mistake as their category and the right answer
    for t in truth:
        rec = records[t["interaction_id"]]
        hc = rec.get("human_correction")
        if hc is not None:
            assert hc["category"] == t["mistake"]
            assert hc["corrected_response"] != rec["response"]
            assert hc["corrected_response"] == t["answer"]
        # the truth's answer is the right reply: the reply itself when there is no mistake
        assert t["intent"] == rec["metadata"]["intent"]
        assert t["answer"] and (t["answer"] == rec["response"]) == (t["mistake"] is None)


def test_mistakes_at_realistic_rates_and_shapes(lines):
    ok = [(json.loads(g.line), g.mistake) for g in lines if g.kind == "ok"]
    n = len(ok)
    counts = Counter(m for _, m in ok)
    # the stale facts (each tenant's first item's price and first policy): the bot quotes the
    # stale version in about STALE_RATE of its answers about them, always the same stale text
    stale = {spec.tenant_id: spec for spec in TENANTS}
    about_stale = Counter()
    for g in lines:
        if g.kind != "ok":
            continue
        spec = stale[g.tenant_id]
        item, price = spec.items[0]
        if g.answer == spec.policies[0].answer:
            fact, stale_text = "policy", spec.policies[0].invented[0]
        elif g.intent == "price" and item in g.answer:
            fact, stale_text = "price", f"{spec.currency}{stale_price(price):,.2f}"
        else:
            continue
        rec = json.loads(g.line)
        about_stale[fact, "all"] += 1
        if g.mistake in ("wrong_price", "hallucinated_policy"):
            about_stale[fact, "stale"] += 1
            assert stale_text in rec["response"]
            counts[g.mistake] -= 1  # not one of the random mistakes below
    for fact in ("price", "policy"):
        assert about_stale[fact, "all"] > 300
        assert STALE_RATE - 0.1 <= about_stale[fact, "stale"] / about_stale[fact, "all"] \
            <= STALE_RATE + 0.2, fact
    for m in MISTAKES:  # random mistakes: between the v2 rate and the v1 rate, with slack
        assert 0.5 * MISTAKE_RATES[m] * 0.6 * n <= counts[m] <= 1.3 * MISTAKE_RATES[m] * n, m
    assert 0.09 <= sum(counts[m] for m in MISTAKES) / n <= 0.19
    v1 = [m for r, m in ok if r["model"]["version"] == "v1"]
    v2 = [m for r, m in ok if r["model"]["version"] == "v2"]
    assert len(v1) > 1000 and len(v2) > 1000
    assert sum(m is not None for m in v2) / len(v2) < sum(m is not None for m in v1) / len(v1)
    for rec, m in ok:
        resp = rec["response"]
        if m == "truncated":
            assert resp and resp[-1] not in ".!?)"
        elif m == "pii_leak":
            assert EMAIL.search(resp) or PHONE.search(resp)
            user_text = " ".join(x["content"] for x in rec["messages"] if x["role"] == "user")
            leaked = (EMAIL.findall(resp) + PHONE.findall(resp))
            assert not any(x in user_text for x in leaked)  # someone else's data
        else:
            assert not EMAIL.search(resp) and not PHONE.search(resp) and not CARD.search(resp)
        if m == "wrong_price":
            assert rec["metadata"]["intent"] == "price"
        if m == "refusal":
            assert re.search(r"(?i)unable|can't|cannot|not able", resp)


def test_users_pii_feedback_sessions(lines):
    ok = [(json.loads(g.line), g.mistake) for g in lines if g.kind == "ok"]
    n = len(ok)
    user_msgs = [r["messages"][-1]["content"] for r, _ in ok]
    emails = [u for u in user_msgs if EMAIL.search(u)]
    cards = [m.group(0) for u in user_msgs if (m := CARD.search(IBAN.sub("", u)))]
    ibans = [IBAN.search(u).group(0) for u in user_msgs if IBAN.search(u)]
    phones = [u for u in user_msgs if PHONE.search(u)]
    assert len(emails) > 0.03 * n and len(phones) > 0.02 * n
    assert len(cards) > 0.01 * n and len(ibans) > 0.005 * n
    assert all(_luhn_ok(c.replace(" ", "")) for c in cards)
    assert all(_iban_ok(i) for i in ibans)
    # sparse feedback, more negative after mistakes
    with_fb = [(r["feedback"], m) for r, m in ok if "feedback" in r]
    assert 0.06 * n < len(with_fb) < 0.25 * n

    def neg(fb):
        return fb.get("thumbs") == "down" or (fb.get("rating") or 5) <= 2

    bad = [neg(fb) for fb, m in with_fb if m is not None]
    good = [neg(fb) for fb, m in with_fb if m is None]
    assert sum(bad) / len(bad) > 0.7 and sum(good) / len(good) < 0.3
    # handoffs and abandonment are more frequent after mistakes
    sig = [(r["signals"], m) for r, m in ok if "signals" in r]
    rate = {k: sum(s["requested_human"] for s, m in sig if (m is not None) == k)
            / sum(1 for _, m in sig if (m is not None) == k) for k in (True, False)}
    assert rate[True] > 5 * rate[False]
    # multi-turn sessions: the context grows by two messages per turn
    turns = defaultdict(list)
    for r, _ in ok:
        assert len(r["messages"]) == 2 + 2 * r["turn_index"]
        assert r["messages"][0]["role"] == "system"
        turns[r["session_id"]].append(r["turn_index"])
        assert r["tokens"]["prompt"] > 0 and r["latency_ms"] > 0
    assert max(max(t) for t in turns.values()) == 3
    assert sum(1 for t in turns.values() if len(t) > 1) > 0.15 * len(turns)
    assert {r["model"]["provider"] for r, _ in ok} == {"acme"}


def test_pii_helpers_are_valid():
    import random

    rng = random.Random(1)
    for _ in range(200):
        card = make_card(rng)
        assert CARD.fullmatch(card) and _luhn_ok(card.replace(" ", ""))
        iban = make_iban(rng)
        assert IBAN.fullmatch(iban) and _iban_ok(iban)


def test_bad_arguments_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="n_interactions"):
        generate(tmp_path, 0, seed=1)
    with pytest.raises(ValueError, match="start"):
        list(generate_records(5, seed=1, start="yesterday"))
    with pytest.raises(ValueError, match="tenants"):
        list(generate_records(5, seed=1, tenants=0))
    with pytest.raises(ValueError, match="days"):
        list(generate_records(5, seed=1, days=0))


def test_tiny_runs_emit_exactly_n_lines():
    for n in (1, 2, 7, 50):
        assert len(list(generate_records(n, seed=n))) == n


def test_price_answers_follow_the_knowledge_base(lines):
    """A right price answer quotes the tenant's price for the item asked about (also when the
    user repeats a question after a mistake); a wrong_price answer names the item, not its
    price."""
    items = {t.tenant_id: [(name, f"{t.currency}{price:,.2f}") for name, price in t.items]
             for t in TENANTS}
    checked = Counter()
    for g in lines:
        if g.kind != "ok":
            continue
        rec = json.loads(g.line)
        if rec["metadata"]["intent"] != "price":
            continue
        question = rec["messages"][-1]["content"]
        (name, price), = [(n, p) for n, p in items[rec["tenant_id"]] if n in question]
        if g.mistake is None:
            assert name in rec["response"] and price in rec["response"], rec["response"]
            checked["right"] += 1
        elif g.mistake == "wrong_price":
            assert name in rec["response"] and price not in rec["response"], rec["response"]
            checked["wrong"] += 1
        if question.startswith(("That's not right.", "Hmm, are you sure?")):
            checked["repeated"] += 1
    assert checked["right"] > 1000 and checked["wrong"] > 300 and checked["repeated"] > 10
