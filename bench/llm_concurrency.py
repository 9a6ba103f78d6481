"""Benchmark: concurrent LLM calls (``Router.complete_many``) against a stand-in server with a fixed
per-request latency.

    python bench/llm_concurrency.py                       # both dialects, limits 1 4 16 64
    python bench/llm_concurrency.py --latency 0.2 --limits 1 4 16 64 --dialects openai
    python bench/llm_concurrency.py --compare-async       # also the raw SDK clients, sync vs async

The stand-in server (``tests/llm/fake_servers.py``: ``FakeOpenAIServer`` / ``FakeGeminiServer``, a
thread per request) runs in its own process and answers every request after ``--latency`` seconds
with an auditor-sized verdict (about 200 characters of JSON). This process sends auditor-sized
requests (a 2,000-character conversation, the ``Verdict`` JSON schema, structured output parsed
and validated) through the real provider (the official ``openai`` / ``google-genai`` client) and
``Router.complete_many`` with the provider's concurrency limit set to each of ``--limits``.

Reported per (dialect, limit): requests, wall seconds, requests/s, the ideal requests/s
(``limit / latency``), CPU-milliseconds per request of this process (user + system,
``resource.getrusage``) and of the server process (``psutil``), the most requests the server
answered at once, peak RSS of this process, and the load average (``os.getloadavg``, 1 minute)
at the end of the row. The machine is shared: the load average says how busy it was.

``--compare-async`` adds the same load sent by the raw SDK clients without the router: the sync
client from a thread pool of ``limit`` threads, and the async client (``openai.AsyncOpenAI`` /
``genai.Client(...).aio``) under an ``asyncio.Semaphore(limit)``; the CPU per request of the two
is what docs/providers.md ("Concurrency") weighs when choosing threads over the async clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ml.audit.taxonomy import Verdict  # noqa: E402
from ml.llm import LLMRequest, ResilientProvider, RetryPolicy, Router  # noqa: E402

VERDICT = json.dumps({"is_error": True, "category": "refusal_of_valid_request", "severity": "medium",
                      "confidence": 0.9, "explanation": "The reply refuses a simple address change "
                      "that the assistant is allowed to make; it should have asked for the new one."})
SERVER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.llm.fake_servers import FakeGeminiServer, FakeOpenAIServer, ok
cls = FakeOpenAIServer if {dialect!r} == "openai" else FakeGeminiServer
server = cls(default=ok({text!r}, delay_s={latency!r})).start()
print(server.base_url, flush=True)
sys.stdin.read()  # until the parent closes our stdin
server.stop()
"""


def request(i: int) -> LLMRequest:
    turns = " ".join(f"turn {k}: I would like to change the delivery address of order {i}-{k}."
                     for k in range(30))
    return LLMRequest(messages=[{"role": "system", "content": "You are the Auditor. Judge the reply."},
                                {"role": "user", "content": f"conversation {i}: {turns[:2000]}"}],
                      max_tokens=400, response_schema=Verdict)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_server(dialect: str, latency: float) -> tuple[subprocess.Popen, str]:
    code = SERVER.format(root=str(ROOT), dialect=dialect, text=VERDICT, latency=latency)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    base_url = proc.stdout.readline().strip()
    if not base_url:
        raise RuntimeError(f"the {dialect} stand-in server did not start")
    return proc, base_url


def provider(dialect: str, base_url: str):
    if dialect == "openai":
        from ml.llm.openai_provider import OpenAIProvider

        return OpenAIProvider("gpt-bench", base_url=base_url, api_key_env=None, timeout_s=30)
    from ml.llm.gemini_provider import GeminiProvider

    return GeminiProvider("gemini-bench", base_url=base_url, api_key_env=None, timeout_s=30)


class Meter:
    """Wall time, CPU of this process and of the server over one measured block."""

    def __init__(self, server: psutil.Process) -> None:
        self.server = server

    def __enter__(self) -> Meter:
        s = self.server.cpu_times()
        self._server0 = s.user + s.system
        self._cpu0, self._t0 = cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = cpu_s() - self._cpu0
        s = self.server.cpu_times()
        self.server_cpu = s.user + s.system - self._server0


def n_requests(limit: int, per_slot: int) -> int:
    return max(20, per_slot * limit)


def run_router(dialect: str, base_url: str, limit: int, n: int,
               server: psutil.Process) -> dict:
    slot = ResilientProvider(provider(dialect, base_url), retry=RetryPolicy(max_retries=0),
                             concurrency=limit)
    router = Router("auditor", [slot])
    router.complete_many([request(-1 - k) for k in range(min(limit, 4))])  # connections, imports
    router.reset_stats()
    slot.peak_in_flight = 0
    batch = [request(i) for i in range(n)]
    with Meter(server) as m:
        results = router.complete_many(batch)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0]}")
    return {"mode": "router", "requests": n, "wall_s": m.wall, "cpu_s": m.cpu,
            "server_cpu_s": m.server_cpu, "peak_in_flight": slot.peak_in_flight}


