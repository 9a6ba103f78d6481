"""The overview page and its JSON (service/overview.py): champion and challenger from the MLflow
registry, the running and the last decided experiment with their figures, the alerts with their
acknowledgement (web form with CSRF, API with a token or a cookie + X-CSRF-Token)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from servicekit import auth, csrf_of, sign_in
from sqlalchemy import update

from store import deployments
from store.alerts import get_alert, record_alert, resolve
from store.db import session_scope
from store.models import Experiment

FIGURES = {"arms": {"control": {"n": 120, "thumbs_up_rate": 0.61, "mean_rating": 3.9},
                    "treatment": {"n": 118, "thumbs_up_rate": 0.7034, "mean_rating": 4.1}},
           "tests": {"thumbs_up_rate": {"p_value": 0.031, "lift": 0.0934, "significant": True},
                     "mean_rating": {"p_value": 0.2}}}


def _alert(url, key, kind="provider_error_rate", severity="warning", message="m", minutes=0):
    with session_scope(url) as s:
        a, _ = record_alert(s, kind=kind, severity=severity, message=message, details={"n": 1},
                            dedupe_key=key, source="test", throttle_s=3600,
                            now=datetime(2026, 5, 10, tzinfo=UTC) + timedelta(minutes=minutes))
        return a.id


def _experiments(url, model="learnloop-assistant"):
    """A finished (rolled back) experiment and a running one with figures."""
    with session_scope(url) as s:
        old = deployments.start_experiment(s, model_name=model, champion_version="1",
                                           challenger_version="2", stages=[0.1, 0.5],
                                           policy={"primary_metric": "thumbs_up_rate"},
                                           subject_key="user", started_by="ops")
        deployments.finish_experiment(s, old.id, old.version, "rollback",
                                      "the treatment lost on thumbs_up_rate",
                                      {"figures": FIGURES})
        run = deployments.start_experiment(s, model_name=model, champion_version="1",
                                           challenger_version="3", stages=[0.1, 0.5, 1.0],
                                           policy={"primary_metric": "thumbs_up_rate"},
                                           subject_key="session", started_by="ab_sensor")
        deployments.update_result(s, run.id, run.version, {"figures": FIGURES})
        return old.id, run.id


def test_overview_needs_sign_in(client):
    r = client.get("/overview", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2Foverview")
    assert client.get("/api/v1/overview").status_code == 401
    assert client.get("/api/v1/alerts").status_code == 401
    assert client.post("/api/v1/alerts/1/acknowledge").status_code == 401


def test_no_model_yet_and_no_tracking_store_is_created(client, world):
    tracking = world.settings.home / "mlflow.db"
    assert not tracking.exists()
    data = client.get("/api/v1/overview", headers=auth(world.tokens["ann"])).json()
    assert data["model"] == {"name": "learnloop-assistant", "versions": 0, "champion": None,
                             "challenger": None, "latest": None, "error": None,
                             "deployments": []}
    assert data["experiment"] is None and data["last_decided"] is None
    assert data["alerts"] == [] and data["acknowledged"] == []
    sign_in(client, "ann")
    page = client.get("/overview")
    assert page.status_code == 200
    assert 'data-testid="no-model"' in page.text and "No model yet" in page.text
    assert "No experiment running." in page.text and "No open alerts." in page.text
    assert not tracking.exists()
    assert 'href="/overview"' in client.get("/").text  # in the nav of every page


def test_overview_shows_the_models_the_experiments_and_the_alerts(sqlite_world, app_factory):
    from ml.registry import Registry

    w = sqlite_world
    reg = Registry.from_settings(w.settings)
    for src in ("/m/1", "/m/2", "/m/3"):
        reg.register_version(src, None, {"method": "lora"})
    reg.set_alias("champion", "1")
    reg.set_alias("challenger", "3")
    with session_scope(w.url) as s:
        deployments.record_deployment(s, model_name=w.settings.model_name, model_version="1",
                                      alias="champion", action="promote", actor="ops",
                                      reason="first model")
    old_id, run_id = _experiments(w.url)
    first = _alert(w.url, "a", message="9 of 30 provider calls failed", minutes=0)
    second = _alert(w.url, "b", kind="cost_over_budget", severity="critical",
                    message="Training cost of 2026-05 is $120.00", minutes=5)
    acked = _alert(w.url, "c", kind="rollback", message="v2 rolled back", minutes=1)
    gone = _alert(w.url, "d", kind="gate_failed", message="resolved one", minutes=9)
    with session_scope(w.url) as s:
        from store.alerts import acknowledge

        acknowledge(s, acked, "bob")
        resolve(s, gone, "ops")

    with TestClient(app_factory(w)) as c:
        data = c.get("/api/v1/overview", headers=auth(w.tokens["zed"])).json()
        assert (data["model"]["champion"], data["model"]["challenger"]) == ("1", "3")
        assert data["model"]["versions"] == 3 and data["model"]["latest"] == "3"
        assert [(d["alias"], d["model_version"], d["actor"]) for d in
                data["model"]["deployments"]] == [("champion", "1", "ops")]
        assert data["experiment"]["id"] == run_id and data["experiment"]["traffic_split"] == 0.1
        assert data["experiment"]["result"]["figures"] == FIGURES
        assert data["last_decided"]["id"] == old_id
        assert data["last_decided"]["decision"] == "rollback"
        assert [a["id"] for a in data["alerts"]] == [second, first]  # newest first
        assert [a["id"] for a in data["acknowledged"]] == [acked]
        assert data["acknowledged"][0]["acknowledged_by"] == "bob"

        sign_in(c, "zed")  # a reviewer of another tenant: alerts and models belong to none
        page = c.get("/overview").text
    assert re.search(r'data-testid="champion">v1<', page)
    assert re.search(r'data-testid="challenger">v3<', page)
    assert re.search(r'data-testid="traffic-share">10%<', page)
    assert re.search(r'data-testid="experiment-stage">1 of 3<', page)
    assert re.search(r'data-testid="running-control-n">120<', page)
    assert re.search(r'data-testid="running-treatment-primary">0.7034<', page)
    assert re.search(r'data-testid="decided-treatment-n">118<', page)
    assert "p_value 0.031" in page and "lift 0.0934" in page and "significant yes" in page
    assert re.search(r'data-testid="last-decision">rollback<', page)
    assert "the treatment lost on thumbs_up_rate" in page
    rows = re.findall(r'data-testid="alert-row" data-alert-id="(\d+)"', page)
    assert rows == [str(second), str(first)]
    assert f'data-testid="acknowledged-by-{acked}">by bob' in page
    assert "resolved one" not in page


@pytest.mark.parametrize("result", [
    {}, {"figures": None}, {"figures": {"arms": "broken", "tests": []}},
    {"figures": {"arms": {"control": {"n": 3}}, "tests": {"x": {"nested": {"a": 1}}}}},
    {"figures": {"arms": {"treatment": {"n": 2, "thumbs_up_rate": float("nan")}}}},
])
def test_figures_are_rendered_defensively(sqlite_world, app_factory, result):
    w = sqlite_world
    with session_scope(w.url) as s:
        run = deployments.start_experiment(s, model_name=w.settings.model_name,
                                           champion_version="1", challenger_version="2",
                                           stages=[0.2], policy={}, subject_key="user",
                                           started_by="ops")
        if result:
            s.execute(update(Experiment).where(Experiment.id == run.id).values(result=result))
    with TestClient(app_factory(w)) as c:
        sign_in(c, "ann")
        page = c.get("/overview")
    assert page.status_code == 200
    assert re.search(r'data-testid="traffic-share">20%<', page.text)


def test_acknowledge_on_the_page_needs_csrf_and_records_who(sqlite_world, app_factory):
    w = sqlite_world
    aid = _alert(w.url, "k", message="queue stalled")
    with TestClient(app_factory(w)) as c:
        sign_in(c, "ann")
        page = c.get("/overview")
        assert f'data-testid="ack-{aid}"' in page.text
        assert c.post(f"/overview/alerts/{aid}/acknowledge",
                      data={"csrf_token": "forged"}).status_code == 403
        r = c.post(f"/overview/alerts/{aid}/acknowledge",
                   data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/overview"
        after = c.get("/overview").text
        assert f"Alert #{aid} acknowledged." in after
        assert f'data-testid="acknowledged-by-{aid}">by ann' in after
        assert 'data-testid="no-alerts"' in after
        assert c.post("/overview/alerts/999/acknowledge",
                      data={"csrf_token": csrf_of(after)}).status_code == 404
    with session_scope(w.url) as s:
        a = get_alert(s, aid)
        assert (a.status, a.acknowledged_by) == ("acknowledged", "ann")


def test_alerts_api_lists_and_acknowledges(client, world):
    url = world.url
    a1 = _alert(url, "k1", minutes=1)
    a2 = _alert(url, "k2", kind="rollback", minutes=2)
    done = _alert(url, "k3", kind="gate_failed", minutes=3)
    with session_scope(url) as s:
        resolve(s, done, "ops")
    bob, root = auth(world.tokens["bob"]), auth(world.tokens["root"])
    assert [a["id"] for a in client.get("/api/v1/alerts", headers=bob).json()] == [a2, a1]
    r = client.post(f"/api/v1/alerts/{a1}/acknowledge", headers=bob)
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "bob"
    assert r.json()["status"] == "acknowledged"
    again = client.post(f"/api/v1/alerts/{a1}/acknowledge", headers=root).json()
    assert again["acknowledged_by"] == "bob"  # the first acknowledgement stands
    assert client.post(f"/api/v1/alerts/{done}/acknowledge", headers=root).status_code == 409
    assert client.post("/api/v1/alerts/424242/acknowledge", headers=root).status_code == 404
    listed = {s: [a["id"] for a in client.get(f"/api/v1/alerts?status={s}", headers=bob).json()]
              for s in ("open", "acknowledged", "resolved", "active", "any")}
    assert listed == {"open": [a2], "acknowledged": [a1], "resolved": [done],
                      "active": [a2, a1], "any": [done, a2, a1]}
    assert client.get("/api/v1/alerts?status=closed", headers=bob).status_code == 422
    # with the session cookie, an unsafe method needs the X-CSRF-Token header
    sign_in(client, "ann")
    token = csrf_of(client.get("/overview").text)
    assert client.post(f"/api/v1/alerts/{a2}/acknowledge").status_code == 403
    ok = client.post(f"/api/v1/alerts/{a2}/acknowledge", headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.json()["acknowledged_by"] == "ann"
