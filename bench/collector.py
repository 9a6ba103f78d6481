"""Benchmark: the log collector (``POST /v1/interactions``) under load, from a separate process.

    python bench/collector.py                 # the code of this checkout
    python bench/collector.py --code /tmp/old # another checkout of the project (before/after)

Starts the service with uvicorn in its own process (a temporary ``LEARNLOOP_HOME``: SQLite store,
landing zone on local disk, one collector key) and drives it over loopback HTTP from this process:

1. ``steady``: single-record requests at a fixed rate (``--rate``): latency p50/p99 and the rate
   achieved;
2. ``single max``: single-record requests from ``--clients`` closed-loop clients: requests/s;
3. ``batched``: batches of ``--batch`` records from ``--batch-clients`` clients: records/s;
4. ``healthz``: ``/healthz`` probed at 20/s, alone and then while the batches of 3 are in flight:
   p50/p99 (a blocked event loop shows here).

For each phase it reports the CPU seconds and peak RSS of the server process with its children
(the collector's worker processes), and the machine's load average (``os.getloadavg``) at the
end. ``LEARNLOOP_*`` variables in the environment reach the server (e.g.
``LEARNLOOP_COLLECTOR_WORKERS=2``). The client shares the machine (2 cores here), so the
figures are for the pair. Results are published in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store import collector_keys  # noqa: E402
from store.db import session_scope, upgrade  # noqa: E402


def record(i: int) -> dict:
    return {"interaction_id": f"bench-{i}", "session_id": f"s-{i % 97}",
            "timestamp": f"2026-11-{18 + i % 3}T10:{i % 60:02d}:00Z", "channel": "web",
            "model": {"provider": "local", "name": "tiny", "version": "1"},
            "messages": [{"role": "system", "content": "You are the support assistant."},
                         {"role": "user", "content": f"How do I reset my password? ({i})"}],
            "response": "Open Settings > Security and click 'Reset password'.",
            "latency_ms": 420 + i % 100, "tokens": {"prompt": 57, "completion": 14},
            "feedback": {"thumbs": "up" if i % 3 else "down"},
            "metadata": {"intent": "password_reset", "language": "en", "tags": ["bench"]}}


class Counter:
    def __init__(self) -> None:
        self._n, self._lock = 0, threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._n += 1
            return self._n


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class ServerWatch:
    """CPU seconds and peak RSS of the server process and its children (the collector's worker
    processes) over one phase; RSS sampled every 20 ms."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.peak = proc, 0
        self._stop = threading.Event()

    def _procs(self) -> list[psutil.Process]:
        return [self.proc, *self.proc.children(recursive=True)]

    def _cpu(self) -> dict[int, float]:
        out = {}
        for p in self._procs():
            try:
                c = p.cpu_times()
            except psutil.Error:  # exited between listing and reading
                continue
            out[p.pid] = c.user + c.system
        return out

    def __enter__(self):
        self.cpu0 = self._cpu()
        self.t0 = time.perf_counter()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = 0
            for p in self._procs():
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            self._stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        cpu1 = self._cpu()
        self.cpu = sum(v - self.cpu0.get(pid, 0.0) for pid, v in cpu1.items())
        self.wall = time.perf_counter() - self.t0
        self.load = os.getloadavg()

    def facts(self) -> dict:
        return {"server_cpu_s": round(self.cpu, 2), "wall_s": round(self.wall, 2),
                "server_peak_rss_mib": round(self.peak / 2**20, 1),
                "loadavg_1m": round(self.load[0], 2)}


def post_records(c: httpx.Client, key: str, recs: list[dict]) -> httpx.Response:
    r = c.post("/v1/interactions", content=json.dumps(recs).encode(),
               headers={"X-API-Key": key, "Content-Type": "application/json"})
    if r.status_code != 200 or r.json()["accepted"] != len(recs):
        raise RuntimeError(f"collector answered {r.status_code}: {r.text[:300]}")
    return r


