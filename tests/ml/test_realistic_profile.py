"""The realistic benchmark profile (ml.demo.realistic) and the residual-PII judge on real text."""

from pathlib import Path

import pytest

from ml.demo.realistic import builtin_corpus, iter_realistic, load_corpus, write_realistic
from ml.pii import scrub_text
from ml.pii_presidio import presidio_findings
from ml.schema import InteractionRecord

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(SHARED)


def test_replies_are_unique_long_and_multi_turn(corpus):
    assert len(corpus.pairs) > 1000  # real question/answer pairs: a reply answers its question
    recs = [r for _, r in iter_realistic(2000, 3, corpus=corpus)]
    answered = {q for q, _ in corpus.pairs}
    assert sum(r["messages"][-1]["content"] in answered for r in recs) > 0.5 * len(recs)
    assert len(recs) == 2000
    replies = [r["response"] for r in recs]
    assert len(set(replies)) == len(replies)  # unique, unlike the demo's templates
    lengths = sorted(len(x) for x in replies)
    assert lengths[len(lengths) // 2] >= 300  # LLM length: several hundred characters
    assert max(r["turn_index"] for r in recs) >= 3
    later = [r for r in recs if r["turn_index"] > 0]
    assert later and all(len(r["messages"]) == 2 + 2 * r["turn_index"] for r in later)
    assert len({r["tenant_id"] for r in recs}) == 5
    for r in recs[:300]:
        InteractionRecord.model_validate(r)
    down = sum(1 for r in recs if r.get("feedback", {}).get("thumbs") == "down")
    assert 0.02 < down / len(recs) < 0.12


def test_same_seed_same_records_and_builtin_corpus_needs_no_files(tmp_path):
    a = [r for _, r in iter_realistic(200, 5)]
    b = [r for _, r in iter_realistic(200, 5)]
    assert a == b and builtin_corpus().source == "builtin"
    paths = write_realistic(tmp_path, 200, 5, days=2)
    assert {p.parent.name for p in paths} == {"date=2026-11-01", "date=2026-11-02"}
    assert sum(len(p.read_text().splitlines()) for p in paths) == 200


def test_bad_arguments_and_missing_corpus_are_named(tmp_path):
    with pytest.raises(ValueError, match="tenants"):
        next(iter_realistic(10, 1, tenants=9))
    with pytest.raises(FileNotFoundError, match="no public sample"):
        load_corpus(tmp_path)


def test_residual_judge_passes_scrubbed_real_text_and_still_finds_leaks(corpus):
    """Real replies quote URLs with long paths and timestamps, years ranges and 9-digit numbers
    (the speed of light): none of it is PII, and the blocking ingest check must not stop on it."""
    texts = [r["response"] for _, r in iter_realistic(1200, 11, corpus=corpus)]
    flagged = [t for t in texts if presidio_findings(scrub_text(t)[0])]
    assert flagged == []
    # the last two were found by the 1M-interaction chain benchmark, not in the first 100k
    for benign in ("The speed of light is 299792458 m/s.", "It ran (1995-2019) 11 times.",
                   "Movies: Dead Man Walking (2089-2101) 26 more",
                   "born in 1985 1923 1950 1948 respectively",
                   "a normal range is 120/80-140/90 for adults", "readings of 125/121-151/97",
                   "Movies (2052-2051) 63",
                   "It happened on April 38, 1998. 1796 \u2013 31 May 1868) was an explorer",
                   "https://www.amazon.com/x/dp/B01B7OYIWE/ref=sr_1_1?qid=1420904010&sr=8-1",
                   # a quarantined raw line holds the record's UUID: its first three groups
                   # pass Luhn (found by the 1M generated chain benchmark)
                   '{"interaction_id": "55525315-4879-9944-5262-2942afa75d1a", "x": 1}'):
        assert presidio_findings(benign) == [], benign
    for leak, kind in (("call me on 415-555-0134", "PHONE"),
                       ("call 2189-2101 26", "PHONE"),  # descending, bare: no range of years
                       ("card 4111 1111 1111 1111", "CREDIT_CARD"),
                       ('"card": "4111-1111-1111-1111"', "CREDIT_CARD"),
                       ("call 555.123.4567 today", "PHONE"),
                       ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc", "SECRET"),
                       ("https://api.example.com/v1?key=sk_live_4eC39HqLyjWDarjtT1zdp7dc", "SECRET"),
                       ("mail ana.silva@example.org", "EMAIL")):
        assert kind in {t for t, _ in presidio_findings(leak)}, leak
