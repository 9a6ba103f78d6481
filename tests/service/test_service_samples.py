"""Samples (filters, bulk tags, statistics) and dataset versions through the JSON API and the web
app, on a real store (the API on SQLite and PostgreSQL), over real HTTP (the app's test client)."""

from __future__ import annotations

import io
import os
import re
import zipfile
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from servicekit import auth, csrf_of, sign_in
from sqlalchemy import func, select

from store import datasets, repo
from store.db import session_scope
from store.models import ReviewEvent, ReviewItem

# name -> (tenant, quality, intent, category, source, interaction_at, tags)
EXTRA = {
    "low": ("acme", 0.15, "billing", "refusal", "retrieval", datetime(2025, 3, 1, 9, tzinfo=UTC),
            ["faq"]),
    "mid": ("acme", 0.55, "billing", "wrong_answer", "retrieval",
            datetime(2025, 3, 2, 9, tzinfo=UTC), []),
    "high": ("acme", 0.95, "login", "refusal", "llm:openai", datetime(2025, 3, 3, 9, tzinfo=UTC),
             []),
    "g": ("globex", 0.5, "billing", "refusal", "retrieval", datetime(2025, 3, 2, 9, tzinfo=UTC),
          ["faq"]),
}


def add_samples(url: str) -> dict[str, int]:
    ids = {}
    with session_scope(url) as s:
        for name, (tenant, q, intent, cat, src, at, tags) in EXTRA.items():
            item, _ = repo.create_item(
                s, kind="sample", dedup_key=f"x-{name}", tenant_id=tenant,
                interaction_id=f"i-{name}", messages=[{"role": "user", "content": f"q {name}"}],
                original_response="old", proposed_response=f"proposal {name}", source=src,
                category=cat, quality=q, intent=intent, interaction_at=at, tags=tags)
            ids[name] = item.id
    with session_scope(url) as s:
        repo.decide(s, ids["mid"], decision="approve", expected_version=1, actor="bob")
        repo.decide(s, ids["high"], decision="reject", expected_version=1, actor="bob")
    return ids


def _ids(body) -> list[int]:
    return sorted(i["id"] for i in body["items"])


# ---- JSON API ------------------------------------------------------------------------------------
def test_api_lists_and_filters_samples_in_the_callers_tenants(client, world):
    ids = add_samples(world.url)
    ann, root = auth(world.tokens["ann"]), auth(world.tokens["root"])
    everything = client.get("/api/v1/samples", headers=ann).json()
    # ann: acme samples of any status (the two seeded ones too), no error item, no globex
    assert everything["total"] == 5
    assert {i["tenant_id"] for i in everything["items"]} == {"acme"}
    assert {i["kind"] for i in everything["items"]} == {"sample"}
    assert client.get("/api/v1/samples", headers=root).json()["total"] == 6

    def ids_of(**params):
        r = client.get("/api/v1/samples", params=params, headers=ann)
        assert r.status_code == 200, r.text
        return _ids(r.json())

    assert ids_of(quality_min=0.5) == sorted([ids["mid"], ids["high"]])
    assert ids_of(quality_min=0.1, quality_max=0.6, intent="billing") == \
        sorted([ids["low"], ids["mid"]])
    assert ids_of(category=["refusal", "wrong_answer"], source="retrieval") == \
        sorted([ids["low"], ids["mid"]])
    assert ids_of(since="2025-03-02", until="2025-03-02") == [ids["mid"]]
    assert ids_of(status=["approved", "rejected"]) == sorted([ids["mid"], ids["high"]])
    assert ids_of(tag="faq") == [ids["low"]]
    assert ids_of(tenant="globex") == []  # not ann's tenant
    assert ids_of(ids=[ids["g"], ids["low"]]) == [ids["low"]]
    body = client.get("/api/v1/samples", params={"sort": "-quality", "limit": 2,
                                                 "intent": "billing,login"}, headers=ann).json()
    assert [i["id"] for i in body["items"]] == [ids["high"], ids["mid"]] and body["total"] == 3
    assert body["filter"] == {"intent": ["billing", "login"]}
    first = body["items"][0]
    assert first["quality"] == 0.95 and first["intent"] == "login"
    assert first["interaction_at"] == "2025-03-03T09:00:00Z"


