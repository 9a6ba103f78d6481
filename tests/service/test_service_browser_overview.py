"""A real browser (Debian's chromium, headless, driven by Playwright) opens the overview from the
navigation, sees an open alert and acknowledges it; the store records who."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from servicekit import PASSWORD, LiveServer
from test_service_browser import ARGS, CHROMIUM

from store.alerts import get_alert, record_alert
from store.db import session_scope

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
pytestmark = pytest.mark.browser


def test_reviewer_opens_the_overview_and_acknowledges_an_alert(sqlite_world, app_factory,
                                                                tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (apt chromium)"
    shots = DOCS_IMG if os.environ.get("LEARNLOOP_SCREENSHOTS") == "1" else tmp_path
    with session_scope(sqlite_world.url) as s:
        alert, _ = record_alert(
            s, kind="review_queue_stalled", severity="warning",
            message="Review queue stalled: 4 item(s) pending, the oldest for 80 h",
            details={"pending": 4}, dedupe_key="review_queue_stalled:health_sensor",
            source="health_sensor", throttle_s=3600)
        aid = alert.id
    with LiveServer(app_factory(sqlite_world)) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            page.set_default_timeout(15_000)
            page.goto(f"{live.url}/login")
            page.fill("input[name=username]", "bob")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live.url}/")
            page.click("nav >> text=Overview")
            expect(page).to_have_url(re.compile(r"/overview$"))
            expect(page.get_by_test_id("no-model")).to_contain_text("No model yet")
            expect(page.get_by_test_id("alerts-open")).to_have_text("1")
            row = page.locator(f'tr[data-testid="alert-row"][data-alert-id="{aid}"]')
            expect(row).to_contain_text("Review queue stalled: 4 item(s) pending")
            page.screenshot(path=str(shots / "overview.png"), full_page=True)
            row.get_by_role("button", name="Acknowledge").click()
            expect(page.locator(".flash.ok")).to_contain_text(f"Alert #{aid} acknowledged.")
            expect(page.get_by_test_id("alerts-open")).to_have_text("0")
            expect(page.get_by_test_id(f"acknowledged-by-{aid}")).to_contain_text("by bob")
        finally:
            browser.close()
    with session_scope(sqlite_world.url) as s:
        a = get_alert(s, aid)
        assert (a.status, a.acknowledged_by) == ("acknowledged", "bob")
    assert (shots / "overview.png").stat().st_size > 10_000
