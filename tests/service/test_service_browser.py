"""A real browser (Debian's chromium, headless, driven by Playwright) reviews three items.

Signs in, approves a sample with the keyboard shortcut, edits another sample by typing into the
textarea (the diff updates live), confirms an error, then checks the store. Saves the queue and
item screenshots that docs/reviewer-guide.md shows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from servicekit import PASSWORD, LiveServer
from sqlalchemy import select

from store.db import session_scope
from store.models import ReviewEvent, ReviewItem

CHROMIUM = os.environ.get("LEARNLOOP_CHROMIUM", "/usr/bin/chromium")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
# screenshots refresh the reviewer guide only when asked (LEARNLOOP_SCREENSHOTS=1), so a test run
# leaves the work tree clean
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def test_reviewer_signs_in_approves_edits_and_confirms(sqlite_world, app_factory, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = DOCS_IMG if os.environ.get("LEARNLOOP_SCREENSHOTS") == "1" else tmp_path

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (apt chromium)"
    ids = sqlite_world.items
    shots.mkdir(parents=True, exist_ok=True)
    edited = ("Open the sign-in page and click 'Forgot password'. We e-mail you a link that "
              "is valid for 30 minutes; follow it to choose a new password.")
    with LiveServer(app_factory(sqlite_world)) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            page.set_default_timeout(15_000)
            page.goto(f"{live.url}/")
            expect(page).to_have_url(re.compile(r"/login\?next="))
            page.fill("input[name=username]", "ann")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page.get_by_test_id("queue-total")).to_have_text("4")
            page.screenshot(path=str(shots / "reviewer-queue.png"), full_page=True)

            # approve a sample with the keyboard shortcut `a`
            page.click(f'tr[data-item-id="{ids["sample2"]}"] a')
            expect(page.get_by_test_id("item-status")).to_have_text("pending")
            page.keyboard.press("a")
            expect(page.locator(".flash.ok")).to_contain_text(f"Item {ids['sample2']} approved")

            # edit another sample: type into the textarea, the diff follows, save edit & approve
            page.goto(f"{live.url}/items/{ids['sample']}")
            area = page.get_by_test_id("final-response")
            area.fill("")
            area.type(edited, delay=0)
            expect(page.get_by_test_id("diff").locator("ins").first).to_be_visible()
            expect(page.get_by_test_id("diff")).to_contain_text("choose a new password")
            page.fill("#note", "clearer steps")
            page.screenshot(path=str(shots / "reviewer-item.png"), full_page=True)
            page.click('button[value="edit"]')
            expect(page.locator(".flash.ok")).to_contain_text(
                f"Item {ids['sample']} edited and approved")

            # confirm an error
            page.goto(f"{live.url}/items/{ids['error']}")
            page.click('button[value="confirm"]')
            expect(page.locator(".flash.ok")).to_contain_text(
                f"Item {ids['error']} confirmed as an error")
            expect(page.get_by_test_id("progress-today")).to_have_text("3")
        finally:
            browser.close()

    with session_scope(sqlite_world.url) as s:
        got = {k: s.get(ReviewItem, v) for k, v in ids.items()}
        assert got["sample2"].status == "approved"
        assert got["sample2"].final_response == got["sample2"].proposed_response
        assert got["sample"].status == "edited" and got["sample"].final_response == edited
        assert got["error"].status == "confirmed"
        assert got["error2"].status == got["globex"].status == "pending"
        events = s.scalars(select(ReviewEvent).where(ReviewEvent.action == "decide")
                           .order_by(ReviewEvent.id)).all()
        assert [(e.item_id, e.actor, e.after["status"]) for e in events] == [
            (ids["sample2"], "ann", "approved"), (ids["sample"], "ann", "edited"),
            (ids["error"], "ann", "confirmed")]
        assert events[1].note == "clearer steps"
    for name in ("reviewer-queue.png", "reviewer-item.png"):
        assert (shots / name).stat().st_size > 10_000


def test_no_error_found_item_is_left_out_of_batches_and_asked_as_is_the_reply_fine(
        sqlite_world, app_factory):
    """A "no error found" calibration item: "all on page" leaves it unticked, its page asks
    whether the reply is fine, and the `r` shortcut records "the reply is fine" (dismissed)."""
    from playwright.sync_api import expect, sync_playwright

    from store import repo

    with session_scope(sqlite_world.url) as s:
        clean, _ = repo.create_item(
            s, kind="error", dedup_key="clean-1", tenant_id="acme", interaction_id="int-c1",
            messages=[{"role": "user", "content": "Which plan includes SSO?"}],
            original_response="SSO is part of the Enterprise plan.", category=None,
            auditor="rules", source="auditor", tags=["auditor:rules", "calibration",
                                                     "no_error_found"],
            explanation="No error found by the auditor (calibration sample).",
            extra={"verdict": "no error found", "is_error": False})
        clean_id = clean.id
    with LiveServer(app_factory(sqlite_world)) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{live.url}/login")
            page.fill("input[name=username]", "ann")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page.get_by_test_id("queue-total")).to_have_text("5")
            row = page.locator(f'tr[data-item-id="{clean_id}"]')
            expect(row.get_by_test_id("no-error-found")).to_have_text("no error found")
            page.check("[data-select-all]")
            expect(page.locator("[data-selected-count]")).to_have_text("4 selected")
            expect(row.locator('input[name="selected"]')).not_to_be_checked()
            row.locator("a").first.click()
            expect(page.get_by_test_id("no-error-found")).to_contain_text(
                "The auditor found no error in this reply. Is the reply fine?")
            expect(page.locator('button[data-key="r"]')).to_contain_text("Reply is fine (dismiss)")
            page.keyboard.press("r")
            expect(page.locator(".flash.ok")).to_contain_text(
                f"Item {clean_id} dismissed: the reply is fine")
        finally:
            browser.close()
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, clean_id).status == "dismissed"


def test_back_link_with_a_tab_stays_on_the_site_in_chromium(sqlite_world, app_factory):
    """``?back=/%09/evil.example/phish``: chromium itself resolves the page's back links."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (apt chromium)"
    item = sqlite_world.items["sample"]
    with LiveServer(app_factory(sqlite_world)) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{live.url}/login")
            page.fill("input[name=username]", "ann")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live.url}/")
            page.goto(f"{live.url}/items/{item}?back=/%09/evil.example/phish")
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            backs = page.eval_on_selector_all("input[name=back]", "els => els.map(e => e.value)")
        finally:
            browser.close()
    assert hrefs and all(h.startswith(live.url + "/") for h in hrefs), hrefs
    assert backs and set(backs) == {"/"}, backs
