"""Two reviewers decide the same item at the same moment against a real uvicorn server."""

from __future__ import annotations

import threading

import httpx
from servicekit import LiveServer, auth
from sqlalchemy import func, select

from store.db import session_scope
from store.models import ReviewEvent, ReviewItem


def _race(base_url: str, item_id: int, contenders: list[tuple[str, dict]]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(contenders))
    out: list[httpx.Response | BaseException | None] = [None] * len(contenders)

    def go(k: int, token: str, body: dict) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as c:
            req = c.build_request("POST", f"/api/v1/items/{item_id}/decision", json=body,
                                  headers=auth(token))
            barrier.wait()
            try:
                out[k] = c.send(req)
            except httpx.HTTPError as exc:  # reported below, never swallowed
                out[k] = exc

    threads = [threading.Thread(target=go, args=(k, tok, body))
               for k, (tok, body) in enumerate(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in out:
        assert isinstance(r, httpx.Response), f"request failed: {r!r}"
    return out  # type: ignore[return-value]


def test_two_reviewers_same_item_one_wins_one_conflicts(world, app_factory):
    app = app_factory(world)
    ids = [world.items[k] for k in ("sample", "sample2", "error", "error2")]
    with LiveServer(app) as live:
        for item_id in ids:
            responses = _race(live.url, item_id, [
                (world.tokens["ann"], {"decision": "approve", "version": 1, "note": "ann"}),
                (world.tokens["bob"], {"decision": "reject", "version": 1, "note": "bob"}),
            ])
            codes = sorted(r.status_code for r in responses)
            assert codes == [200, 409], [r.text for r in responses]
            winner = next(r for r in responses if r.status_code == 200).json()
            loser = next(r for r in responses if r.status_code == 409).json()
            assert loser["current_version"] == 2 and "someone else" in loser["detail"]
            with session_scope(world.url) as s:
                item = s.get(ReviewItem, item_id)
                events = s.scalars(select(ReviewEvent).where(
                    ReviewEvent.item_id == item_id, ReviewEvent.action == "decide")).all()
                assert len(events) == 1  # exactly one decision recorded
                assert (item.version, item.status) == (2, winner["status"])
                assert events[0].actor == item.decided_by == events[0].note
    with session_scope(world.url) as s:
        n = s.scalar(select(func.count()).select_from(ReviewEvent)
                     .where(ReviewEvent.action == "decide"))
    assert n == len(ids)
