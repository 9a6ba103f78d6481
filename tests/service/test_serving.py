"""The serving API end to end: a real uvicorn server (one per module) over a real SQLite store,
real tiny chat models registered in a real MLflow registry (champion, challenger, an older
champion), a running A/B experiment, and the official ``openai`` client. Replies are routed,
stored as pending turns, take feedback, and reach the landing zone as interaction records that
the ingest accepts."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from servicekit import LiveServer, make_settings, service_settings

from ml.deploy.routing import assign_arm, experiment_key
from ml.schema import validate_record
from store import collector_keys
from store import deployments as dep
from store.db import session_scope, upgrade
from tests.ml.training.tiny import TINY_CONVERSATIONS, make_tiny_model

MODEL = "tiny-assistant"
MAX_NEW = 12
QUESTION = TINY_CONVERSATIONS[0][:-1]  # system + the user's question


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The store, registry, keys, experiment and the live server, shared by the module's tests.

    Registry: v1 (an older champion, model a), v2 (the champion, model a), v3 (the challenger,
    model b), v4 (model a, never a champion: not servable by version). Experiment: v3 against
    v2 with half the users on v3."""
    import torch

    from ml.registry import Registry
    from service.app import create_app

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    url = f"sqlite:///{root / 'store.db'}"
    upgrade(url)
    settings = make_settings(url, root / "home").model_copy(update={"model_name": MODEL})
    models = {"a": make_tiny_model(root / "models/a", seed=0),
              "b": make_tiny_model(root / "models/b", seed=1)}
    registry = Registry.from_settings(settings)
    for source in ("a", "a", "b", "a"):
        registry.register_version(str(models[source]), None, {"learnloop.role": "test"})
    registry.set_alias("champion", "2")
    registry.set_alias("challenger", "3")
    with session_scope(url) as s:
        for v, prev in (("1", None), ("2", "1")):
            dep.record_deployment(s, model_name=MODEL, model_version=v, alias="champion",
                                  action="promote", actor="test", previous_version=prev)
        exp = dep.start_experiment(s, model_name=MODEL, champion_version="2",
                                   challenger_version="3", stages=[0.5], policy={},
                                   subject_key="user", started_by="test")
        keys = {t: collector_keys.create_key(s, t).key for t in ("acme", "globex")}
        exp_id = exp.id
    service = service_settings(serve_max_new_tokens=MAX_NEW, serve_flush_interval_s=0)
    app = create_app(settings, service, migrate=False)
    with LiveServer(app) as server:
        yield {"url": server.url, "app": app, "settings": settings, "store": url, "keys": keys,
               "experiment_id": exp_id, "models": models, "registry": registry}


def client(world, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{world['url']}/v1", api_key=world["keys"][tenant],
                         max_retries=0, timeout=60)


def subject_in(world, arm: str, prefix: str = "user") -> str:
    key = experiment_key(world["experiment_id"])
    return next(f"{prefix}-{i}" for i in range(1000)
                if assign_arm(f"{prefix}-{i}", key, 0.5) == arm)


def cache(world):
    app = world["app"]
    return app.state.serving.cache(app.state.ctx)


def expected_reply(model_dir: Path, messages) -> str:
    from ml.evaluation.generation import LocalGenerator

    return LocalGenerator(model_dir, max_new_tokens=MAX_NEW).generate([messages])[0].text


def chat(world, *, user=None, session_id=None, model="learnloop", messages=QUESTION, **kw):
    extra = {"learnloop": {"session_id": session_id}} if session_id else None
    return client(world, kw.pop("tenant", "acme")).chat.completions.create(
        model=model, messages=messages, user=user, extra_body=extra, **kw)


def post(world, path: str, body, tenant: str = "acme") -> httpx.Response:
    return httpx.post(f"{world['url']}{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {world['keys'][tenant]}"})


