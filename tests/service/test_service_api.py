"""JSON API on SQLite and PostgreSQL: items, decisions, conflicts, tags, events, tenants, admin."""

from __future__ import annotations

import pytest
from servicekit import auth, csrf_of, sign_in
from sqlalchemy import func, select

from store.db import session_scope
from store.models import ReviewEvent, ReviewItem


def test_requires_authentication(client):
    assert client.get("/api/v1/items").status_code == 401
    r = client.get("/api/v1/items", headers=auth("llr_not-a-real-token"))
    assert r.status_code == 401 and "invalid" in r.json()["detail"]


def test_list_filter_sort_paginate(client, world):
    h = auth(world.tokens["ann"])
    body = client.get("/api/v1/items", headers=h).json()
    assert body["total"] == 4  # ann sees acme only: not the globex item
    assert {i["tenant_id"] for i in body["items"]} == {"acme"}
    errors = client.get("/api/v1/items", params={"kind": "error"}, headers=h).json()
    assert [i["id"] for i in errors["items"]] == [world.items["error"], world.items["error2"]]
    sev = client.get("/api/v1/items", params={"sort": "severity"}, headers=h).json()["items"]
    # the sample without a severity of its own sorts with its parent error (high)
    assert [i["id"] for i in sev] == [world.items[k] for k in ("error", "sample", "sample2",
                                                                "error2")]
    conf = client.get("/api/v1/items", params={"sort": "confidence", "kind": "error"},
                      headers=h).json()["items"]
    assert [i["confidence"] for i in conf] == [0.91, 0.4]
    page2 = client.get("/api/v1/items", params={"limit": 3, "offset": 3}, headers=h).json()
    assert page2["total"] == 4 and len(page2["items"]) == 1
    tagged = client.get("/api/v1/items", params={"tag": "onboarding"}, headers=h).json()
    assert [i["id"] for i in tagged["items"]] == [world.items["error"]]
    by_cat = client.get("/api/v1/items", params={"category": "refusal"}, headers=h).json()
    assert [i["id"] for i in by_cat["items"]] == [world.items["error2"]]
    by_src = client.get("/api/v1/items", params={"source": "human"}, headers=h).json()
    assert [i["id"] for i in by_src["items"]] == [world.items["sample2"]]
    admin_all = client.get("/api/v1/items", headers=auth(world.tokens["root"])).json()
    assert admin_all["total"] == 5
    only_globex = client.get("/api/v1/items", params={"tenant": "globex"},
                             headers=auth(world.tokens["root"])).json()
    assert [i["id"] for i in only_globex["items"]] == [world.items["globex"]]


def test_get_item_has_conversation(client, world):
    r = client.get(f"/api/v1/items/{world.items['sample']}", headers=auth(world.tokens["ann"]))
    assert r.status_code == 200
    item = r.json()
    assert item["messages"][1]["role"] == "user"
    assert item["original_response"] == "Please contact support."
    assert item["proposed_response"].startswith("Open the sign-in page")
    assert item["version"] == 1 and item["status"] == "pending"


