"""`learnloop samples stats` and `learnloop tag add|remove` through click's CliRunner, on a real
operational store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from store import repo
from store.db import session_scope
from store.models import ReviewEvent, ReviewItem

# name -> (tenant, quality, intent, category, source, day, tags, decision)
SAMPLES = {
    "a": ("acme", 0.12, "billing", "refusal", "retrieval", 1, ["faq"], None),
    "b": ("acme", 0.48, "billing", "wrong_answer", "human_agent", 2, [], "approve"),
    "c": ("acme", 0.81, "login", "refusal", "llm:openai", 3, [], "reject"),
    "d": ("globex", None, None, None, "retrieval", None, [], None),
}


@pytest.fixture()
def seeded(store_url, tmp_path, monkeypatch) -> dict[str, int]:
    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEARNLOOP_STORE_URL", store_url)
    ids = {}
    with session_scope(store_url) as s:
        for name, (tenant, q, intent, cat, src, day, tags, _) in SAMPLES.items():
            item, _ = repo.create_item(
                s, kind="sample", dedup_key=name, tenant_id=tenant, interaction_id=f"i-{name}",
                proposed_response="p", source=src, category=cat, quality=q, intent=intent,
                interaction_at=datetime(2025, 3, day, 12, tzinfo=UTC) if day else None, tags=tags)
            ids[name] = item.id
    with session_scope(store_url) as s:
        for name, (*_, decision) in SAMPLES.items():
            if decision:
                repo.decide(s, ids[name], decision=decision, expected_version=1, actor="ann")
    return ids


def run(*args, code=0):
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


def test_samples_stats_table_and_json(seeded):
    out = run("samples", "stats")
    assert "samples: 4  (every sample)" in out
    assert "pending 2 · approved 1 · rejected 1 · edited 0" in out
    assert "approval: 50% ((approved + edited) of 2 decided)" in out
    assert "source:   retrieval 2, human_agent 1, llm:openai 1" in out
    assert "intent:   billing 2, login 1, unknown 1" in out
    assert "tenant:   acme 3, globex 1" in out and "tags:     faq 1" in out
    assert "  0.1-0.2       1  #" in out and "unknown 1" in out
    st = json.loads(run("samples", "stats", "--json", "--intent", "billing", "--quality-min",
                        "0.4"))
    assert st["total"] == 1 and st["by_status"]["approved"] == 1 and st["approval_rate"] == 1.0
    assert st["filter"] == {"quality_min": 0.4, "intent": ["billing"]}
    out = run("samples", "stats", "--since", "2025-03-02", "--until", "2025-03-03",
              "--category", "refusal,wrong_answer", "--tenant", "acme")
    assert "samples: 2  (since=2025-03-02, until=2025-03-03, category=refusal,wrong_answer, " \
           "tenant=acme)" in out
    assert run("samples", "stats", "--tag", "nope").strip() == "no sample matches (tag=nope)"


@pytest.mark.parametrize("args, words", [
    (("--quality-min", "0.9", "--quality-max", "0.1"), "Invalid value for --quality-min: 0.9 is "
                                                       "above quality_max 0.1"),
    (("--since", "March"), "Invalid value for --since: 'March' is not a date"),
    (("--status", "confirmed"), "Invalid value for --status: 'confirmed' is not a sample status"),
    (("--quality-max", "3"), "Invalid value for --quality-max: must be a number from 0 to 1"),
])
def test_bad_filters_are_usage_errors_naming_the_option(seeded, args, words):
    for command in (("samples", "stats"), ("tag", "add", "x")):
        out = run(*command, *args, code=2)
        assert words in out


def test_tag_add_and_remove_by_filter_and_ids(seeded, store_url):
    out = run("tag", "add", "low-quality", "--quality-max", "0.5")
    assert out.strip() == "tag 'low-quality': 2 matched, 2 changed, 0 had it already"
    out = run("tag", "add", "low-quality", "--quality-max", "0.5", "--intent", "billing")
    assert out.strip() == "tag 'low-quality': 2 matched, 0 changed, 2 had it already"
    out = run("tag", "remove", "faq", "--ids", f"{seeded['a']},{seeded['c']}")
    assert out.strip() == "tag 'faq': 2 matched, 1 changed, 1 did not have it"
    out = run("tag", "add", "x", "--intent", "no-such-intent")
    assert out.strip() == "no sample matches (intent=no-such-intent): nothing to add"
    with session_scope(store_url) as s:
        tags = {i.id: i.tags for i in s.scalars(select(ReviewItem))}
        events = [(e.item_id, e.action, e.actor.startswith("cli")) for e in s.scalars(
            select(ReviewEvent).where(ReviewEvent.action.in_(("tag", "untag")))
            .order_by(ReviewEvent.id))]
    assert tags[seeded["a"]] == ["low-quality"] and tags[seeded["b"]] == ["low-quality"]
    assert tags[seeded["c"]] == [] and tags[seeded["d"]] == []
    assert events == [(seeded["a"], "tag", True), (seeded["b"], "tag", True),
                      (seeded["a"], "untag", True)]


def test_tagging_everything_needs_all_and_bad_tags_are_refused(seeded, store_url):
    out = run("tag", "add", "v2", code=2)
    assert "no filter and no --ids: this would add 'v2' on every sample" in out and "--all" in out
    out = run("tag", "add", "t" * 65, "--all", code=2)
    assert "Invalid value for TAG: tag 'tttttttttttttttttttt'... is 65 characters long" in out
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(ReviewEvent)
                        .where(ReviewEvent.action == "tag")) == 0
    out = run("tag", "add", "v2", "--all")
    assert out.strip() == "tag 'v2': 4 matched, 4 changed, 0 had it already"
    with session_scope(store_url) as s:  # nothing deleted, every sample tagged once
        assert s.scalar(select(func.count()).select_from(ReviewItem)) == 4
        assert all(i.tags[-1] == "v2" for i in s.scalars(select(ReviewItem)))


def test_commands_are_listed_in_help():
    out = run("--help")
    assert "samples" in out and "tag" in out
    assert "--quality-min" in run("tag", "add", "--help")
