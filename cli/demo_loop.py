"""``learnloop demo`` (the command; the chain before the loop is ``orchestration.cli.run_demo``)
closes the loop: the challenger the gate made is A/B tested on a second wave
of simulated users served by learnloop's own serving API, and the experiment is decided.

After the quality gate sets the challenger:

1. ``deployment_job`` starts an experiment (the challenger as treatment, the champion as control)
   with the demo's policy: staged traffic (10% -> 50% -> 100%), a minimum sample per arm scaled
   to the demo's size;
2. the review service with the serving API runs in this process on a free loopback port (real
   HTTP), with a collector key per tenant;
3. each round serves a wave of users (:mod:`ml.demo.wave`): every user is routed with
   ``GET /v1/route``, asks through ``POST /v1/chat/completions`` (the official ``openai`` client),
   and reacts with ``POST /v1/feedback`` / ``POST /v1/sessions/{id}/end``; the served turns are
   written to today's landing day, ingested and scored, audited, and ``deployment_job`` decides:
   continue, advance to the next stage, promote, roll back or stop;
4. the loop ends with a decided experiment (or after ``MAX_ROUNDS`` rounds, which it says).
"""

from __future__ import annotations

import getpass
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from ml.config import Settings

# users per round: enough for the demo policy's minimum sample at the 10% stage after a few rounds
WAVE_SESSIONS = 200
MAX_ROUNDS = 6
# the demo's experiment policy: the defaults (LEARNLOOP_AB_*) are for real traffic; the demo's
# wave is small, so its minimum samples are too
DEMO_POLICY = {"stages": [0.1, 0.5, 1.0], "min_samples_per_arm": 120, "min_stage_samples": 25}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServingThread:
    """The service (review app + serving API) under uvicorn in a thread of this process."""

    def __init__(self, settings: Settings):
        import secrets

        import uvicorn
        from transformers.utils import logging as hf_logging

        from service.app import create_app
        from service.config import ServiceSettings

        hf_logging.disable_progress_bar()  # a model's load bar would break the wave's bar
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # sign-in sessions of this process only: nobody signs in to the demo's own server
        service = ServiceSettings(secret_key=secrets.token_urlsafe(32))
        app = create_app(settings, service, host="127.0.0.1")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True,
                                       name="learnloop-demo-serving")

    def __enter__(self) -> ServingThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the demo's serving API did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class HttpWaveClient:
    """:class:`ml.demo.wave.WaveClient` over real HTTP: ``httpx`` for routing and feedback, the
    official ``openai`` client for the chat completions. One collector key per tenant."""

    def __init__(self, url: str, keys: dict[str, str]):
        import httpx
        import openai

        self.url, self.keys = url, keys
        self.http = httpx.Client(base_url=url, timeout=120)
        self.clients = {t: openai.OpenAI(base_url=f"{url}/v1", api_key=k, max_retries=0,
                                         timeout=300) for t, k in keys.items()}
        self.any_key = next(iter(keys.values()))
        self._tenant_of_session: dict[str, str] = {}
        self._tenant_of_turn: dict[str, str] = {}

    def _headers(self, tenant: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant] if tenant else self.any_key}"}

    def _check(self, res) -> dict[str, Any]:
        if res.status_code >= 400:
            raise RuntimeError(f"{res.request.method} {res.request.url.path}: HTTP "
                               f"{res.status_code}: {res.text[:500]}")
        return res.json()

    def route(self, subject: str) -> dict[str, Any]:
        return self._check(self.http.get("/v1/route", params={"subject": subject},
                                         headers=self._headers()))

    def chat(self, *, model: str, messages, user: str, session_id: str, tenant_id: str,
             channel: str) -> dict[str, Any]:
        out = self.clients[tenant_id].chat.completions.create(
            model=model, messages=messages, user=user, max_tokens=96,
            extra_body={"learnloop": {"session_id": session_id, "tenant_id": tenant_id,
                                      "channel": channel}})
        answer = out.model_dump()
        self._tenant_of_session[session_id] = tenant_id
        self._tenant_of_turn[answer["learnloop"]["interaction_id"]] = tenant_id
        return answer

    def feedback(self, interaction_id: str, feedback, signals) -> None:
        body: dict[str, Any] = {"interaction_id": interaction_id, "signals": signals}
        if feedback is not None:
            body["feedback"] = feedback
        self._check(self.http.post("/v1/feedback", json=body, headers=self._headers(
            self._tenant_of_turn[interaction_id])))

    def end_session(self, session_id: str, signals) -> None:
        self._check(self.http.post(f"/v1/sessions/{session_id}/end", json={"signals": signals},
                                   headers=self._headers(self._tenant_of_session[session_id])))

    def close(self) -> None:
        self.http.close()
        for c in self.clients.values():
            c.close()


def _demo_keys(settings: Settings, tenants: list[str]) -> dict[str, str]:
    from store import collector_keys
    from store.db import session_scope

    with session_scope(settings.store) as s:
        return {t: collector_keys.create_key(s, t, label="learnloop demo wave",
                                             actor=f"cli:{getpass.getuser()}").key
                for t in tenants}


def _experiment(settings: Settings) -> dict[str, Any] | None:
    """The newest experiment of the registered model, with its decisions."""
    from store import deployments as dep
    from store.db import session_scope

    with session_scope(settings.store) as s:
        rows = dep.list_experiments(s, settings.model_name, limit=1)
        if not rows:
            return None
        return dep.experiment_dict(rows[0], dep.experiment_decisions(s, rows[0].id))