def run_raw_threads(dialect: str, base_url: str, limit: int, n: int, server: psutil.Process) -> dict:
    p = provider(dialect, base_url)
    batch = [request(i) for i in range(n)]
    with ThreadPoolExecutor(limit) as pool:
        list(pool.map(p.complete, batch[:limit]))  # warm the pool's connections
        with Meter(server) as m:
            list(pool.map(p.complete, batch))
    return {"mode": "sync client, threads", "requests": n, "wall_s": m.wall, "cpu_s": m.cpu,
            "server_cpu_s": m.server_cpu, "peak_in_flight": None}


def run_raw_async(dialect: str, base_url: str, limit: int, n: int, server: psutil.Process) -> dict:
    """The async clients with the same request bodies (``_params`` / ``_contents``/``_config`` of
    the providers), parsed into the SDKs' response objects; no router work."""
    p = provider(dialect, base_url)
    batch = [request(i) for i in range(n)]

    async def main() -> Meter:
        # a client per event loop: an async client's pooled connections belong to the loop
        if dialect == "openai":
            import openai

            client = openai.AsyncOpenAI(api_key="no-key", base_url=base_url, timeout=30, max_retries=0)

            async def one(r: LLMRequest) -> object:
                return await client.chat.completions.create(**p._params(r))
        else:
            from google import genai
            from google.genai import types

            client = genai.Client(api_key="no-key", http_options=types.HttpOptions(
                base_url=base_url, api_version="v1beta", timeout=30_000,
                retry_options=types.HttpRetryOptions(attempts=1))).aio

            async def one(r: LLMRequest) -> object:
                contents, system = p._contents(r)
                return await client.models.generate_content(
                    model=p.model, contents=contents, config=p._config(r, system))
        sem = asyncio.Semaphore(limit)

        async def bounded(r: LLMRequest) -> object:
            async with sem:
                return await one(r)

        try:
            await asyncio.gather(*(bounded(r) for r in batch[:limit]))
            with Meter(server) as m:
                await asyncio.gather(*(bounded(r) for r in batch))
        finally:
            await (client.close() if dialect == "openai" else client.aclose())
        return m

    m = asyncio.run(main())
    return {"mode": "async client", "requests": n, "wall_s": m.wall, "cpu_s": m.cpu,
            "server_cpu_s": m.server_cpu, "peak_in_flight": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per request")
    ap.add_argument("--limits", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--dialects", nargs="+", default=["openai", "gemini"], choices=["openai", "gemini"])
    ap.add_argument("--per-slot", type=int, default=8,
                    help="requests per concurrency slot (at least 20 requests)")
    ap.add_argument("--compare-async", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    print(f"stand-in server latency {args.latency * 1000:.0f} ms; {os.cpu_count()} CPUs; "
          f"python {sys.version.split()[0]}")
    header = (f"{'dialect':8} {'mode':22} {'limit':>5} {'reqs':>5} {'wall s':>7} {'req/s':>7} "
              f"{'ideal':>6} {'cpu ms/req':>10} {'srv ms/req':>10} {'in flight':>9} "
              f"{'rss MB':>7} {'load1':>5}")
    print(header)
    print("-" * len(header))
    rows = []
    for dialect in args.dialects:
        proc, base_url = start_server(dialect, args.latency)
        server = psutil.Process(proc.pid)
        try:
            for limit in args.limits:
                n = n_requests(limit, args.per_slot)
                runs = [run_router(dialect, base_url, limit, n, server)]
                if args.compare_async:
                    runs.append(run_raw_threads(dialect, base_url, limit, n, server))
                    runs.append(run_raw_async(dialect, base_url, limit, n, server))
                for r in runs:
                    r.update(dialect=dialect, limit=limit, latency_s=args.latency,
                             rps=r["requests"] / r["wall_s"], ideal_rps=limit / args.latency,
                             cpu_ms_per_req=1000 * r["cpu_s"] / r["requests"],
                             server_cpu_ms_per_req=1000 * r["server_cpu_s"] / r["requests"],
                             peak_rss_mb=peak_rss_mb(), load1=os.getloadavg()[0])
                    rows.append(r)
                    flight = "" if r["peak_in_flight"] is None else str(r["peak_in_flight"])
                    print(f"{dialect:8} {r['mode']:22} {limit:>5} {r['requests']:>5} "
                          f"{r['wall_s']:>7.2f} {r['rps']:>7.1f} {r['ideal_rps']:>6.0f} "
                          f"{r['cpu_ms_per_req']:>10.2f} {r['server_cpu_ms_per_req']:>10.2f} "
                          f"{flight:>9} {r['peak_rss_mb']:>7.0f} {r['load1']:>5.2f}", flush=True)
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