# ---- routing -----------------------------------------------------------------------------------
def test_route_follows_the_experiment_and_splits_traffic_by_the_share(world):
    treated, control = subject_in(world, "treatment"), subject_in(world, "control")
    with httpx.Client(base_url=world["url"],
                      headers={"X-API-Key": world["keys"]["acme"]}) as http:
        t = http.get("/v1/route", params={"subject": treated}).json()
        assert t == {"model": "learnloop:3", "model_name": MODEL, "version": "3",
                     "alias": "challenger", "experiment_id": world["experiment_id"],
                     "arm": "treatment", "traffic_split": 0.5}
        c = http.get("/v1/route", params={"subject": control}).json()
        assert (c["version"], c["alias"], c["arm"]) == ("2", "champion", "control")
        arms = [http.get("/v1/route", params={"subject": f"s-{i}"}).json()["arm"]
                for i in range(400)]
        assert http.get("/v1/route", params={"subject": "x"},
                        headers={"X-API-Key": "llc_wrong"}).status_code == 401
        assert http.get("/v1/route").status_code == 422
    treatment = arms.count("treatment")
    # Binomial(400, 0.5): sd 10; 4 sd either side
    assert 160 <= treatment <= 240, treatment
    key = experiment_key(world["experiment_id"])
    assert arms == [assign_arm(f"s-{i}", key, 0.5) for i in range(400)]  # deterministic


# ---- chat completions --------------------------------------------------------------------------
def test_openai_client_gets_a_routed_reply_with_usage(world):
    control, treated = subject_in(world, "control"), subject_in(world, "treatment")
    reply = chat(world, user=control, session_id="s1")
    assert reply.object == "chat.completion" and reply.model == "learnloop:2"
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.index == 0
    assert choice.message.content == expected_reply(world["models"]["a"], QUESTION)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    ll = reply.to_dict()["learnloop"]
    assert ll["interaction_id"] == reply.id.removeprefix("chatcmpl-")
    assert (ll["model_version"], ll["alias"], ll["arm"], ll["experiment_id"], ll["session_id"],
            ll["turn_index"]) == ("2", "champion", "control", world["experiment_id"], "s1", 0)
    other = chat(world, user=treated, session_id="s1-t", max_tokens=3)
    assert other.model == "learnloop:3"
    assert other.to_dict()["learnloop"]["arm"] == "treatment"
    assert other.usage.completion_tokens <= 3
    if other.usage.completion_tokens == 3:
        assert other.choices[0].finish_reason == "length"
    # the session's next turn
    again = chat(world, user=control, session_id="s1")
    assert again.to_dict()["learnloop"]["turn_index"] == 1


def test_models_load_once_per_version_also_under_concurrent_first_requests(world):
    chat(world, user=subject_in(world, "control"), session_id="load-0")
    assert cache(world).loads.get("2") == 1
    results: list = []

    def ask(i):  # v1 (an older champion) was never asked for before
        results.append(chat(world, model="learnloop:1", session_id=f"load-{i}").model)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == ["learnloop:1"] * 4
    for _ in range(3):
        chat(world, user=subject_in(world, "control"), session_id="load-x")
    assert cache(world).loads["1"] == 1 and cache(world).loads["2"] == 1


def test_model_names_aliases_and_versions(world):
    assert chat(world, model="champion", session_id="m1").model == "learnloop:2"
    assert chat(world, model="challenger", session_id="m2").model == "learnloop:3"
    assert chat(world, model="2", session_id="m3").model == "learnloop:2"
    # the challenger asked for by a subject the experiment assigns to control: not counted
    by_alias = chat(world, model="challenger", user=subject_in(world, "control"),
                    session_id="m4").to_dict()["learnloop"]
    assert by_alias["arm"] is None and by_alias["experiment_id"] is None
    # a chatbot that asked /v1/route and calls the version it got counts for the arm
    treated = subject_in(world, "treatment")
    with httpx.Client(base_url=world["url"],
                      headers={"X-API-Key": world["keys"]["acme"]}) as http:
        routed = http.get("/v1/route", params={"subject": treated}).json()
    named = chat(world, model=routed["model"], user=treated, session_id="m4-t")
    ll = named.to_dict()["learnloop"]
    assert (named.model, ll["arm"], ll["experiment_id"]) == (
        "learnloop:3", "treatment", world["experiment_id"])
    with pytest.raises(openai.BadRequestError) as err:
        chat(world, model="learnloop:4", session_id="m5")
    msg = str(err.value)
    assert "version 4" in msg and "learnloop:2 (champion)" in msg and "learnloop:1" in msg
    with pytest.raises(openai.BadRequestError, match="learnloop"):
        chat(world, model="gpt-4o", session_id="m6")