def steady(base: str, key: str, ids: Counter, rate: float, duration: float,
           threads: int = 16) -> dict:
    """Open loop: request k is due at t0 + k/rate; latency is measured from its due time (so a
    stalled server's queueing counts, not hidden by the client waiting)."""
    t0 = time.perf_counter() + 0.2
    total = int(rate * duration)
    slot, lat, lock = Counter(), [], threading.Lock()

    def work() -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while (k := slot.next() - 1) < total:
                due = t0 + k / rate
                if (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
                post_records(c, key, [record(ids.next())])
                with lock:
                    lat.append(time.perf_counter() - due)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.perf_counter() - t0
    return {"requests": len(lat), "target_rps": rate, "achieved_rps": round(len(lat) / took, 1),
            "p50_ms": round(pct(lat, 0.5) * 1000, 1), "p99_ms": round(pct(lat, 0.99) * 1000, 1)}


def closed_loop(base: str, key: str, ids: Counter, clients: int, batch: int,
                duration: float) -> dict:
    stop = time.perf_counter() + duration
    done, lat, lock = [0], [], threading.Lock()

    def work() -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            while time.perf_counter() < stop:
                recs = [record(ids.next()) for _ in range(batch)]
                t = time.perf_counter()
                post_records(c, key, recs)
                with lock:
                    done[0] += batch
                    lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.perf_counter() - t0
    return {"clients": clients, "batch": batch, "requests": len(lat),
            "requests_per_s": round(len(lat) / took, 1),
            "records_per_s": round(done[0] / took, 1),
            "request_p50_ms": round(pct(lat, 0.5) * 1000, 1),
            "request_p99_ms": round(pct(lat, 0.99) * 1000, 1)}


def probe_health(base: str, duration: float, rate: float = 20.0) -> dict:
    lat = []
    with httpx.Client(base_url=base, timeout=60) as c:
        t0 = time.perf_counter()
        k = 0
        while (now := time.perf_counter()) < t0 + duration:
            due = t0 + k / rate
            if due > now:
                time.sleep(due - now)
            t = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            lat.append(time.perf_counter() - t)
            k += 1
    return {"probes": len(lat), "p50_ms": round(pct(lat, 0.5) * 1000, 1),
            "p99_ms": round(pct(lat, 0.99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1), "mean_ms": round(statistics.mean(lat) * 1000, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(code: Path, home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LEARNLOOP_HOME": str(home), "LEARNLOOP_SECRET_KEY": "b" * 32,
           "PYTHONPATH": str(code)}
    for k in ("LEARNLOOP_STORE_URL", "LEARNLOOP_LANDING_DIR"):
        env.pop(k, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.communicate(timeout=10)[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose service to run")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--rate", type=float, default=100.0, help="steady single-record req/s")
    ap.add_argument("--clients", type=int, default=8, help="closed-loop single-record clients")
    ap.add_argument("--batch", type=int, default=1000, help="records per batch")
    ap.add_argument("--batch-clients", type=int, default=2)
    ap.add_argument("--port", type=int, default=0, help="0: a free loopback port")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    out: dict = {"code": str(args.code), "cpus": os.cpu_count(), "duration_s": args.duration}
    try:
        url = f"sqlite:///{home / 'store.db'}"
        upgrade(url)
        with session_scope(url) as s:
            key = collector_keys.create_key(s, "bench").key
        port = args.port or free_port()
        proc = start_server(args.code.resolve(), home, port)
        server = psutil.Process(proc.pid)
        base = f"http://127.0.0.1:{port}"
        ids = Counter()
        try:
            with httpx.Client(base_url=base, timeout=120) as c:  # warm up, worker pool started
                post_records(c, key, [record(ids.next())])
                post_records(c, key, [record(ids.next()) for _ in range(args.batch)])
            # concurrent batches, so that every worker process the phases will use is started
            closed_loop(base, key, ids, args.batch_clients, args.batch, 2.0)
            phases = [
                ("healthz_idle", lambda: probe_health(base, args.duration)),
                ("steady_single", lambda: steady(base, key, ids, args.rate, args.duration)),
                ("single_max", lambda: closed_loop(base, key, ids, args.clients, 1,
                                                   args.duration)),
                ("batched", lambda: closed_loop(base, key, ids, args.batch_clients, args.batch,
                                                args.duration)),
            ]
            for name, run in phases:
                with ServerWatch(server) as w:
                    res = run()
                out[name] = {**res, **w.facts()}
                print(name, json.dumps(out[name]), flush=True)
            # /healthz while batches are in flight
            with ServerWatch(server) as w:
                bg: dict = {}
                t = threading.Thread(target=lambda: bg.update(closed_loop(
                    base, key, ids, args.batch_clients, args.batch, args.duration + 1)))
                t.start()
                time.sleep(0.5)
                res = probe_health(base, args.duration)
                t.join()
            out["healthz_under_batches"] = {**res, "batches": bg, **w.facts()}
            print("healthz_under_batches", json.dumps(out["healthz_under_batches"]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
