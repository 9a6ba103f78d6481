"""The review web app: sign-in, CSRF, rate limit, input limits, conflicts, batch, tenants."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from servicekit import PASSWORD, csrf_of, sign_in
from sqlalchemy import select

from store.db import session_scope
from store.models import ReviewEvent, ReviewItem


@pytest.fixture()
def web(sqlite_world, app_factory):
    with TestClient(app_factory(sqlite_world)) as c:
        yield c


def _form(client, item_id):
    page = client.get(f"/items/{item_id}")
    assert page.status_code == 200
    version = int(re.search(r'name="version" value="(\d+)"', page.text).group(1))
    return csrf_of(page.text), version


def test_pages_need_sign_in(web):
    r = web.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert web.get("/items/1", follow_redirects=False).status_code == 303


def test_sign_in_sets_a_hardened_cookie_and_shows_the_queue(web, sqlite_world):
    r = sign_in(web, "ann")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    page = web.get("/")
    assert page.status_code == 200
    assert 'data-testid="queue-total">4<' in page.text  # acme items only
    assert "Please contact support" in page.text and "(empty)" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_secure_cookie_flag_is_configurable(sqlite_world, app_factory):
    with TestClient(app_factory(sqlite_world, cookie_secure=True),
                    base_url="https://testserver") as c:
        r = sign_in(c, "ann")
        assert "secure" in r.headers["set-cookie"].lower()


def test_wrong_password_and_unknown_user_look_the_same(web):
    a = sign_in(web, "ann", "wrong-password")
    b = sign_in(web, "nobody", "wrong-password")
    assert a.status_code == b.status_code == 401
    assert "Wrong username or password" in a.text and "Wrong username or password" in b.text


def test_post_without_csrf_token_is_403(web, sqlite_world):
    page = web.get("/login")
    r = web.post("/login", data={"username": "ann", "password": PASSWORD})
    assert r.status_code == 403 and "CSRF" in r.text
    assert csrf_of(page.text)
    assert sign_in(web, "ann").status_code == 303
    item = sqlite_world.items["sample"]
    r = web.post(f"/items/{item}/decide", data={"decision": "approve", "version": 1})
    assert r.status_code == 403
    r = web.post(f"/items/{item}/decide", data={"decision": "approve", "version": 1,
                                                "csrf_token": "forged"})
    assert r.status_code == 403
    r = web.post("/batch", data={"action": "approve", "selected": [f"{item}:1"]})
    assert r.status_code == 403
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, item).status == "pending"


def test_sign_in_rate_limit_per_username_and_ip(web):
    for _ in range(5):
        assert sign_in(web, "ann", "nope-nope").status_code == 401
    r = sign_in(web, "ann")  # even the right password waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in r.text
    assert sign_in(web, "bob").status_code == 303  # another username is not blocked


def test_sign_in_limit_window_expires(sqlite_world, app_factory):
    app = app_factory(sqlite_world)
    now = [1000.0]
    app.state.ctx.limiter.clock = lambda: now[0]
    with TestClient(app) as c:
        for _ in range(5):
            sign_in(c, "ann", "nope-nope")
        assert sign_in(c, "ann").status_code == 429
        now[0] += 301
        assert sign_in(c, "ann").status_code == 303


def test_approve_edit_confirm_through_forms(web, sqlite_world):
    sign_in(web, "ann")
    ids = sqlite_world.items
    tok, v = _form(web, ids["sample"])
    r = web.post(f"/items/{ids['sample']}/decide", follow_redirects=False,
                 data={"decision": "approve", "version": v, "csrf_token": tok, "note": "fine",
                       "final_response": "Open the sign-in page, click 'Forgot password' and "
                                         "follow the link we e-mail you. The link is valid for "
                                         "30 minutes."})
    assert r.status_code == 303 and r.headers["location"].startswith("/items/")
    tok, v = _form(web, ids["sample2"])
    # approving a changed text is edit-and-approve; CRLF from the textarea is normalised
    web.post(f"/items/{ids['sample2']}/decide",
             data={"decision": "approve", "version": v, "csrf_token": tok,
                   "final_response": "Yes:\r\nBilling > Invoices > Export CSV."})
    tok, v = _form(web, ids["error"])
    web.post(f"/items/{ids['error']}/decide",
             data={"decision": "confirm", "version": v, "csrf_token": tok})
    with session_scope(sqlite_world.url) as s:
        a, b, e = (s.get(ReviewItem, ids[k]) for k in ("sample", "sample2", "error"))
        assert (a.status, b.status, e.status) == ("approved", "edited", "confirmed")
        assert b.final_response == "Yes:\nBilling > Invoices > Export CSV."
        notes = [ev.note for ev in s.scalars(select(ReviewEvent).where(ReviewEvent.action == "decide")
                                              .order_by(ReviewEvent.id))]
        assert notes == ["fine", None, None]
    queue = web.get("/")
    assert 'data-testid="queue-total">1<' in queue.text
    assert 'data-testid="progress-today">3<' in queue.text


def test_stale_form_gets_409_page_naming_who_decided(web, sqlite_world):
    item = sqlite_world.items["sample"]
    sign_in(web, "ann")
    tok, v = _form(web, item)
    with TestClient(web.app) as other:
        sign_in(other, "bob")
        t2, v2 = _form(other, item)
        assert other.post(f"/items/{item}/decide", data={
            "decision": "reject", "version": v2, "csrf_token": t2}).status_code == 200
    r = web.post(f"/items/{item}/decide", data={"decision": "approve", "version": v,
                                                "csrf_token": tok})
    assert r.status_code == 409
    assert "bob decided this item while you were looking at it" in r.text
    assert "<b>bob</b> decided it: <b>rejected</b>" in r.text
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, item).status == "rejected"


def test_stale_form_after_a_tag_change_says_tags_changed_not_decided(web, sqlite_world):
    item = sqlite_world.items["sample"]
    sign_in(web, "ann")
    tok, v = _form(web, item)
    with TestClient(web.app) as other:
        sign_in(other, "bob")
        t2, v2 = _form(other, item)
        assert other.post(f"/items/{item}/tags", data={
            "version": v2, "csrf_token": t2, "add": "billing"}).status_code == 200
    r = web.post(f"/items/{item}/decide", data={"decision": "approve", "version": v,
                                                "csrf_token": tok})
    assert r.status_code == 409
    assert "This item changed while you were looking at it" in r.text
    assert "<b>bob</b> changed its tags (added billing)" in r.text
    assert "decided this item" not in r.text and "decided it:" not in r.text
    assert "and decide again" in r.text  # still pending
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, item).status == "pending"


@pytest.mark.parametrize("field,size,expect", [("note", 2001, "note is 2,001 characters"),
                                               ("final_response", 20_001, "edited reply is")])
def test_form_input_limits_are_422(web, sqlite_world, field, size, expect):
    item = sqlite_world.items["sample"]
    sign_in(web, "ann")
    tok, v = _form(web, item)
    data = {"decision": "edit", "version": v, "csrf_token": tok, "final_response": "ok",
            field: "x" * size}
    r = web.post(f"/items/{item}/decide", data=data)
    assert r.status_code == 422 and expect in r.text
    tag = web.post(f"/items/{item}/tags", data={"version": v, "csrf_token": tok, "add": "t" * 65})
    assert tag.status_code == 422 and "limit is 64" in tag.text
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, item).status == "pending"


def test_batch_approve_and_reject(web, sqlite_world):
    ids = sqlite_world.items
    sign_in(web, "ann")
    tok = csrf_of(web.get("/").text)
    r = web.post("/batch", data={"action": "approve", "csrf_token": tok, "note": "batch",
                                 "selected": [f"{ids['sample']}:1", f"{ids['error']}:1",
                                              f"{ids['globex']}:1"]})
    assert r.status_code == 200
    assert "2 of 3 item(s) approved/confirmed" in r.text
    assert f"Item {ids['globex']}: review item {ids['globex']} not found" in r.text
    r = web.post("/batch", data={"action": "reject", "csrf_token": tok,
                                 "selected": [f"{ids['sample2']}:1", f"{ids['sample']}:1"]})
    assert "1 of 2 item(s) rejected/dismissed" in r.text
    assert f"Item {ids['sample']}: it changed since the queue was loaded" in r.text
    with session_scope(sqlite_world.url) as s:
        got = {k: s.get(ReviewItem, v).status for k, v in ids.items()}
    assert got == {"error": "confirmed", "sample": "approved", "sample2": "rejected",
                   "error2": "pending", "globex": "pending"}


def _no_error_found_item(url, *, tenant="acme", key="clean-1", tags=True):
    """An audit-stage calibration item: an `error` item saying the auditor found no error."""
    from store import repo

    with session_scope(url) as s:
        item, _ = repo.create_item(
            s, kind="error", dedup_key=key, tenant_id=tenant, interaction_id=f"int-{key}",
            messages=[{"role": "user", "content": "Which plan includes SSO?"}],
            original_response="SSO is part of the Enterprise plan.", category=None,
            severity=None, confidence=0.8, auditor="rules", prompt_version="v1",
            source="auditor",
            explanation="No error found by the auditor (calibration sample). Looks correct.",
            tags=["auditor:rules", "calibration", "no_error_found"] if tags else [],
            extra={"verdict": "no error found", "is_error": False})
        return item.id


def test_batch_never_decides_no_error_found_items(web, sqlite_world):
    ids = sqlite_world.items
    clean = _no_error_found_item(sqlite_world.url)
    # recognised by its verdict even when a reviewer has removed the tags
    untagged = _no_error_found_item(sqlite_world.url, key="clean-2", tags=False)
    sign_in(web, "ann")
    queue = web.get("/").text
    # shown apart from flagged errors, and not selectable for a batch
    assert queue.count('data-testid="no-error-found"') == 2
    assert re.search(rf'value="{clean}:1" disabled', queue)
    assert re.search(rf'value="{ids["error"]}:1" aria-label', queue)
    tok = csrf_of(queue)
    for action in ("approve", "reject"):
        r = web.post("/batch", data={"action": action, "csrf_token": tok,
                                     "selected": [f"{clean}:1", f"{untagged}:1"]})
        assert r.status_code == 200
        assert (f"Not decided: items {clean}, {untagged} are &#34;no error found&#34; calibration "
                "items" in r.text), r.text
        assert "confirming means the reply IS wrong" in r.text
        assert "decide each one by itself" in r.text
    # mixed with a flagged error: the error is confirmed, the calibration item stays pending
    r = web.post("/batch", data={"action": "approve", "csrf_token": tok,
                                 "selected": [f"{ids['error']}:1", f"{clean}:1"]})
    assert f"Not decided: item {clean} is a &#34;no error found&#34; calibration item" in r.text
    assert "1 of 1 item(s) approved/confirmed" in r.text
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, clean).status == "pending"
        assert s.get(ReviewItem, untagged).status == "pending"
        assert s.get(ReviewItem, ids["error"]).status == "confirmed"
        assert s.scalars(select(ReviewEvent).where(ReviewEvent.item_id.in_([clean, untagged]),
                                                   ReviewEvent.action == "decide")).all() == []


def test_batch_does_not_reveal_other_tenants_no_error_found_items(web, sqlite_world):
    other = _no_error_found_item(sqlite_world.url, tenant="globex")
    sign_in(web, "ann")
    r = web.post("/batch", data={"action": "approve", "csrf_token": csrf_of(web.get("/").text),
                                 "selected": [f"{other}:1"]})
    assert "Not decided" not in r.text
    assert f"Item {other}: review item {other} not found" in r.text


def test_no_error_found_item_page_asks_whether_the_reply_is_fine(web, sqlite_world):
    ids = sqlite_world.items
    clean = _no_error_found_item(sqlite_world.url)
    sign_in(web, "ann")
    page = web.get(f"/items/{clean}").text
    assert "The auditor found no error in this reply. Is the reply fine?" in page
    assert re.search(r'value="confirm"[^>]*data-key="a">Reply is wrong \(confirm\) <kbd>a</kbd>',
                     page)
    assert re.search(r'value="dismiss"[^>]*data-key="r">Reply is fine \(dismiss\) <kbd>r</kbd>',
                     page)
    assert "Confirm error" not in page
    flagged = web.get(f"/items/{ids['error']}").text
    assert "Confirm error <kbd>a</kbd>" in flagged and "Is the reply fine?" not in flagged
    tok, v = _form(web, clean)
    r = web.post(f"/items/{clean}/decide", data={"decision": "dismiss", "version": v,
                                                  "csrf_token": tok})
    assert f"Item {clean} dismissed: the reply is fine (the auditor was right)." in r.text
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, clean).status == "dismissed"


def test_item_page_shows_conversation_verdict_and_diff(web, sqlite_world):
    sign_in(web, "ann")
    page = web.get(f"/items/{sqlite_world.items['sample']}").text
    assert "How do I reset my password?" in page
    assert "sends the user away" in page  # the parent error's explanation
    assert '<del class="d-del">Please contact support.</del>' in page
    assert '<ins class="d-ins">Open the sign-in page,' in page
    assert "<kbd>a</kbd>" in page and "Keyboard shortcuts" in page


def test_other_tenant_item_page_is_404(web, sqlite_world):
    sign_in(web, "ann")
    r = web.get(f"/items/{sqlite_world.items['globex']}")
    assert r.status_code == 404 and "not found" in r.text
    tok = csrf_of(web.get("/").text)
    r = web.post(f"/items/{sqlite_world.items['globex']}/decide",
                 data={"decision": "confirm", "version": 1, "csrf_token": tok})
    assert r.status_code == 404


def test_queue_filters_sort_and_pages(sqlite_world, app_factory):
    with TestClient(app_factory(sqlite_world, page_size=2)) as c:
        sign_in(c, "root")
        p1 = c.get("/", params={"sort": "severity"}).text
        rows = re.findall(r'data-item-id="(\d+)"', p1)
        assert rows == [str(sqlite_world.items["globex"]), str(sqlite_world.items["error"])]
        assert "page 1 of 3" in p1
        p3 = c.get("/", params={"sort": "severity", "page": 3}).text
        assert len(re.findall(r'data-item-id="(\d+)"', p3)) == 1
        errs = c.get("/", params={"kind": "error", "tenant": "acme"}).text
        assert re.findall(r'data-item-id="(\d+)"', errs) == [
            str(sqlite_world.items["error"]), str(sqlite_world.items["error2"])]


def test_no_open_redirect_after_sign_in(web):
    page = web.get("/login?next=//evil.example/x")
    r = web.post("/login", data={"username": "ann", "password": PASSWORD,
                                 "csrf_token": csrf_of(page.text),
                                 "next": "https://evil.example/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_sign_out(web):
    sign_in(web, "ann")
    tok = csrf_of(web.get("/").text)
    web.post("/logout", data={"csrf_token": tok})
    assert web.get("/", follow_redirects=False).status_code == 303


def test_item_page_shows_auditor_signals(web, sqlite_world):
    from store import repo

    with session_scope(sqlite_world.url) as s:
        item, _ = repo.create_item(
            s, kind="error", dedup_key="e-extra", tenant_id="acme", interaction_id="int-x",
            original_response="<b>hi</b>", category="handoff", severity="high",
            explanation="asked for a human",
            extra={"signals": {"requested_human": True, "thumbs": None}, "answered_by": "rules"})
    sign_in(web, "ann")
    page = web.get(f"/items/{item.id}").text
    assert "requested_human: True" in page and "answered_by" in page and "thumbs" not in page
    assert "&lt;b&gt;hi&lt;/b&gt;" in page and "<b>hi</b>" not in page  # escaped


def test_batch_over_the_cap_is_422_and_decides_nothing(web, sqlite_world):
    sign_in(web, "ann")
    tok = csrf_of(web.get("/").text)
    selected = [f"{sqlite_world.items['sample']}:1"] + [f"{100000 + k}:1" for k in range(200)]
    r = web.post("/batch", data={"action": "approve", "csrf_token": tok, "selected": selected})
    assert r.status_code == 422
    assert "201 items selected; a batch decision takes at most 200" in r.text
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, sqlite_world.items["sample"]).status == "pending"


def test_sign_out_ends_the_session_server_side(web, sqlite_world, app_factory):
    sign_in(web, "ann")
    stolen = web.cookies.get("learnloop_session")
    assert stolen and web.get("/", follow_redirects=False).status_code == 200
    tok = csrf_of(web.get("/").text)
    assert web.post("/logout", data={"csrf_token": tok}, follow_redirects=False).status_code == 303
    with TestClient(web.app) as replay:  # the cookie copied before sign-out, replayed
        replay.cookies.set("learnloop_session", stolen)
        r = replay.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = replay.get("/api/v1/me")
        assert r.status_code == 401
    assert sign_in(web, "ann").status_code == 303  # signing in again works
    assert web.get("/", follow_redirects=False).status_code == 200


def test_deactivation_ends_open_sessions(web, sqlite_world):
    from store import reviewers

    sign_in(web, "ann")
    assert web.get("/", follow_redirects=False).status_code == 200
    with session_scope(sqlite_world.url) as s:
        reviewers.set_active(s, "ann", False, actor="root")
    assert web.get("/", follow_redirects=False).status_code == 303
    with session_scope(sqlite_world.url) as s:
        reviewers.set_active(s, "ann", True, actor="root")
    # reactivation does not revive the old cookie
    assert web.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("host,override,secure", [
    ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False),
    ("0.0.0.0", None, True), ("review.example.com", None, True), ("10.1.2.3", False, False),
    ("127.0.0.1", True, True)])
def test_cookie_is_secure_off_loopback_unless_overridden(sqlite_world, host, override, secure):
    from servicekit import service_settings

    from service.app import create_app

    kw = {} if override is None else {"cookie_secure": override}
    app = create_app(sqlite_world.settings, service_settings(**kw), migrate=False, host=host)
    with TestClient(app, base_url="https://testserver") as c:
        cookie = sign_in(c, "ann").headers["set-cookie"].lower()
    assert ("; secure" in cookie) is secure


def _ids(html):
    return [int(x) for x in re.findall(r'data-item-id="(\d+)"', html)]


def test_item_navigation_follows_the_queue_filter_and_sort(web, sqlite_world):
    ids = sqlite_world.items
    sign_in(web, "root")
    queue = web.get("/", params={"sort": "confidence", "tenant": "acme"}).text
    order = _ids(queue)
    # confidence: error 0.91, its sample (no confidence: the parent's), sample2 0.6, error2 0.4
    assert order == [ids["error"], ids["sample"], ids["sample2"], ids["error2"]]
    back = "/?tenant=acme&sort=confidence&page=1"
    page = web.get(f"/items/{ids['sample']}", params={"back": back}).text
    assert f'href="/items/{ids["sample2"]}?back=' in page and 'data-nav="next"' in page
    prev = re.search(r'href="/items/(\d+)\?back=[^"]*" data-nav="prev"', page).group(1)
    nxt = re.search(r'href="/items/(\d+)\?back=[^"]*" data-nav="next"', page).group(1)
    assert (int(prev), int(nxt)) == (ids["error"], ids["sample2"])
    # after a decision the next item of the same query opens
    tok, v = _form(web, ids["sample"])
    r = web.post(f"/items/{ids['sample']}/decide", follow_redirects=False,
                 data={"decision": "reject", "version": v, "csrf_token": tok, "back": back})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/items/{ids['sample2']}?")
    # a kind filter: neighbours are errors only
    page = web.get(f"/items/{ids['error']}",
                   params={"back": "/?kind=error&tenant=acme&sort=confidence"}).text
    nxt = re.search(r'href="/items/(\d+)\?back=[^"]*" data-nav="next"', page).group(1)
    assert int(nxt) == ids["error2"] and 'data-nav="prev"' not in page


def test_admin_progress_page_and_remaining_count(web, sqlite_world):
    sign_in(web, "ann")
    queue = web.get("/").text
    assert 'data-testid="progress-remaining">4<' in queue  # acme's pending items
    assert web.get("/admin/progress").status_code == 403
    tok, v = _form(web, sqlite_world.items["error"])
    web.post(f"/items/{sqlite_world.items['error']}/decide",
             data={"decision": "confirm", "version": v, "csrf_token": tok})
    assert 'data-testid="progress-remaining">3<' in web.get("/").text
    with TestClient(web.app) as admin:
        sign_in(admin, "root")
        page = admin.get("/admin/progress").text
        assert 'data-testid="today-ann">1<' in page and 'data-testid="total-ann">1<' in page
        assert 'data-testid="remaining-ann">3<' in page  # acme only
        assert 'data-testid="remaining-zed">1<' in page  # globex only
        assert 'data-testid="remaining-root">4<' in page and "acme: 3, globex: 1" in page


def test_offline_api_page_lists_operations(web):
    r = web.get("/docs")
    assert r.status_code == 200
    assert "cdn" not in r.text.lower() and "<script" not in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'data-op="POST /api/v1/items/{item_id}/decision"' in r.text
    assert 'data-op="PATCH /api/v1/admin/reviewers/{username}"' in r.text
    assert 'href="/openapi.json"' in r.text
    assert web.get("/openapi.json").json()["info"]["title"] == "learnloop review service"


PHISH = "/%09/evil.example/phish"  # the query value decodes to "/\t/evil.example/phish"


@pytest.mark.parametrize("nxt", [
    "/\t/evil.example/phish", "/\n/evil.example", "/\r\n/evil.example", "\t//evil.example",
    " //evil.example", "/ /evil.example", "/\x00/evil.example", "/\x0b/evil.example",
    "/\u2028/evil.example", "/\\evil.example", "\\\\evil.example", "//evil.example",
    "https://evil.example/", "javascript:alert(1)", "evil.example",
])
def test_safe_next_refuses_what_a_browser_reads_as_another_site(nxt):
    from urllib.parse import urljoin, urlsplit

    from service.web import _safe_next

    got = _safe_next(nxt)
    assert got == "/"
    # as a browser resolves a link (WHATWG: tab/CR/LF removed, backslash is a slash)
    seen = "".join(ch for ch in got if ch not in "\t\r\n").replace("\\", "/")
    assert urlsplit(urljoin("http://app.example/items/1", seen)).netloc == "app.example"


def test_safe_next_keeps_same_site_paths():
    from service.web import _safe_next

    for ok in ("/", "/?kind=error&page=2", "/items/3?back=%2F", "/?tag=caf%C3%A9", "/?tag=café"):
        assert _safe_next(ok) == ok


def test_item_page_never_links_back_to_another_site(web, sqlite_world):
    sign_in(web, "ann")
    page = web.get(f"/items/{sqlite_world.items['sample']}?back={PHISH}")
    assert page.status_code == 200
    assert re.search(r'<a class="back" href="/">', page.text)
    assert "evil.example" not in page.text


def test_web_ids_are_bounded_and_ascii(web, sqlite_world):
    """Ids over the store's 32-bit range and non-ASCII digits are refused (422), never a 500."""
    sign_in(web, "ann")
    for path in ("/items/9223372036854775808", "/items/2147483648", "/items/0",
                 "/items/%D9%A1"):  # Arabic-Indic digit one
        r = web.get(path)
        assert r.status_code == 422, (path, r.status_code)
        assert "item_id" in r.text
    item = sqlite_world.items["sample2"]
    tok, _ = _form(web, item)
    for version in ("9223372036854775808", "0", "\u0661"):
        r = web.post(f"/items/{item}/decide", follow_redirects=False,
                     data={"decision": "approve", "version": version, "csrf_token": tok})
        assert r.status_code == 422, (version, r.status_code)
        r = web.post(f"/items/{item}/tags", follow_redirects=False,
                     data={"version": version, "add": "x", "csrf_token": tok})
        assert r.status_code == 422, (version, r.status_code)
    for sel in ("\u0661:\u0661", f"{item}:\u0661", "9223372036854775808:1",
                f"{item}:9223372036854775808", f"{item}:0", f" {item}:1"):
        r = web.post("/batch", follow_redirects=False,
                     data={"action": "approve", "selected": [sel], "csrf_token": tok})
        assert r.status_code == 422, (sel, r.status_code)
    with session_scope(sqlite_world.url) as s:
        actions = s.scalars(select(ReviewEvent.action)).all()
    assert actions and "decide" not in actions and "tag" not in actions  # nothing was changed