def test_bad_requests_are_refused_with_the_reason(world):
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        chat(world, session_id="b1", stream=True)
    with pytest.raises(openai.UnprocessableEntityError, match="role"):
        chat(world, session_id="b2", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="assistant"):
        chat(world, session_id="b3", messages=TINY_CONVERSATIONS[0])
    with pytest.raises(openai.UnprocessableEntityError, match="messages"):
        chat(world, session_id="b4", messages=[])
    with pytest.raises(openai.PermissionDeniedError, match="tenant"):
        client(world).chat.completions.create(
            model="learnloop", messages=QUESTION, user="u1",
            extra_body={"learnloop": {"session_id": "b5", "tenant_id": "globex"}})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{world['url']}/v1", api_key="llc_not-a-key",
                      max_retries=0).chat.completions.create(model="learnloop", messages=QUESTION)
    r = httpx.post(f"{world['url']}/v1/chat/completions", timeout=30,
                   headers={"X-API-Key": world["keys"]["acme"], "X-Learnloop-Tenant": "globex"},
                   json={"model": "learnloop", "messages": QUESTION})
    assert r.status_code == 403
    with pytest.raises(openai.UnprocessableEntityError, match="tags"):
        client(world).chat.completions.create(
            model="learnloop", messages=QUESTION,
            extra_body={"learnloop": {"session_id": "b6", "metadata": {"tags": "vip"}}})


def test_no_champion_is_503(world):
    from fastapi.testclient import TestClient

    from service.app import create_app

    empty = world["settings"].model_copy(update={"model_name": "no-such-model"})
    app = create_app(empty, service_settings(), migrate=False)
    with TestClient(app) as http:
        headers = {"Authorization": f"Bearer {world['keys']['acme']}"}
        r = http.post("/v1/chat/completions", headers=headers,
                      json={"model": "learnloop", "messages": QUESTION, "user": "u1"})
        assert r.status_code == 503 and "no champion" in r.json()["detail"]
        r = http.get("/v1/route", params={"subject": "u1"}, headers=headers)
        assert r.status_code == 503 and "no-such-model" in r.json()["detail"]


# ---- feedback, session end, landing ------------------------------------------------------------
def _landing_records(world, files: list[str]) -> list[dict]:
    landing = world["settings"].landing
    return [json.loads(line) for f in files
            for line in (landing / f).read_text(encoding="utf-8").splitlines()]


