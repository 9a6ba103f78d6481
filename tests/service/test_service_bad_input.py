"""Bad input never gets a 500 nor a partial write (issue 8, item 6), against a live uvicorn server.

The bodies are sent as raw bytes: a lone surrogate (``"\\ud800"`` in JSON), a 5,000-digit
integer, JSON nested 50,000 deep, NaN/Infinity. Every answer must itself be valid UTF-8 JSON and
must not echo the unencodable value.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from servicekit import LiveServer, auth
from test_service_collector import landed, record

from ml import landing
from store import collector_keys
from store.db import session_scope

DEEP = b"[" * 50_000 + b"]" * 50_000
HUGE = b"9" * 5000


def _enc(rec: dict) -> bytes:
    return json.dumps(rec).encode()


def _batch(*parts: bytes) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def _json(r: httpx.Response) -> dict:
    """The answer decodes as strict UTF-8 JSON (no surrogate escapes came back)."""
    body = r.content.decode("utf-8")  # raises on anything that is not UTF-8
    assert "\\ud8" not in body.lower() and "\\udc" not in body.lower(), body[:300]
    return json.loads(body)


@pytest.fixture()
def live_collector(sqlite_world, app_factory):
    with session_scope(sqlite_world.url) as s:
        key = collector_keys.create_key(s, "acme").key
    with LiveServer(app_factory(sqlite_world)) as live, \
            httpx.Client(base_url=live.url, timeout=60,
                         headers={"X-API-Key": key, "Content-Type": "application/json"}) as c:
        yield c, sqlite_world.settings.landing


def _no_tmp(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_lone_surrogates_are_rejected_per_record_naming_the_field(live_collector):
    c, root = live_collector
    good1 = _enc(record(1, day="2026-11-20"))
    good2 = _enc(record(2, day="2026-11-22"))
    # the bad records fall on a later day than the first good one: before the fix the first
    # day's file was already on disk when the 500 came
    in_extra = _enc(record(3, day="2026-11-21", note="NOTE")).replace(b'"NOTE"', b'"x\\ud800y"')
    in_id = _enc(record(4, day="2026-11-21")).replace(b'"int-4"', b'"int-4\\udc00"')
    in_key = _enc(record(5, day="2026-11-21", metadata={"tags": ["a"], "K": 1})
                  ).replace(b'"K"', b'"\\ud83d"')
    in_msg = _enc(record(6, day="2026-11-21")).replace(b"question 6", b"question \\ud800")
    r = c.post("/v1/interactions", content=_batch(good1, in_extra, in_id, in_key, in_msg, good2))
    assert r.status_code == 200, r.text
    body = _json(r)
    assert (body["accepted"], body["rejected"]) == (2, 4)
    res = body["results"]
    assert [x["accepted"] for x in res] == [True, False, False, False, False, True]
    assert res[1]["interaction_id"] == "int-3" and res[1]["reason"].startswith("note:")
    assert "surrogate" in res[1]["reason"]
    assert res[2]["interaction_id"] is None and res[2]["reason"].startswith("interaction_id:")
    assert res[3]["reason"].startswith("metadata: a key") and "surrogate" in res[3]["reason"]
    assert res[4]["reason"].startswith("messages.0.content:")
    assert set(landed(root)) == {"int-1", "int-2"}
    _no_tmp(root)


def test_huge_integers_and_non_finite_numbers_are_rejected_per_record(live_collector):
    c, root = live_collector
    huge = _enc(record(1, latency_ms=7)).replace(b'"latency_ms": 7', b'"latency_ms": ' + HUGE)
    huge_extra = _enc(record(2, extra={"n": 7})).replace(b'"n": 7', b'"n": -' + HUGE)
    nan = _enc(record(3, latency_ms=7)).replace(b'"latency_ms": 7', b'"latency_ms": NaN')
    inf = _enc(record(4, tokens={"prompt": 1})).replace(b'"prompt": 1', b'"prompt": 1e999')
    r = c.post("/v1/interactions", content=_batch(huge, huge_extra, nan, inf,
                                                   _enc(record(5))))
    assert r.status_code == 200, r.text
    res = _json(r)["results"]
    assert [x["accepted"] for x in res] == [False, False, False, False, True]
    assert res[0]["reason"].startswith("latency_ms:") and "5,000 digits" in res[0]["reason"]
    assert res[1]["reason"].startswith("extra.n:")
    assert res[2]["reason"].startswith("latency_ms:") and "NaN" in res[2]["reason"]
    assert res[3]["reason"].startswith("tokens.prompt:")
    assert set(landed(root)) == {"int-5"}
    # the whole body one huge number: still a 400 about the body, not a 500
    lone = c.post("/v1/interactions", content=HUGE)
    assert lone.status_code == 400 and "5,000 digits" in _json(lone)["detail"]


def test_deep_nesting_is_a_400_or_a_rejected_record(live_collector):
    c, root = live_collector
    r = c.post("/v1/interactions", content=DEEP)
    assert r.status_code == 400, r.text
    assert "nested too deeply" in _json(r)["detail"]
    inner = c.post("/v1/interactions", content=_batch(
        _enc(record(1, extra=7)).replace(b'"extra": 7', b'"extra": ' + b"[" * 500 + b"]" * 500),
        _enc(record(2))))
    assert inner.status_code == 200, inner.text
    res = _json(inner)["results"]
    assert res[0]["accepted"] is False and res[0]["reason"].startswith("extra")
    assert "nested deeper than" in res[0]["reason"] and res[1]["accepted"] is True
    assert set(landed(root)) == {"int-2"}


def test_a_failed_landing_write_writes_no_day_at_all(live_collector):
    """Day 2's folder cannot be created (a file stands in its place): the answer is 503 and day
    1's file, which comes first, is not written either; the retry after the fix lands both."""
    c, root = live_collector
    root.mkdir(parents=True, exist_ok=True)
    blocker = root / "date=2026-11-21"
    blocker.write_text("not a folder")
    recs = [record(1, day="2026-11-20"), record(2, day="2026-11-21")]
    r = c.post("/v1/interactions", content=json.dumps(recs).encode())
    assert r.status_code == 503, r.text
    assert "nothing was written" in _json(r)["detail"]
    assert landing.list_files(root, "2026-11-20") == []
    _no_tmp(root)
    blocker.unlink()
    again = c.post("/v1/interactions", content=json.dumps(recs).encode())
    assert again.status_code == 200 and _json(again)["accepted"] == 2
    assert set(landed(root)) == {"int-1", "int-2"}