def test_api_stats_of_the_filtered_samples(client, world):
    add_samples(world.url)
    ann, root = auth(world.tokens["ann"]), auth(world.tokens["root"])
    st = client.get("/api/v1/samples/stats", headers=ann).json()
    assert st["total"] == 5 and st["by_tenant"] == {"acme": 5}
    assert st["by_status"] == {"pending": 3, "approved": 1, "rejected": 1, "edited": 0}
    assert st["approval_rate"] == 0.5 and st["decided"] == 2
    assert st["by_intent"] == {"billing": 2, "unknown": 2, "login": 1}
    assert st["by_source"] == {"retrieval": 2, "human": 1, "llm:openai": 1, "teacher": 1}
    assert st["by_tag"] == {"faq": 1}
    hist = {b["bin"]: b["count"] for b in st["quality"]["histogram"]}
    assert (hist["0.1-0.2"], hist["0.5-0.6"], hist["0.9-1.0"]) == (1, 1, 1)
    assert sum(hist.values()) == 3 and st["quality"]["unknown"] == 2
    assert st["quality"]["median"] == pytest.approx(0.55)
    billing = client.get("/api/v1/samples/stats", params={"intent": "billing"},
                         headers=root).json()
    assert billing["total"] == 3 and billing["by_tenant"] == {"acme": 2, "globex": 1}
    assert billing["filter"] == {"intent": ["billing"]}


@pytest.mark.parametrize("params, field", [
    ({"quality_min": 0.8, "quality_max": 0.2}, "quality_min"),
    ({"since": "2025-02-30"}, "since"),
    ({"until": "next week"}, "until"),
    ({"since": "2025-03-05", "until": "2025-03-01"}, "since"),
])
def test_api_bad_filters_are_422_naming_the_field(client, world, params, field):
    for path in ("/api/v1/samples", "/api/v1/samples/stats"):
        r = client.get(path, params=params, headers=auth(world.tokens["ann"]))
        assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}:"), r.text


def test_api_out_of_range_values_are_422_naming_the_field(client, world):
    h = auth(world.tokens["ann"])
    for params, field in (({"quality_min": 2}, "quality_min"), ({"status": "confirmed"}, "status"),
                          ({"ids": "x"}, "ids"), ({"sort": "random"}, "sort")):
        r = client.get("/api/v1/samples", params=params, headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][:2] == ["query", field]


def test_api_bulk_tag_by_ids_and_by_filter(client, world):
    ids = add_samples(world.url)
    ann = auth(world.tokens["ann"])
    r = client.post("/api/v1/samples/tags", headers=ann, json={
        "tag": "billing-review", "action": "add", "filter": {"intent": ["billing"]}})
    assert r.status_code == 200, r.text
    # ann's tenants only: globex's billing sample is not matched
    assert r.json() == {"tag": "billing-review", "action": "tag", "matched": 2, "changed": 2,
                        "unchanged": 0, "skipped": 0}
    again = client.post("/api/v1/samples/tags", headers=ann, json={
        "tag": "billing-review", "action": "add", "filter": {"intent": ["billing"]}}).json()
    assert (again["matched"], again["changed"], again["unchanged"]) == (2, 0, 2)
    tagged = client.get("/api/v1/samples", params={"tag": "billing-review"}, headers=ann).json()
    assert _ids(tagged) == sorted([ids["low"], ids["mid"]])
    assert {i["version"] for i in tagged["items"]} == {2, 3}  # mid was approved first

    # by ids: another tenant's id matches nothing; remove from one
    r = client.post("/api/v1/samples/tags", headers=ann, json={
        "tag": "billing-review", "action": "remove", "ids": [ids["low"], ids["g"]]}).json()
    assert (r["action"], r["matched"], r["changed"]) == ("untag", 1, 1)
    with session_scope(world.url) as s:
        events = [(e.item_id, e.action, e.actor) for e in s.scalars(
            select(ReviewEvent).where(ReviewEvent.action.in_(("tag", "untag")))
            .order_by(ReviewEvent.id))]
        assert events == [(ids["low"], "tag", "ann"), (ids["mid"], "tag", "ann"),
                          (ids["low"], "untag", "ann")]
        assert s.get(ReviewItem, ids["g"]).tags == ["faq"]
    # the events are in the audit trail of the API
    trail = client.get("/api/v1/events", headers=ann).json()["events"]
    assert [e["action"] for e in trail][-3:] == ["tag", "tag", "untag"]
    # an admin's empty filter needs all: true
    root = auth(world.tokens["root"])
    r = client.post("/api/v1/samples/tags", headers=root,
                    json={"tag": "v1", "action": "add", "filter": {}})
    assert r.status_code == 422 and "all: true" in r.json()["detail"]
    r = client.post("/api/v1/samples/tags", headers=root, json={"tag": "v1", "action": "add"})
    assert r.status_code == 422
    r = client.post("/api/v1/samples/tags", headers=root,
                    json={"tag": "v1", "action": "add", "all": True})
    assert r.json()["changed"] == 6