def test_decide_approve_edit_and_event(client, world):
    h = auth(world.tokens["ann"])
    r = client.post(f"/api/v1/items/{world.items['sample']}/decision", headers=h,
                    json={"decision": "approve", "version": 1, "note": "good"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["version"]) == ("approved", 2)
    assert r.json()["final_response"].startswith("Open the sign-in page")
    r = client.post(f"/api/v1/items/{world.items['sample2']}/decision", headers=h,
                    json={"decision": "edit", "version": 1, "final_response": "Yes, as CSV."})
    assert (r.json()["status"], r.json()["final_response"]) == ("edited", "Yes, as CSV.")
    r = client.post(f"/api/v1/items/{world.items['error']}/decision", headers=h,
                    json={"decision": "confirm", "version": 1})
    assert r.json()["status"] == "confirmed"
    # a decided item leaves the queue
    pending = client.get("/api/v1/items", headers=h).json()
    assert [i["id"] for i in pending["items"]] == [world.items["error2"]]
    with session_scope(world.url) as s:
        ev = s.scalars(select(ReviewEvent).where(ReviewEvent.action == "decide")
                       .order_by(ReviewEvent.id)).all()
        assert [(e.actor, e.after["status"]) for e in ev] == [
            ("ann", "approved"), ("ann", "edited"), ("ann", "confirmed")]
        assert ev[0].note == "good" and ev[0].before["status"] == "pending"
    me = client.get("/api/v1/me", headers=h).json()
    assert me["progress"] == {"today": 3, "total": 3, "remaining": 1}


def test_stale_version_is_409_and_writes_nothing(client, world):
    url = f"/api/v1/items/{world.items['sample']}/decision"
    first = client.post(url, headers=auth(world.tokens["ann"]),
                        json={"decision": "approve", "version": 1})
    second = client.post(url, headers=auth(world.tokens["bob"]),
                         json={"decision": "reject", "version": 1})
    assert first.status_code == 200
    assert second.status_code == 409
    assert second.json()["current_version"] == 2 and "someone else" in second.json()["detail"]
    with session_scope(world.url) as s:
        item = s.get(ReviewItem, world.items["sample"])
        assert (item.status, item.decided_by) == ("approved", "ann")
        n = s.scalar(select(func.count()).select_from(ReviewEvent)
                     .where(ReviewEvent.item_id == item.id, ReviewEvent.action == "decide"))
        assert n == 1


def test_invalid_decisions_are_422(client, world):
    h = auth(world.tokens["ann"])
    r = client.post(f"/api/v1/items/{world.items['error']}/decision", headers=h,
                    json={"decision": "edit", "version": 1, "final_response": "x"})
    assert r.status_code == 422 and "not valid for a error item" in r.json()["detail"]
    r = client.post(f"/api/v1/items/{world.items['sample']}/decision", headers=h,
                    json={"decision": "edit", "version": 1})
    assert r.status_code == 422 and "edited reply" in r.json()["detail"]


@pytest.mark.parametrize("field,size", [("note", 2001), ("final_response", 20_001)])
def test_input_limits(client, world, field, size):
    body = {"decision": "edit", "version": 1, "final_response": "ok", field: "x" * size}
    r = client.post(f"/api/v1/items/{world.items['sample']}/decision",
                    headers=auth(world.tokens["ann"]), json=body)
    assert r.status_code == 422
    assert field in str(r.json()["detail"]) and "at most" in str(r.json()["detail"])
    with session_scope(world.url) as s:
        assert s.get(ReviewItem, world.items["sample"]).status == "pending"


def test_tag_limits_and_untag(client, world):
    h = auth(world.tokens["ann"])
    url = f"/api/v1/items/{world.items['sample']}/tags"
    too_long = client.post(url, headers=h, json={"version": 1, "add": ["t" * 65]})
    assert too_long.status_code == 422
    r = client.post(url, headers=h, json={"version": 1, "add": ["billing", "faq"]})
    assert r.status_code == 200 and r.json()["tags"] == ["billing", "faq"]
    r = client.post(url, headers=h, json={"version": 2, "remove": ["billing"]})
    assert r.json()["tags"] == ["faq"] and r.json()["version"] == 3
    stale = client.post(url, headers=h, json={"version": 2, "add": ["x"]})
    assert stale.status_code == 409
    # tags filter the queue; nothing is deleted
    listed = client.get("/api/v1/items", params={"tag": "faq"}, headers=h).json()
    assert [i["id"] for i in listed["items"]] == [world.items["sample"]]


def test_batch_reports_each_item(client, world):
    h = auth(world.tokens["ann"])
    client.post(f"/api/v1/items/{world.items['error2']}/decision", headers=auth(world.tokens["bob"]),
                json={"decision": "dismiss", "version": 1})
    r = client.post("/api/v1/decisions", headers=h, json={"decisions": [
        {"item_id": world.items["sample"], "decision": "approve", "version": 1},
        {"item_id": world.items["error"], "decision": "reject", "version": 1},
        {"item_id": world.items["error2"], "decision": "confirm", "version": 1},  # bob was first
        {"item_id": world.items["globex"], "decision": "confirm", "version": 1},  # not ann's
        {"item_id": world.items["sample2"], "decision": "confirm", "version": 1},  # wrong kind
    ]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["code"] for x in res] == ["ok", "ok", "conflict", "not_found", "invalid"]
    assert [x["status"] for x in res[:2]] == ["approved", "dismissed"]
    assert r.json()["decided"] == 2 and r.json()["conflicts"] == 1
    with session_scope(world.url) as s:
        assert s.get(ReviewItem, world.items["globex"]).status == "pending"
        assert s.get(ReviewItem, world.items["sample2"]).status == "pending"
        assert s.get(ReviewItem, world.items["error2"]).decided_by == "bob"


def test_tenant_isolation(client, world):
    zed, ann = auth(world.tokens["zed"]), auth(world.tokens["ann"])
    acme_item = world.items["sample"]
    assert [i["id"] for i in client.get("/api/v1/items", headers=zed).json()["items"]] == [
        world.items["globex"]]
    assert client.get("/api/v1/items", params={"tenant": "acme"}, headers=zed).json()["total"] == 0
    r = client.get(f"/api/v1/items/{acme_item}", headers=zed)
    assert r.status_code == 404  # another tenant's item is reported missing
    assert r.json() == client.get("/api/v1/items/999999", headers=zed).json() | {
        "detail": f"review item {acme_item} not found"}
    assert client.post(f"/api/v1/items/{acme_item}/decision", headers=zed,
                       json={"decision": "approve", "version": 1}).status_code == 404
    assert client.post(f"/api/v1/items/{acme_item}/tags", headers=zed,
                       json={"version": 1, "add": ["x"]}).status_code == 404
    assert client.get(f"/api/v1/items/{world.items['globex']}", headers=ann).status_code == 404
    # events: each reviewer sees only their tenants' events
    client.post(f"/api/v1/items/{acme_item}/decision", headers=ann,
                json={"decision": "approve", "version": 1})
    zed_events = client.get("/api/v1/events", headers=zed).json()["events"]
    assert {e["tenant_id"] for e in zed_events} == {"globex"}
    ann_events = client.get("/api/v1/events", headers=ann).json()["events"]
    assert {e["tenant_id"] for e in ann_events} == {"acme"}
    assert any(e["action"] == "decide" for e in ann_events)
    with session_scope(world.url) as s:
        assert s.get(ReviewItem, acme_item).tags == []


def test_events_cursor(client, world):
    h = auth(world.tokens["root"])
    first = client.get("/api/v1/events", params={"limit": 2}, headers=h).json()
    assert len(first["events"]) == 2
    rest = client.get("/api/v1/events", params={"after_id": first["next_after_id"]},
                      headers=h).json()
    ids = [e["id"] for e in first["events"] + rest["events"]]
    assert ids == sorted(ids) and len(ids) == 5  # one 'created' event per seeded item
    empty = client.get("/api/v1/events", params={"after_id": rest["next_after_id"]},
                       headers=h).json()
    assert empty == {"events": [], "next_after_id": rest["next_after_id"]}


def test_admin_endpoints(client, world):
    r = client.post("/api/v1/admin/reviewers", headers=auth(world.tokens["ann"]),
                    json={"username": "eve", "password": "password-123", "tenants": ["acme"]})
    assert r.status_code == 403
    assert client.get("/api/v1/admin/reviewers", headers=auth(world.tokens["ann"])).status_code == 403
    h = auth(world.tokens["root"])
    r = client.post("/api/v1/admin/reviewers", headers=h,
                    json={"username": "eve", "password": "password-123", "tenants": ["globex"]})
    assert r.status_code == 201, r.text
    token = r.json()["api_token"]
    assert client.get("/api/v1/me", headers=auth(token)).json()["tenants"] == ["globex"]
    dup = client.post("/api/v1/admin/reviewers", headers=h,
                      json={"username": "eve", "password": "password-123", "tenants": ["x"]})
    assert dup.status_code == 422 and "already exists" in dup.json()["detail"]
    names = [r["username"] for r in client.get("/api/v1/admin/reviewers", headers=h).json()]
    assert names == ["ann", "bob", "eve", "root", "zed"]
    assert all("password" not in str(r) for r in client.get("/api/v1/admin/reviewers", headers=h).json())
    k = client.post("/api/v1/admin/collector-keys", headers=h, json={"tenant_id": "acme"})
    assert k.status_code == 201 and k.json()["key"].startswith("llc_")
    keys = client.get("/api/v1/admin/collector-keys", headers=h).json()
    assert keys[0]["tenant_id"] == "acme" and "key" not in keys[0]
    assert client.post("/api/v1/admin/collector-keys", headers=auth(world.tokens["ann"]),
                       json={"tenant_id": "acme"}).status_code == 403


def test_rotated_token_replaces_the_old_one(client, world):
    old = world.tokens["ann"]
    new = client.post("/api/v1/me/token", headers=auth(old)).json()["api_token"]
    assert client.get("/api/v1/me", headers=auth(old)).status_code == 401
    assert client.get("/api/v1/me", headers=auth(new)).json()["username"] == "ann"


def test_session_cookie_auth_needs_csrf_header_for_writes(client, world):
    assert sign_in(client, "ann").status_code == 303
    assert client.get("/api/v1/me").json()["username"] == "ann"
    url = f"/api/v1/items/{world.items['sample']}/decision"
    r = client.post(url, json={"decision": "approve", "version": 1})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    token = csrf_of(client.get("/").text)
    r = client.post(url, json={"decision": "approve", "version": 1},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200


def test_oversized_api_body_is_413(client, world):
    big = b'{"decision": "approve", "version": 1, "note": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    r = client.post(f"/api/v1/items/{world.items['sample']}/decision", content=big,
                    headers={**auth(world.tokens["ann"]), "Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]


def test_admin_manages_reviewers_and_every_change_is_audited(client, world):
    from store.models import ConfigHistory

    h, ann = auth(world.tokens["root"]), auth(world.tokens["ann"])
    for method, path, body in [
            ("PATCH", "/api/v1/admin/reviewers/bob", {"active": False}),
            ("POST", "/api/v1/admin/reviewers/bob/password", {"password": "new-password-1"}),
            ("POST", "/api/v1/admin/reviewers/bob/token", None),
            ("POST", "/api/v1/admin/collector-keys/1/revoke", None),
            ("GET", "/api/v1/admin/progress", None), ("GET", "/api/v1/admin/audit", None)]:
        r = client.request(method, path, headers=ann, json=body)
        assert r.status_code == 403, (path, r.text)  # reviewers are not admins
    # deactivate: bob's token stops working; reactivate: it works again
    r = client.patch("/api/v1/admin/reviewers/bob", headers=h, json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False
    assert client.get("/api/v1/me", headers=auth(world.tokens["bob"])).status_code == 401
    assert sign_in(client, "bob").status_code == 401
    assert client.patch("/api/v1/admin/reviewers/bob", headers=h,
                        json={"active": True}).json()["active"] is True
    assert client.get("/api/v1/me", headers=auth(world.tokens["bob"])).status_code == 200
    # role and tenants
    r = client.patch("/api/v1/admin/reviewers/bob", headers=h, json={"tenants": ["globex"]})
    assert r.json()["tenants"] == ["globex"]
    items = client.get("/api/v1/items", headers=auth(world.tokens["bob"])).json()["items"]
    assert [i["tenant_id"] for i in items] == ["globex"]
    bad = client.patch("/api/v1/admin/reviewers/bob", headers=h, json={"tenants": []})
    assert bad.status_code == 422 and "at least one tenant" in bad.json()["detail"]
    assert client.patch("/api/v1/admin/reviewers/bob", headers=h,
                        json={"role": "admin"}).json()["role"] == "admin"
    last = client.patch("/api/v1/admin/reviewers/root", headers=h, json={"active": False})
    assert last.status_code == 200  # bob is an admin now, so root is not the last one
    h = auth(world.tokens["bob"])
    last = client.patch("/api/v1/admin/reviewers/bob", headers=h, json={"active": False})
    assert last.status_code == 422 and "last active admin" in last.json()["detail"]
    assert client.patch("/api/v1/admin/reviewers/root", headers=h,
                        json={"active": True}).status_code == 200
    h = auth(world.tokens["root"])
    # password: the old one stops working, the new one signs in; the API token is replaced too
    r = client.post("/api/v1/admin/reviewers/ann/password", headers=h,
                    json={"password": "brand-new-pass"})
    assert r.status_code == 200 and r.json()["api_token"].startswith("llr_")
    assert sign_in(client, "ann").status_code == 401
    assert sign_in(client, "ann", "brand-new-pass").status_code == 303
    assert client.get("/api/v1/me", headers=auth(world.tokens["ann"])).status_code == 401
    reset_token = r.json()["api_token"]
    assert client.get("/api/v1/me", headers=auth(reset_token)).json()["username"] == "ann"
    r = client.post("/api/v1/admin/reviewers/ann/password", headers=h,
                    json={"password": "brand-new-pass", "keep_token": True})
    assert r.status_code == 200 and r.json()["api_token"] is None
    assert client.get("/api/v1/me", headers=auth(reset_token)).status_code == 200
    short = client.post("/api/v1/admin/reviewers/ann/password", headers=h, json={"password": "x"})
    assert short.status_code == 422
    # token rotation by an admin
    new = client.post("/api/v1/admin/reviewers/zed/token", headers=h).json()["api_token"]
    assert client.get("/api/v1/me", headers=auth(world.tokens["zed"])).status_code == 401
    assert client.get("/api/v1/me", headers=auth(new)).json()["username"] == "zed"
    # unknown reviewer / key
    assert client.patch("/api/v1/admin/reviewers/nobody", headers=h,
                        json={"active": False}).status_code == 404
    assert client.post("/api/v1/admin/collector-keys/999/revoke", headers=h).status_code == 404
    # collector key revocation
    key = client.post("/api/v1/admin/collector-keys", headers=h, json={"tenant_id": "acme"}).json()
    rec = {"interaction_id": "r-1", "session_id": "s", "timestamp": "2026-11-20T10:00:00Z",
           "response": "hi", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/interactions", headers={"X-API-Key": key["key"]},
                       json=rec).status_code == 200
    r = client.post(f"/api/v1/admin/collector-keys/{key['id']}/revoke", headers=h)
    assert r.status_code == 200 and r.json()["active"] is False
    assert client.post("/v1/interactions", headers={"X-API-Key": key["key"]},
                       json=rec).status_code == 401
    # the audit trail: who changed what, never a secret
    audit = client.get("/api/v1/admin/audit", headers=h).json()["entries"]
    seen = [(e["key"], e["changed_by"], e["new_value"]) for e in audit]
    assert ("reviewer:bob", "root", {"active": False}) in seen
    assert ("reviewer:bob", "root", {"active": True}) in seen
    assert ("reviewer:bob", "root", {"role": "reviewer", "tenants": ["globex"]}) in seen
    assert ("reviewer:bob", "root", {"role": "admin", "tenants": ["globex"]}) in seen
    assert ("reviewer:root", "root", {"active": False}) in seen
    assert ("reviewer:root", "bob", {"active": True}) in seen
    assert ("reviewer:ann", "root", {"password": "changed", "api_token": "rotated"}) in seen
    assert ("reviewer:ann", "root", {"password": "changed"}) in seen
    assert ("reviewer:zed", "root", {"api_token": "rotated"}) in seen
    assert (f"collector_key:{key['id']}", "root", {"active": False}) in seen
    dump = str(audit)
    assert "brand-new-pass" not in dump and new not in dump and key["key"] not in dump
    assert reset_token not in dump
    with session_scope(world.url) as s:
        # refused changes (422/404) wrote nothing
        assert s.scalar(select(func.count()).select_from(ConfigHistory)) == len(audit)


def test_admin_progress_endpoint(client, world):
    ann = auth(world.tokens["ann"])
    client.post(f"/api/v1/items/{world.items['error']}/decision", headers=ann,
                json={"decision": "confirm", "version": 1})
    rows = {r["username"]: r for r in client.get("/api/v1/admin/progress",
                                                 headers=auth(world.tokens["root"])).json()}
    assert (rows["ann"]["today"], rows["ann"]["total"]) == (1, 1)
    assert rows["ann"]["remaining"] == {"acme": 3} and rows["zed"]["remaining"] == {"globex": 1}
    assert rows["root"]["remaining"] == {"acme": 3, "globex": 1}
    assert rows["root"]["remaining_total"] == 4 and rows["bob"]["today"] == 0


def test_api_approve_with_changed_text_is_edit_and_approve(client, world):
    h = auth(world.tokens["ann"])
    r = client.post(f"/api/v1/items/{world.items['sample']}/decision", headers=h,
                    json={"decision": "approve", "version": 1, "final_response": "Changed."})
    assert (r.json()["status"], r.json()["final_response"]) == ("edited", "Changed.")
    r = client.post("/api/v1/decisions", headers=h, json={"decisions": [
        {"item_id": world.items["sample2"], "decision": "approve", "version": 1,
         "final_response": "Batch text."}]})
    assert r.json()["results"][0]["status"] == "edited"
    with session_scope(world.url) as s:
        assert s.get(ReviewItem, world.items["sample2"]).final_response == "Batch text."
    r = client.post(f"/api/v1/items/{world.items['error']}/decision", headers=h,
                    json={"decision": "confirm", "version": 1, "final_response": "nope"})
    assert r.status_code == 422 and "sample items only" in r.json()["detail"]