# ---- the JSON API --------------------------------------------------------------------------------
@pytest.fixture()
def live_api(sqlite_world, app_factory):
    with LiveServer(app_factory(sqlite_world)) as live, \
            httpx.Client(base_url=live.url, timeout=60,
                         headers={**auth(sqlite_world.tokens["ann"]),
                                  "Content-Type": "application/json"}) as c:
        yield c, sqlite_world


def test_api_lone_surrogate_in_a_note_is_a_422_naming_the_field(live_api):
    c, w = live_api
    item = w.items["sample"]
    r = c.post(f"/api/v1/items/{item}/decision",
               content=b'{"decision": "approve", "version": 1, "note": "ok \\ud800"}')
    assert r.status_code == 422, r.text
    detail = _json(r)["detail"]
    assert any(d["loc"][-1] == "note" for d in detail), detail
    batch = c.post("/api/v1/decisions", content=(
        b'{"decisions": [{"item_id": %d, "decision": "approve", "version": 1,'
        b' "note": "\\udfff"}]}' % item))
    assert batch.status_code == 422 and "note" in json.dumps(_json(batch)["detail"])
    tags = c.post(f"/api/v1/items/{item}/tags",
                  content=b'{"version": 1, "add": ["\\ud800x"]}')
    assert tags.status_code == 422
    _json(tags)
    # nothing was decided
    assert c.get(f"/api/v1/items/{item}").json()["version"] == 1


def test_api_huge_numbers_and_deep_bodies_are_400(live_api):
    c, w = live_api
    item = w.items["sample"]
    for body in (b'{"decision": "approve", "version": ' + HUGE + b"}", DEEP,
                 b'{"decision": "approve", "version": NaN}'):
        r = c.post(f"/api/v1/items/{item}/decision", content=body)
        assert r.status_code in (400, 422), (r.status_code, r.text[:200])
        _json(r)