@pytest.mark.parametrize("body, words", [
    ({"tag": "   ", "action": "add", "ids": [1]}, "tag: tag '   ' is empty"),
    ({"tag": "x" * 65, "action": "add", "ids": [1]}, "at most 64 characters"),
    ({"tag": "x", "action": "add", "filter": {"quality_min": 0.9, "quality_max": 0.1}},
     "filter.quality_min: 0.9 is above"),
    ({"tag": "x", "action": "add", "filter": {"since": "soon"}}, "filter.since: 'soon' is not"),
    ({"tag": "x", "action": "add", "filter": {"colour": ["red"]}}, "colour"),
    ({"tag": "x", "action": "toggle", "ids": [1]}, "action"),
])
def test_api_bulk_tag_refuses_bad_input_by_name(client, world, body, words):
    r = client.post("/api/v1/samples/tags", headers=auth(world.tokens["ann"]), json=body)
    assert r.status_code == 422 and words in str(r.json()["detail"]), r.text
    with session_scope(world.url) as s:
        assert s.scalar(select(func.count()).select_from(ReviewEvent)
                        .where(ReviewEvent.action.in_(("tag", "untag")))) == 0


def test_api_bulk_tag_with_the_session_cookie_needs_the_csrf_header(client, world):
    sign_in(client, "ann")
    body = {"tag": "x", "action": "add", "ids": [world.items["sample"]]}
    assert client.post("/api/v1/samples/tags", json=body).status_code == 403
    token = csrf_of(client.get("/").text)
    r = client.post("/api/v1/samples/tags", json=body, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["changed"] == 1


# ---- datasets ----------------------------------------------------------------------------------------
HASH = "3f9a0c1d2e4b5a6978d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c"


@pytest.fixture()
def dataset_dir(tmp_path):
    base = tmp_path / "datasets" / "default-v1"
    (base / "hf" / "train").mkdir(parents=True)
    (base / "train.jsonl").write_bytes(b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    (base / "hf" / "train" / "data.arrow").write_bytes(b"ARROW\x00\x01")
    (base / "hf" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (tmp_path / "datasets" / "secret.txt").write_text("not yours")
    return base


def record(url: str, base, **kw) -> None:
    items = [{"item_key": f"sample:{n}", "split": "train" if n < 3 else "validation",
              "prompt_hash": f"p{n}", "example_hash": f"e{n}", "category": "refusal"}
             for n in range(4)]
    fields = dict(path=str(base), n_train=3, n_validation=1, created_by="dagster",
                  exports={"jsonl": "train.jsonl", "hf": "hf", "up": "../secret.txt",
                           "abs": "/etc/hostname", "gone": "missing.jsonl"},
                  counts={"train": {"by_category": {"refusal": 2, "wrong_answer": 1}},
                          "validation": {"by_category": {"refusal": 1}}},
                  stats={"mean_prompt_tokens": 12.5,
                         "category_counts": {"refusal": 3, "wrong_answer": 1}},
                  spec={"min_quality": 0.2})
    fields.update(kw)
    with session_scope(url) as s:
        datasets.record_dataset(s, kind="training", name="default", version_hash=HASH,
                                items=items, **fields)


def test_api_datasets_for_accounts_that_see_every_tenant(client, world, dataset_dir):
    record(world.url, dataset_dir)
    root = auth(world.tokens["root"])
    listed = client.get("/api/v1/datasets", headers=root).json()
    assert [(d["name"], d["version"], d["version_hash"]) for d in listed] == \
        [("default", 1, HASH)]
    assert listed[0]["exports"]["jsonl"] == "train.jsonl" and listed[0]["n_validation"] == 1
    for ref in (HASH[:8], "default@1"):
        one = client.get(f"/api/v1/datasets/{ref}", headers=root)
        assert one.status_code == 200 and one.json()["counts"]["validation"] == \
            {"by_category": {"refusal": 1}}
    assert client.get("/api/v1/datasets/ffff0000", headers=root).status_code == 404
    assert client.get("/api/v1/datasets/abc", headers=root).status_code == 404  # too short
    assert client.get("/api/v1/datasets", params={"kind": "eval_suite"},
                      headers=root).json() == []
    # a reviewer of one tenant: datasets mix every tenant's data
    r = client.get("/api/v1/datasets", headers=auth(world.tokens["ann"]))
    assert r.status_code == 403 and "every tenant" in r.json()["detail"]
    assert client.get(f"/api/v1/datasets/{HASH[:8]}",
                      headers=auth(world.tokens["zed"])).status_code == 403
    assert client.get("/api/v1/datasets").status_code == 401


# ---- web app -------------------------------------------------------------------------------------
@pytest.fixture()
def web(sqlite_world, app_factory):
    with TestClient(app_factory(sqlite_world)) as c:
        yield c


def test_samples_page_filters_and_shows_statistics(web, sqlite_world):
    ids = add_samples(sqlite_world.url)
    assert web.get("/samples", follow_redirects=False).status_code == 303
    sign_in(web, "ann")
    page = web.get("/samples")
    assert page.status_code == 200
    assert 'data-testid="samples-total">5<' in page.text
    assert 'href="/samples"' in page.text  # the nav link
    assert 'data-testid="approval-rate">50%<' in page.text
    assert "proposal g" not in page.text  # globex
    page = web.get("/samples", params={"quality_min": "0.5", "intent": "billing"})
    assert 'data-testid="samples-total">1<' in page.text
    assert f'data-item-id="{ids["mid"]}"' in page.text
    assert 'data-testid="hist-0.5-0.6">1<' in page.text
    assert "quality&gt;=0.5" in page.text or "quality>=0.5" in page.text
    page = web.get("/samples", params={"since": "2025-03-03"})
    assert 'data-testid="samples-total">3<' in page.text  # high + the two created today
    bad = web.get("/samples", params={"quality_min": "0.9", "quality_max": "0.1"})
    assert bad.status_code == 422
    assert "Filter not applied: quality_min: 0.9 is above quality_max 0.1" in bad.text
    bad = web.get("/samples", params={"until": "31/12/2025"})
    assert bad.status_code == 422 and "until: &#39;31/12/2025&#39; is not a date" in bad.text


def _tag_form(web, url="/samples"):
    page = web.get(url)
    back = re.search(r'name="back" value="([^"]*)"', page.text).group(1)
    flt = re.search(r'name="filter" value="([^"]*)"', page.text).group(1)
    return csrf_of(page.text), back.replace("&amp;", "&"), flt.replace("&amp;", "&")


def test_samples_page_tags_the_selected_and_the_matching(web, sqlite_world):
    ids = add_samples(sqlite_world.url)
    sign_in(web, "ann")
    csrf, back, flt = _tag_form(web)
    r = web.post("/samples/tags", data={"csrf_token": csrf, "back": back, "filter": flt,
                                        "tag": "check", "action": "add", "scope": "selected",
                                        "selected": [str(ids["low"]), str(ids["g"])]})
    assert r.status_code == 200  # followed back to the page
    assert "Tag &#39;check&#39; added to 1 of 1 sample(s)" in r.text
    # all matching a filter: quality >= 0.5 in acme
    csrf, back, flt = _tag_form(web, "/samples?quality_min=0.5")
    assert flt == "quality_min=0.5" and back.startswith("/samples?quality_min=0.5")
    r = web.post("/samples/tags", data={"csrf_token": csrf, "back": back, "filter": flt,
                                        "tag": "check", "action": "add", "scope": "matching"})
    assert "Tag &#39;check&#39; added to 2 of 2 sample(s); 0 had it already." in r.text
    with session_scope(sqlite_world.url) as s:
        tagged = sorted(i.id for i in s.scalars(select(ReviewItem)) if "check" in i.tags)
        assert tagged == sorted([ids["low"], ids["mid"], ids["high"]])
    # remove from the matching ones
    r = web.post("/samples/tags", data={"csrf_token": csrf, "back": back, "filter": "tag=check",
                                        "tag": "check", "action": "remove", "scope": "matching"})
    assert "Tag &#39;check&#39; removed from 3 of 3 sample(s)" in r.text
    # refusals: no filter for "matching", nothing selected, a bad tag, no CSRF token
    r = web.post("/samples/tags", data={"csrf_token": csrf, "back": "/samples", "filter": "",
                                        "tag": "check", "action": "add", "scope": "matching"})
    assert "no filter is set, so this would tag every sample" in r.text
    r = web.post("/samples/tags", data={"csrf_token": csrf, "back": "/samples", "filter": "",
                                        "tag": "check", "action": "add", "scope": "selected"})
    assert "Select at least one sample first" in r.text
    r = web.post("/samples/tags", data={"csrf_token": csrf, "back": "/samples",
                                        "tag": "y" * 65, "action": "add", "scope": "selected",
                                        "selected": [str(ids["low"])]})
    assert "65 characters long; the limit is 64" in r.text
    r = web.post("/samples/tags", data={"back": "/samples", "tag": "z", "action": "add",
                                        "scope": "selected", "selected": [str(ids["low"])]})
    assert r.status_code == 403
    r = web.post("/samples/tags", data={"csrf_token": csrf, "back": "/samples",
                                        "filter": "intent=nothing-like-it", "tag": "z",
                                        "action": "add", "scope": "matching"})
    assert "No sample matches: nothing was tagged." in r.text
    with session_scope(sqlite_world.url) as s:
        assert not any("z" in i.tags or "y" * 65 in i.tags for i in s.scalars(select(ReviewItem)))


def test_datasets_pages_are_for_accounts_that_see_every_tenant(web, sqlite_world, dataset_dir):
    record(sqlite_world.url, dataset_dir)
    assert web.get("/datasets", follow_redirects=False).status_code == 303
    sign_in(web, "ann")
    assert 'href="/datasets"' not in web.get("/samples").text
    r = web.get("/datasets")
    assert r.status_code == 403 and "every tenant" in r.text
    assert web.get(f"/datasets/{HASH[:8]}/files/jsonl").status_code == 403
    web.post("/logout", data={"csrf_token": csrf_of(web.get("/samples").text)})
    sign_in(web, "root")
    listing = web.get("/datasets")
    assert listing.status_code == 200 and 'href="/datasets"' in listing.text
    assert HASH[:12] in listing.text and 'data-testid="datasets-total">1<' in listing.text
    assert "refusal 3" in listing.text and "wrong_answer 1" in listing.text  # category mix
    detail = web.get(f"/datasets/{HASH[:6]}")
    assert detail.status_code == 200 and HASH in detail.text
    assert 'data-testid="download-jsonl"' in detail.text and 'data-testid="download-hf"' in \
        detail.text
    assert 'data-testid="download-up"' not in detail.text and "refused" in detail.text
    assert "mean_prompt_tokens" in detail.text and "min_quality" in detail.text
    assert web.get("/datasets/default@1").status_code == 200
    assert web.get("/datasets/default@9").status_code == 404


def test_dataset_downloads_files_and_zipped_folders_and_refuses_escapes(web, sqlite_world,
                                                                       dataset_dir):
    os.symlink(dataset_dir.parent / "secret.txt", dataset_dir / "link.txt")
    (dataset_dir / "hf2").mkdir()
    os.symlink(dataset_dir.parent / "secret.txt", dataset_dir / "hf2" / "sneaky.txt")
    record(sqlite_world.url, dataset_dir,
           exports={"jsonl": "train.jsonl", "hf": "hf", "up": "../secret.txt",
                    "abs": str(dataset_dir.parent / "secret.txt"), "gone": "missing.jsonl",
                    "link": "link.txt", "hf2": "hf2"})
    sign_in(web, "root")
    r = web.get(f"/datasets/{HASH[:8]}/files/jsonl")
    assert r.status_code == 200 and r.content == (dataset_dir / "train.jsonl").read_bytes()
    assert 'filename="default-v1-jsonl-train.jsonl"' in r.headers["content-disposition"]
    r = web.get(f"/datasets/{HASH[:8]}/files/hf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["hf/dataset_dict.json", "hf/train/data.arrow"]
        assert zf.read("hf/train/data.arrow") == b"ARROW\x00\x01"
    for fmt in ("up", "abs", "link", "hf2"):
        r = web.get(f"/datasets/{HASH[:8]}/files/{fmt}")
        assert r.status_code == 403 and "not yours" not in r.text, fmt
        assert "outside the dataset" in r.text
    r = web.get(f"/datasets/{HASH[:8]}/files/gone")
    assert r.status_code == 404 and "missing on the server" in r.text
    r = web.get(f"/datasets/{HASH[:8]}/files/parquet")
    assert r.status_code == 404 and "has no export &#39;parquet&#39;" in r.text
    assert web.get(f"/datasets/{HASH[:8]}/files/..%2F..%2Fsecret.txt").status_code == 404


# ---- the real browser (Debian's chromium, headless, through Playwright) --------------------------
@pytest.mark.browser
def test_reviewer_filters_reads_stats_and_tags_in_the_browser(sqlite_world, app_factory,
                                                              tmp_path, dataset_dir):
    """ann filters the samples page by quality, reads the statistics, tags every matching sample
    and then one selected sample; root opens the datasets page from the nav and downloads an
    export. Saves the screenshot docs/samples.md shows (LEARNLOOP_SCREENSHOTS=1)."""
    from playwright.sync_api import expect, sync_playwright
    from servicekit import PASSWORD, LiveServer
    from test_service_browser import ARGS, CHROMIUM, DOCS_IMG

    ids = add_samples(sqlite_world.url)
    record(sqlite_world.url, dataset_dir)
    shots = DOCS_IMG if os.environ.get("LEARNLOOP_SCREENSHOTS") == "1" else tmp_path
    with LiveServer(app_factory(sqlite_world)) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(15_000)

            def sign_in_as(name: str) -> None:
                page.goto(f"{live.url}/login")
                page.fill("input[name=username]", name)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")

            sign_in_as("ann")
            page.click("nav >> text=Samples")
            expect(page.get_by_test_id("samples-total")).to_have_text("5")
            expect(page.locator("nav >> text=Datasets")).to_have_count(0)
            page.fill("input[name=quality_min]", "0.5")
            page.click("form.filters button[type=submit]")
            expect(page.get_by_test_id("samples-total")).to_have_text("2")
            expect(page.get_by_test_id("approval-rate")).to_have_text("50%")
            expect(page.get_by_test_id("hist-0.9-1.0")).to_have_text("1")
            expect(page.get_by_test_id("hist-0.1-0.2")).to_have_text("0")
            page.screenshot(path=str(shots / "samples.png"), full_page=True)

            page.get_by_test_id("bulk-tag").fill("second-look")
            page.get_by_test_id("tag-matching").click()
            expect(page.locator(".flash.ok")).to_contain_text(
                "Tag 'second-look' added to 2 of 2 sample(s)")
            expect(page.get_by_test_id(f"tags-{ids['high']}")).to_contain_text("second-look")

            page.click("text=clear")
            expect(page.get_by_test_id("samples-total")).to_have_text("5")
            expect(page.get_by_test_id("tag-matching")).to_be_disabled()  # no filter
            page.check(f'tr[data-item-id="{ids["low"]}"] input[name="selected"]')
            expect(page.locator("[data-selected-count]")).to_have_text("1 selected")
            page.get_by_test_id("bulk-tag").fill("urgent")
            page.get_by_test_id("tag-selected").click()
            expect(page.locator(".flash.ok")).to_contain_text("Tag 'urgent' added to 1 of 1")
            expect(page.get_by_test_id(f"tags-{ids['low']}")).to_contain_text("urgent")

            page.click("text=Sign out")
            sign_in_as("root")
            page.click("nav >> text=Datasets")
            expect(page.get_by_test_id("datasets-total")).to_have_text("1")
            page.get_by_test_id("dataset-link").click()
            expect(page.get_by_test_id("dataset-hash")).to_have_text(HASH)
            with page.expect_download() as dl:
                page.get_by_test_id("download-jsonl").click()
            got = dl.value.path().read_bytes()
        finally:
            browser.close()
    assert got == (dataset_dir / "train.jsonl").read_bytes()
    with session_scope(sqlite_world.url) as s:
        tags = {i.id: i.tags for i in s.scalars(select(ReviewItem))}
        events = [(e.item_id, e.action, e.actor) for e in s.scalars(
            select(ReviewEvent).where(ReviewEvent.action == "tag").order_by(ReviewEvent.id))]
    assert tags[ids["mid"]] == ["second-look"] and tags[ids["high"]] == ["second-look"]
    assert tags[ids["low"]] == ["faq", "urgent"]
    assert events == [(ids["mid"], "tag", "ann"), (ids["high"], "tag", "ann"),
                      (ids["low"], "tag", "ann")]