def test_feedback_merges_and_session_end_writes_records_ingest_accepts(world):
    from ml.ingest import ingest_files

    user = subject_in(world, "control")
    first = chat(world, user=user, session_id="fb-1").to_dict()["learnloop"]["interaction_id"]
    r = post(world, "/v1/feedback", {"interaction_id": first, "feedback": {"thumbs": "down"}})
    assert r.status_code == 200, r.text
    r = post(world, "/v1/feedback", {"interaction_id": first,
                                     "feedback": {"rating": 2, "comment": "wrong price"},
                                     "signals": {"requested_human": True},
                                     "human_correction": {"agent_id": "a7",
                                                          "corrected_response": "It is 129."}})
    assert r.status_code == 200, r.text
    state = r.json()
    assert state["record"]["feedback"] == {"thumbs": "down", "rating": 2,
                                           "comment": "wrong price"}
    assert state["written"] is False and state["model_version"] == "2"
    second = chat(world, user=user, session_id="fb-1").to_dict()["learnloop"]["interaction_id"]
    assert post(world, "/v1/feedback", {"interaction_id": first, "feedback": {"rating": 9}}
                ).status_code == 422
    assert post(world, "/v1/feedback", {"interaction_id": "nope", "feedback": {"thumbs": "up"}}
                ).status_code == 404
    assert post(world, "/v1/feedback", {"interaction_id": first, "feedback": {"thumbs": "up"}},
                tenant="globex").status_code == 404  # another tenant's turn is not disclosed
    assert post(world, "/v1/sessions/fb-1/end", {}, tenant="globex").status_code == 404

    r = post(world, "/v1/sessions/fb-1/end", {"signals": {"completed_action": True}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["written"] == 2 and out["interaction_ids"] == [first, second]
    assert all(f.startswith(f"date={datetime.now(UTC).date().isoformat()}/served-acme-")
               for f in out["files"])
    records = {rec["interaction_id"]: rec for rec in _landing_records(world, out["files"])}
    assert set(records) == {first, second}
    for rec in records.values():
        validate_record(rec)
        assert rec["tenant_id"] == "acme" and rec["session_id"] == "fb-1"
        assert rec["model"] == {"provider": "learnloop", "name": MODEL, "version": "2"}
        assert rec["metadata"]["tags"] == [f"experiment:{world['experiment_id']}",
                                           "arm:control", "served"]
        assert rec["messages"] == QUESTION and rec["latency_ms"] > 0
    assert records[first]["signals"] == {"requested_human": True, "user_continued": True}
    assert records[first]["human_correction"]["corrected_response"] == "It is 129."
    assert records[first]["turn_index"] == 0 and records[second]["turn_index"] == 1
    assert records[second]["signals"] == {"completed_action": True}
    # the ingest accepts them as they are
    day = datetime.now(UTC).date().isoformat()
    landing = world["settings"].landing
    res = ingest_files([landing / f for f in out["files"]], day, b"k" * 32, workers=0)
    assert res.quarantined.height == 0
    rows = {r["interaction_id"]: r for r in res.interactions.to_dicts()}
    assert set(rows) == {first, second}
    assert rows[first]["feedback_thumbs"] == "down" and rows[first]["user_continued"] is True
    assert rows[second]["model_version"] == "2" and "arm:control" in rows[second]["tags"]
    # written: immutable now
    r = post(world, "/v1/feedback", {"interaction_id": first, "feedback": {"thumbs": "up"}})
    assert r.status_code == 409 and "already written" in r.json()["detail"]
    r = post(world, "/v1/sessions/fb-1/end", {"signals": {"abandoned": True}})
    assert r.status_code == 409
    assert post(world, "/v1/sessions/fb-1/end", None).json()["written"] == 0


def _wait_written(world, iid: str) -> dict:
    from store import serving as sv

    deadline = time.monotonic() + 30
    while True:
        with session_scope(world["store"]) as s:
            t = sv.turn_dict(sv.get_turn(s, iid, "acme"))
        if t["written"] or time.monotonic() > deadline:
            return t
        time.sleep(0.05)


def test_turns_past_their_feedback_window_are_written_by_later_requests(world):
    from sqlalchemy import update

    from store.models import ServedTurn

    old = chat(world, session_id="win-1").to_dict()["learnloop"]["interaction_id"]
    fresh = chat(world, session_id="win-2").to_dict()["learnloop"]["interaction_id"]
    with session_scope(world["store"]) as s:  # as if served two hours ago
        s.execute(update(ServedTurn).where(ServedTurn.interaction_id == old).values(
            created_at=datetime.now(UTC) - timedelta(hours=2)))
    r = httpx.get(f"{world['url']}/v1/route", params={"subject": "anyone"},
                  headers={"X-API-Key": world["keys"]["acme"]})
    assert r.status_code == 200
    t = _wait_written(world, old)
    assert t["written"] and t["landing_file"].startswith("date=")
    assert validate_record(_landing_records(world, [t["landing_file"]])[0]).interaction_id == old
    assert not _wait_written_now(world, fresh)


def _wait_written_now(world, iid: str) -> bool:
    from store import serving as sv

    with session_scope(world["store"]) as s:
        return sv.get_turn(s, iid, "acme").flushed_at is not None


def test_flush_pending_and_the_cli_write_what_is_left(world, monkeypatch):
    from click.testing import CliRunner

    from cli.main import main
    from service.config import ServiceSettings
    from service.serving import flush_pending

    iid = chat(world, session_id="cli-1").to_dict()["learnloop"]["interaction_id"]
    out = flush_pending(world["settings"], all_pending=False, service=ServiceSettings())
    assert iid not in out["interaction_ids"]  # still in its feedback window
    monkeypatch.setenv("LEARNLOOP_HOME", str(world["settings"].home))
    monkeypatch.setenv("LEARNLOOP_STORE_URL", world["store"])
    result = CliRunner().invoke(main, ["serving", "flush", "--all"])
    assert result.exit_code == 0, result.output
    assert "served turn(s) (every pending turn)" in result.output
    assert _wait_written_now(world, iid)
    again = CliRunner().invoke(main, ["serving", "flush", "--all"])
    assert again.exit_code == 0 and "wrote 0 served turn(s)" in again.output