def _arm_line(exp: dict[str, Any]) -> str:
    figures = (exp.get("result") or {}).get("figures") or (exp.get("result") or {})
    arms = figures.get("arms") or {}
    metric = (exp.get("policy") or {}).get("primary_metric", "quality_score")
    parts = []
    for arm in ("control", "treatment"):
        a = arms.get(arm) or {}
        value = a.get(metric)
        if isinstance(value, dict):
            value = value.get("value")
        shown = f"{value:.3f}" if isinstance(value, int | float) else "-"
        parts.append(f"{arm} v{a.get('version', '?')} n={a.get('n', 0)} {metric}={shown}")
    test = (figures.get("tests") or {}).get(metric) or {}
    if test.get("p_value") is not None:
        parts.append(f"p={test['p_value']:.2g}")
    return "; ".join(parts)


def close_the_loop(settings: Settings, defs, instance, guard, seed: int,
                   run_jobs: Callable[..., bool], ingest_day: Callable[[str], bool],
                   sessions_per_round: int = WAVE_SESSIONS, max_rounds: int = MAX_ROUNDS,
                   say: Callable[[str], None] = click.echo) -> bool:
    """Start the experiment on the challenger, then serve waves of users and decide after each
    one until the experiment is decided; True when every job succeeded. Prints each step's
    figures."""
    from tqdm import tqdm

    from ml.demo.wave import plan_sessions, run_wave
    from ml.registry import Registry

    registry = Registry.from_settings(settings)
    challenger = registry.alias_version("challenger")
    if challenger is None:
        say("no challenger: the A/B test and the second wave are skipped")
        return True
    cfg = {"ops": {"ab_experiment": {"config": {"action": "decide", **DEMO_POLICY}}}}
    ok = run_jobs(settings, defs, instance, ["deployment_job"], guard=guard,
                  run_config={"deployment_job": cfg})
    exp = _experiment(settings)
    if not ok or exp is None or exp["status"] != "running":
        say("the A/B experiment did not start: see deployment_job's output")
        return False
    say(f"A/B experiment #{exp['id']}: challenger v{exp['challenger_version']} (treatment) "
        f"against champion v{exp['champion_version']} (control), traffic "
        f"{' -> '.join(f'{s:.0%}' for s in exp['stages'])}, subject = {exp['subject_key']}")
    plan = plan_sessions(sessions_per_round * max_rounds, seed)
    tenants = sorted({s.tenant_id for s in plan})
    keys = _demo_keys(settings, tenants)
    today = datetime.now(UTC).date().isoformat()
    with ServingThread(settings) as server:
        say(f"serving API at {server.url} (GET /v1/route, POST /v1/chat/completions)")
        client = HttpWaveClient(server.url, keys)
        try:
            for rnd in range(max_rounds):
                wave = plan[rnd * sessions_per_round:(rnd + 1) * sessions_per_round]
                share = exp["traffic_split"]
                with tqdm(total=len(wave), desc=f"  wave {rnd + 1} ({share:.0%} treatment)",
                          unit="user", leave=False) as bar:
                    tallies = run_wave(client, wave, seed + rnd, on_session=lambda: bar.update(1))
                shown = "; ".join(
                    f"{arm} v{t.version}: {t.sessions} users, {t.turns} turns, right "
                    f"{t.right / max(t.turns, 1):.0%}, thumbs {t.thumbs_up}/{t.thumbs_down}, "
                    f"handoffs {t.handoffs}" for arm, t in sorted(tallies.items()))
                say(f"wave {rnd + 1}: {shown}")
                from service.serving import flush_pending

                # every session ended, so its turns are in the landing zone already; turns of a
                # session a client never ended would wait for their feedback window
                flushed = flush_pending(settings, all_pending=True)
                if flushed["written"]:
                    say(f"  {flushed['written']} served turn(s) still pending written to the "
                        f"landing zone")
                ok = ingest_day(today) and ok
                ok = run_jobs(settings, defs, instance, ["audit_job", "deployment_job"],
                              guard=guard, run_config={"deployment_job": cfg}) and ok
                exp = _experiment(settings)
                last = (exp.get("decisions") or [{}])[-1]
                say(f"  decision: {last.get('action', '-')} ({last.get('reason', '-')})")
                say(f"  {_arm_line(exp)}")
                if exp["status"] != "running":
                    break
        finally:
            client.close()
    if exp["status"] == "running":
        say(f"experiment #{exp['id']} is still running after {max_rounds} waves (stage "
            f"{exp['stage'] + 1} of {len(exp['stages'])}): the ab_decision_sensor decides it "
            f"as more served traffic arrives")
    else:
        champion = registry.alias_version("champion")
        say(f"experiment #{exp['id']} decided: {exp['decision']} ({exp['reason']}); champion "
            f"now v{champion}")
    return ok


@click.command(help="Run the whole chain on the embedded default: no server, no API key. After "
                    "the quality gate sets a challenger, an A/B test on a second wave of users "
                    "served by the serving API closes the loop.")
@click.option("--interactions", "n", type=click.IntRange(min=1), default=3000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(n: int, seed: int) -> None:
    from orchestration.cli import run_demo

    run_demo(n, seed, second_wave=close_the_loop)


COMMANDS = [demo]
