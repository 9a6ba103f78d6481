"""Importers on the real public samples (../shared/data) and on files written here."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from ml.importers import (
    FORMATS,
    import_file,
    import_to_landing,
    landing_source_name,
    oasst_rating,
    parse_hh_transcript,
)
from ml.schema import RecordError, validate_record

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HH = DATA / "hh-rlhf-helpful-base" / "test.jsonl.gz"
OASST = DATA / "oasst1-en100" / "en_100_tree.jsonl"
T0 = datetime(2026, 11, 3, 12, 0, 0, tzinfo=UTC)


def _all_valid(records: list[dict]) -> None:
    for rec in records:
        validate_record(rec)  # raises on a bad one
        json.dumps(rec)  # JSON-ready


# ---- hh-rlhf ------------------------------------------------------------------------------------

def test_hh_rlhf_sample_imports_every_pair():
    res = import_file("hh-rlhf", HH, tenant_id="lab", timestamp=T0)
    assert len(res.records) == 2354
    assert res.rejected == []
    _all_valid(res.records)
    ids = [r["interaction_id"] for r in res.records]
    assert len(set(ids)) == 2354
    assert all(r["tenant_id"] == "lab" and r["timestamp"] == "2026-11-03T12:00:00Z"
               for r in res.records)
    assert all(r["feedback"] == {"thumbs": "down"} for r in res.records)
    assert all(r["human_correction"]["agent_id"] == "hh-rlhf" for r in res.records)
    # the pairs whose transcripts diverge before their last turn are tagged, not dropped
    differs = [r for r in res.records if "hh-rlhf:context-differs" in r["metadata"]["tags"]]
    assert len(differs) == 9
    # deterministic ids: a second import gives the same ones
    again = import_file("hh-rlhf", HH, tenant_id="lab", timestamp=T0)
    assert [r["interaction_id"] for r in again.records] == ids


def test_hh_rlhf_mapping_of_one_pair_exactly():
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        fh.readline()
        pair = json.loads(fh.readline())  # line 2: a three-turn conversation
    rec = import_file("hh-rlhf", HH, timestamp=T0).records[1]
    chosen_last = pair["chosen"].rsplit("\n\nAssistant: ", 1)[1]
    rejected_last = pair["rejected"].rsplit("\n\nAssistant: ", 1)[1]
    assert rec["response"] == rejected_last
    assert rec["response"].startswith("Are you interested in just the common butterflies?")
    assert rec["human_correction"] == {"agent_id": "hh-rlhf", "corrected_response": chosen_last,
                                       "reason": "preferred by annotator"}
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant",
                                                    "user"]
    assert rec["messages"][0]["content"] == ("How can I find out what types of butterflies are "
                                             "in my area?")
    assert rec["messages"][-1]["content"] == "Great. What are some common species then?"
    assert rec["turn_index"] == 2
    assert rec["feedback"] == {"thumbs": "down"}


def test_hh_rlhf_plain_file_and_bad_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        first = fh.readline().rstrip("\n")
    path.write_text("\n".join([
        first,
        "",
        '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": 5}',
        '{"chosen": "\\n\\nHuman: hi", "rejected": "\\n\\nHuman: hi"}',
        '{"chosen": "preamble\\n\\nHuman: hi\\n\\nAssistant: a", '
        '"rejected": "\\n\\nHuman: hi\\n\\nAssistant: b"}',
        "not json",
    ]) + "\n", encoding="utf-8")
    res = import_file("hh-rlhf", path, timestamp=T0)
    assert len(res.records) == 1 and res.blank_lines == 1
    reasons = {r["line_no"]: r["reason"] for r in res.rejected}
    assert set(reasons) == {3, 4, 5, 6}
    assert "rejected: expected a transcript string" in reasons[3]
    assert "chosen: the last turn is a Human turn" in reasons[4]
    assert "chosen: text before the first" in reasons[5]
    assert "invalid JSON" in reasons[6]
    assert res.rejected[-1]["raw"] == "not json"


def test_parse_hh_transcript():
    turns = parse_hh_transcript("\n\nHuman: a?\n\nAssistant: b.\n\nHuman: c\n\nAssistant: d",
                                "chosen")
    assert turns == [("user", "a?"), ("assistant", "b."), ("user", "c"), ("assistant", "d")]


# ---- oasst --------------------------------------------------------------------------------------

def test_oasst_sample_every_assistant_message():
    res = import_file("oasst", OASST, timestamp=T0)
    assert len(res.records) == 687
    assert res.rejected == []
    _all_valid(res.records)
    assert len({r["interaction_id"] for r in res.records}) == 687
    assert {r["turn_index"] for r in res.records} == {1, 3, 5}
    for r in res.records:
        assert len(r["messages"]) == r["turn_index"]
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * (
            r["turn_index"] // 2) + ["user"]
    assert len({r["session_id"] for r in res.records}) == 100
    corrected = [r for r in res.records if "human_correction" in r]
    assert corrected and all(r["human_correction"]["agent_id"] == "oasst-ranking"
                             for r in corrected)


def test_oasst_mapping_of_first_tree_exactly():
    tree = json.loads(OASST.read_text(encoding="utf-8").splitlines()[0])
    prompt = tree["prompt"]
    replies = {m["rank"]: m for m in prompt["replies"]}
    assert sorted(replies) == [0, 1, 2]
    recs = {r["interaction_id"]: r for r in import_file("oasst", OASST, timestamp=T0).records}
    best, mid, worst = (recs[replies[k]["message_id"]] for k in (0, 1, 2))
    for rec in (best, mid, worst):
        assert rec["session_id"] == tree["message_tree_id"]
        assert rec["turn_index"] == 1
        assert rec["messages"] == [{"role": "user", "content": prompt["text"]}]
        assert rec["metadata"]["language"] == "en"
        assert "oasst:synthetic" in rec["metadata"]["tags"]
    assert best["response"] == replies[0]["text"]
    assert best["feedback"] == {"rating": 5, "thumbs": "up"}
    assert "human_correction" not in best
    assert mid["feedback"] == {"rating": 3}
    assert worst["feedback"] == {"rating": 1}
    for rec, rank in ((mid, 1), (worst, 2)):
        hc = rec["human_correction"]
        assert hc["agent_id"] == "oasst-ranking"
        assert hc["corrected_response"] == replies[0]["text"]
        assert hc["reason"] == f"sibling reply ranked 0 vs this reply's {rank} by annotators"


def test_oasst_emoji_votes_override_rank():
    res = import_file("oasst", OASST, timestamp=T0)
    by_id = {r["interaction_id"]: r for r in res.records}
    flagged, downvoted = [], []

    def walk(m):
        e = m.get("emojis") or {}
        if m["role"] == "assistant":
            if e.get("red_flag", 0) > 0:
                flagged.append(m["message_id"])
            elif e.get("-1", 0) > e.get("+1", 0):
                downvoted.append(m["message_id"])
        for c in m["replies"]:
            walk(c)

    for line in OASST.read_text(encoding="utf-8").splitlines():
        walk(json.loads(line)["prompt"])
    assert flagged and downvoted
    for mid in flagged + downvoted:
        assert by_id[mid]["feedback"]["thumbs"] == "down"


def test_oasst_rating_scale():
    assert [oasst_rating(r, 2) for r in range(2)] == [5, 1]
    assert [oasst_rating(r, 3) for r in range(3)] == [5, 3, 1]
    assert [oasst_rating(r, 5) for r in range(5)] == [5, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="at least 2 ranked siblings"):
        oasst_rating(0, 1)


# ---- openai-chat --------------------------------------------------------------------------------

def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def test_openai_chat_each_assistant_turn_becomes_an_interaction(tmp_path):
    conv = {"id": "conv-1", "created": 1793880000, "metadata": {"intent": "billing", "x": 1},
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Hi, what does shipping cost?"},
                {"role": "assistant", "content": "Shipping is free over $50."},
                {"role": "user", "content": [{"type": "text", "text": "And returns?"}]},
                {"role": "assistant", "content": "30 days."},
            ]}
    plain = {"messages": [{"role": "developer", "content": "Be brief."},
                          {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]}
    path = _write_jsonl(tmp_path / "chats.jsonl", [conv, plain])
    res = import_file("openai-chat", path, tenant_id="acme", timestamp=T0)
    assert res.rejected == []
    _all_valid(res.records)
    assert len(res.records) == 3
    a, b, c = res.records
    assert a["session_id"] == b["session_id"] == "conv-1"
    assert (a["turn_index"], b["turn_index"], c["turn_index"]) == (0, 1, 0)
    assert a["messages"] == conv["messages"][:2] and a["response"] == "Shipping is free over $50."
    assert b["messages"][-1] == {"role": "user", "content": "And returns?"}
    assert len(b["messages"]) == 4 and b["response"] == "30 days."
    assert a["timestamp"] == datetime.fromtimestamp(1793880000, UTC).isoformat().replace(
        "+00:00", "Z")
    assert a["metadata"]["intent"] == "billing"
    assert a["metadata"]["source_metadata"] == {"intent": "billing", "x": 1}
    assert c["timestamp"] == "2026-11-03T12:00:00Z"
    assert c["messages"][0] == {"role": "system", "content": "Be brief."}
    assert c["session_id"] != a["session_id"] and c["tenant_id"] == "acme"
    assert len({a["interaction_id"], b["interaction_id"], c["interaction_id"]}) == 3
    again = import_file("openai-chat", path, tenant_id="acme", timestamp=T0)
    assert [r["interaction_id"] for r in again.records] == [r["interaction_id"]
                                                            for r in res.records]


def test_openai_chat_rejects_bad_lines_with_the_field(tmp_path):
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [
        ok,
        "{broken",
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "a"}]},
        {**ok, "created": "yesterday"},
        {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]},
        [1, 2],
    ])
    res = import_file("openai-chat", path, timestamp=T0)
    assert len(res.records) == 1
    reasons = {r["line_no"]: r["reason"] for r in res.rejected}
    assert "invalid JSON" in reasons[2]
    assert "messages: no assistant turn" in reasons[3]
    assert "messages[0].role: 'robot'" in reasons[4]
    assert "created: expected unix seconds" in reasons[5]
    assert "messages[0].content: expected a string" in reasons[6]
    assert "expected an object" in reasons[7]
    assert res.rejected[0]["raw"] == "{broken"


# ---- native -------------------------------------------------------------------------------------

def _rec(iid: str, **over) -> dict:
    rec = {"interaction_id": iid, "session_id": "s1", "timestamp": "2026-11-02T10:00:00Z",
           "messages": [{"role": "user", "content": "hello"}], "response": "hi there."}
    rec.update(over)
    return rec


def test_native_jsonl_rejects_each_bad_line_naming_the_field(tmp_path):
    no_id = _rec("x")
    del no_id["interaction_id"]
    path = _write_jsonl(tmp_path / "native.jsonl", [
        _rec("a", tenant_id="t9"),
        '{"interaction_id": "b", ',
        no_id,
        _rec("c", feedback={"rating": 9}),
        _rec("d", messages=[{"role": "robot", "content": "x"}]),
        _rec("e", timestamp="yesterday"),
        "   ",
        "[1]",
        _rec("f"),
    ])
    res = import_file("native", path, tenant_id="fallback")
    assert [r["interaction_id"] for r in res.records] == ["a", "f"]
    assert res.records[0]["tenant_id"] == "t9"  # a record's own tenant wins
    assert res.records[1]["tenant_id"] == "fallback"
    assert res.blank_lines == 1
    reasons = {r["line_no"]: r["reason"] for r in res.rejected}
    assert set(reasons) == {2, 3, 4, 5, 6, 8}
    assert reasons[2].startswith("line 2: invalid JSON")
    assert "interaction_id: Field required" in reasons[3]
    assert "record 'c'" in reasons[4] and "feedback.rating" in reasons[4]
    assert "record 'd'" in reasons[5] and "messages.0.role" in reasons[5]
    assert "record 'e'" in reasons[6] and "timestamp" in reasons[6]
    assert "expected an object" in reasons[8]
    raw = {r["line_no"]: r["raw"] for r in res.rejected}
    assert json.loads(raw[4])["feedback"] == {"rating": 9}


def test_native_parquet_round_trip(tmp_path):
    rows = [
        _rec("p1", turn_index=0, model={"provider": "acme", "name": "bot", "version": "v1"},
             feedback={"rating": 4, "thumbs": "up", "comment": None},
             metadata={"intent": "billing", "language": "en", "tags": ["a", "b"]}),
        _rec("p2", turn_index=1, model={"provider": "acme", "name": "bot", "version": "v2"},
             feedback={"rating": None, "thumbs": "down", "comment": "wrong"},
             metadata={"intent": None, "language": "de", "tags": []}),
        _rec("p3", turn_index=2, model=None, feedback={"rating": 9, "thumbs": None,
                                                      "comment": None}, metadata=None),
    ]
    frame = pl.DataFrame(rows).with_columns(
        pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"))
    path = tmp_path / "native.parquet"
    frame.write_parquet(path)
    res = import_file("native", path)
    assert [r["interaction_id"] for r in res.records] == ["p1", "p2"]
    p1, p2 = res.records
    assert p1["timestamp"] == "2026-11-02T10:00:00Z"
    assert p1["feedback"] == {"rating": 4, "thumbs": "up"}  # NULL struct field = absent
    assert p1["model"] == {"provider": "acme", "name": "bot", "version": "v1"}
    assert p1["metadata"]["tags"] == ["a", "b"]
    assert p2["feedback"] == {"thumbs": "down", "comment": "wrong"}
    assert p2["messages"] == [{"role": "user", "content": "hello"}]
    assert len(res.rejected) == 1
    assert res.rejected[0]["line_no"] == 3 and "feedback.rating" in res.rejected[0]["reason"]
    assert json.loads(res.rejected[0]["raw"])["interaction_id"] == "p3"


# ---- errors and the landing zone ----------------------------------------------------------------

def test_unknown_format_and_missing_file_are_loud(tmp_path):
    with pytest.raises(ValueError) as exc:
        import_file("csv", HH)
    for fmt in FORMATS:
        assert fmt in str(exc.value)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        import_file("native", missing)
    with pytest.raises(IsADirectoryError):
        import_file("native", tmp_path)


def test_import_to_landing_writes_day_folders_and_rejected_lines(tmp_path):
    src = _write_jsonl(tmp_path / "mixed logs.jsonl", [
        _rec("a"),
        _rec("b", timestamp="2026-11-04T23:59:59+02:00"),  # UTC day 2026-11-04
        _rec("c", timestamp="2026-11-05T00:30:00Z"),
        _rec("d", feedback={"rating": 9}),
        "oops",
    ])
    landing = tmp_path / "landing"
    summary = import_to_landing("native", src, landing, "t1", import_time=T0)
    assert summary["accepted"] == 3 and summary["quarantined"] == 2
    assert summary["days"] == {"2026-11-02": 1, "2026-11-04": 1, "2026-11-05": 1}
    files = [Path(f) for f in summary["files"]]
    assert len(files) == 4 and all(f.exists() for f in files)
    assert sorted(f.parent.name for f in files) == ["date=2026-11-02", "date=2026-11-03",
                                                    "date=2026-11-04", "date=2026-11-05"]
    rejected_file = next(f for f in files if "-rejected-" in f.name)
    assert rejected_file.parent.name == "date=2026-11-03"  # the import day
    assert rejected_file.name.startswith("native-mixed_logs-rejected-")
    # native rejected lines land verbatim: ingest rejects them for the same reason
    lines = rejected_file.read_text(encoding="utf-8").splitlines()
    assert lines == [json.dumps(_rec("d", feedback={"rating": 9})), "oops"]
    day4 = next(f for f in files if f.parent.name == "date=2026-11-04")
    rec = json.loads(day4.read_text(encoding="utf-8"))
    assert rec["interaction_id"] == "b" and rec["tenant_id"] == "t1"
    assert not list(landing.rglob(".*.tmp"))


def test_import_to_landing_wraps_foreign_rejects_so_ingest_quarantines_them(tmp_path):
    src = _write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
    ])
    summary = import_to_landing("openai-chat", src, tmp_path / "landing", import_time=T0)
    assert (summary["accepted"], summary["quarantined"]) == (1, 1)
    rejected_file = Path(next(f for f in summary["files"] if "-rejected-" in f))
    (line,) = rejected_file.read_text(encoding="utf-8").splitlines()
    env = json.loads(line)["import_rejected"]
    assert env["line_no"] == 2 and "no assistant turn" in env["reason"]
    assert json.loads(env["raw"]) == {"messages": [{"role": "user", "content": "no answer"}]}
    with pytest.raises(RecordError, match="interaction_id"):
        validate_record(json.loads(line))


def test_import_to_landing_real_hh_rlhf(tmp_path):
    summary = import_to_landing("hh-rlhf", HH, tmp_path / "landing", "lab", import_time=T0,
                                timestamp=T0)
    assert summary["accepted"] == 2354 and summary["quarantined"] == 0
    (f,) = summary["files"]
    assert Path(f).parent.name == "date=2026-11-03"
    assert Path(f).name.startswith("hh-rlhf-test-")
    assert sum(1 for _ in open(f, encoding="utf-8")) == 2354


def test_landing_source_name_is_safe():
    assert landing_source_name("oasst", "/x/en_100_tree.jsonl") == "oasst-en_100_tree"
    assert landing_source_name("hh-rlhf", "test.jsonl.gz") == "hh-rlhf-test"
    long = landing_source_name("native", "ä" * 200 + ".jsonl")
    assert len(long) <= 55 and set(long) <= set("native-_")


def test_records_without_a_time_get_the_file_mtime_whenever_imported(tmp_path):
    import os
    src = tmp_path / "pairs.jsonl"
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        src.write_text("".join(next(fh) for _ in range(3)), encoding="utf-8")
    chats = _write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    mtime = datetime(2025, 6, 30, 23, 59, 58, tzinfo=UTC)
    for p in (src, chats):
        os.utime(p, (mtime.timestamp() + 0.7, mtime.timestamp() + 0.7))
    runs = []
    for when in (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 9, tzinfo=UTC)):
        land = tmp_path / f"landing-{when.date()}"
        runs.append((import_to_landing("hh-rlhf", src, land, import_time=when),
                     import_to_landing("openai-chat", chats, land, import_time=when)))
    for hh, oai in runs:
        assert hh["days"] == {"2025-06-30": 3} and oai["days"] == {"2025-06-30": 1}
    ids = [[r["interaction_id"] for r in import_file("hh-rlhf", src).records] for _ in range(2)]
    assert ids[0] == ids[1]
    rec = import_file("hh-rlhf", src).records[0]
    assert rec["timestamp"] == "2025-06-30T23:59:58Z"
    # an explicit timestamp wins
    rec = import_file("openai-chat", chats, timestamp=T0).records[0]
    assert rec["timestamp"] == "2026-11-03T12:00:00Z"
    summary = import_to_landing("openai-chat", chats, tmp_path / "l2", timestamp=T0)
    assert summary["days"] == {"2026-11-03": 1}
    with pytest.raises(TypeError, match="timestamp"):
        import_file("hh-rlhf", src, timestamp="2026-01-01")


def test_reimporting_touched_content_gives_identical_records(tmp_path):
    """A file downloaded again or touched has a new mtime; its records must still come out the
    same (the first import's timestamp is registered by content), so ingest drops them as exact
    duplicates instead of quarantining them as conflicts."""
    import os
    src = tmp_path / "pairs.jsonl"
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        src.write_text("".join(next(fh) for _ in range(3)), encoding="utf-8")
    land = tmp_path / "landing"
    os.utime(src, (datetime(2025, 6, 30, 12, tzinfo=UTC).timestamp(),) * 2)
    first = import_to_landing("hh-rlhf", src, land)
    os.utime(src, (datetime(2026, 3, 4, 9, tzinfo=UTC).timestamp(),) * 2)  # touched
    second = import_to_landing("hh-rlhf", src, land)
    assert first["days"] == second["days"] == {"2025-06-30": 3}

    def records(summary):
        return [json.loads(line) for f in summary["files"] for line in open(f, encoding="utf-8")]

    assert records(first) == records(second)
    # new content registers its own timestamp (the mtime of its first import)
    src.write_text(src.read_text() + src.read_text().splitlines(keepends=True)[0])
    os.utime(src, (datetime(2026, 3, 4, 9, tzinfo=UTC).timestamp(),) * 2)
    third = import_to_landing("hh-rlhf", src, land)
    assert third["days"] == {"2026-03-04": 4}
    assert len(list((land / "_imports").glob("*.json"))) == 2
    # the registry is not a landing day
    from ml.landing import list_partitions
    assert list_partitions(land) == ["2025-06-30", "2026-03-04"]


# ---- issue 8: ids never collide across files, and import says what ingest will do -------------


def _split(tmp_path: Path, parts: int) -> list[Path]:
    """The hh-rlhf sample cut in ``parts`` files, each called test.jsonl.gz (like the real
    splits) in its own folder."""
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        lines = fh.readlines()
    out = []
    for k in range(parts):
        p = tmp_path / f"split{k}" / "test.jsonl.gz"
        p.parent.mkdir()
        with gzip.open(p, "wt", encoding="utf-8") as fh:
            fh.writelines(lines[k::parts])
        out.append(p)
    return out


def test_same_named_files_never_share_an_id_and_ingest_keeps_every_pair(tmp_path):
    from ml.ingest import ingest_files
    from ml.landing import list_files
    land = tmp_path / "landing"
    summaries = [import_to_landing("hh-rlhf", p, land, timestamp=T0) for p in _split(tmp_path, 4)]
    assert sum(s["accepted"] for s in summaries) == 2354
    # each import saw the earlier ones' files of the same day: no shared key
    for s in summaries:
        o = s["ingest_outlook"]
        assert o["in_other_landing_files"] == {"exact": 0, "conflicting": 0}
        assert o["new"] == s["accepted"] - o["duplicates_in_import"]["exact"]
    res = ingest_files(list_files(land, "2026-11-03"), "2026-11-03", b"k")
    dup_reasons = [r for r in res.quarantined["reason"].to_list() if "duplicate" in r]
    assert dup_reasons == []
    assert res.interactions.height + res.stats["exact_duplicates"] == 2354
    assert res.interactions.height == sum(s["ingest_outlook"]["new"] for s in summaries)


def test_import_outlook_counts_copies_conflicts_and_ingested_ids(tmp_path):
    import duckdb
    land = tmp_path / "landing"
    src = tmp_path / "a.jsonl"
    rec = {"interaction_id": "x1", "session_id": "s", "timestamp": "2026-11-03T10:00:00Z",
           "response": "hello"}
    lines = [rec, rec, {**rec, "response": "changed"}, {**rec, "interaction_id": "x2"},
             {**rec, "interaction_id": "x3"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    wh = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(wh))
    con.execute("CREATE TABLE interactions (tenant_id VARCHAR, interaction_id VARCHAR)")
    con.execute("INSERT INTO interactions VALUES ('default', 'x3'), ('other', 'x2')")
    con.close()
    first = import_to_landing("native", src, land, warehouse=wh)["ingest_outlook"]
    assert first["duplicates_in_import"] == {"exact": 1, "conflicting": 1}
    assert first["already_ingested"] == 1  # x3 of tenant default; x2 is another tenant's
    assert first["new"] == 2  # x1 (first copy) and x2
    # the same file again: every record is in another landing file of the day
    again = import_to_landing("native", src, land, warehouse=wh)["ingest_outlook"]
    assert again["in_other_landing_files"] == {"exact": 3 + 1, "conflicting": 1}
    assert again["new"] == 0


def test_import_to_landing_creates_no_future_day_and_quarantines_those_records(tmp_path):
    """Issue 9 item 4: a record timestamped in the future (beyond the clock-skew tolerance after
    now) or before the first landing day creates no day folder: it is rejected with
    its reason, kept in the import day's rejected file, and ingest quarantines it with that
    reason (nothing dropped silently)."""
    from ml.ingest import ingest_files

    src = _write_jsonl(tmp_path / "clock.jsonl", [
        _rec("ok"),
        _rec("ahead", timestamp="2031-01-01T00:00:00Z"),
        _rec("old", timestamp="1999-12-31T23:00:00Z"),
    ])
    landing = tmp_path / "landing"
    summary = import_to_landing("native", src, landing, "t1", import_time=T0)
    assert (summary["accepted"], summary["quarantined"]) == (1, 2)
    assert summary["timestamp_rejected"] == 2
    assert summary["days"] == {"2026-11-02": 1}
    assert sorted(p.name for p in landing.iterdir() if p.name.startswith("date=")) == [
        "date=2026-11-02", "date=2026-11-03"]
    rejected = Path(next(f for f in summary["files"] if "-rejected-" in f))
    envs = [json.loads(ln)["import_rejected"] for ln in rejected.read_text().splitlines()]
    assert [json.loads(e["raw"])["interaction_id"] for e in envs] == ["ahead", "old"]
    assert "timestamp 2031-01-01T00:00:00+00:00 is in the future" in envs[0]["reason"]
    assert "before the first landing day 2000-01-01" in envs[1]["reason"]
    res = ingest_files([rejected], "2026-11-03", b"k", workers=0,
                       now=datetime(2026, 11, 3, 12, tzinfo=UTC))
    assert res.interactions.height == 0 and res.quarantined.height == 2
    assert all("is in the future" in r or "before the first landing day" in r
               for r in res.quarantined["reason"].to_list())


def test_timestamp_problem_allows_clock_skew_only():
    from datetime import timedelta

    from ml.landing import FUTURE_TOLERANCE, timestamp_problem

    assert timestamp_problem(T0 + FUTURE_TOLERANCE, now=T0) is None  # clock skew: accepted
    assert "is in the future" in timestamp_problem(T0 + FUTURE_TOLERANCE + timedelta(seconds=1),
                                                   now=T0)
    assert timestamp_problem(datetime(2000, 1, 1, tzinfo=UTC), now=T0) is None
    assert "before the first landing day" in timestamp_problem(
        datetime(1999, 12, 31, 23, 59, tzinfo=UTC), now=T0)
