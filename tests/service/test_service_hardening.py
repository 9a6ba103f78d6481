"""Hardening against a live uvicorn server: concurrent sign-in guesses, chunked oversized bodies."""

from __future__ import annotations

import socket
import threading

import httpx
from servicekit import PASSWORD, LiveServer, auth, csrf_of

from store.db import session_scope
from store.models import ReviewItem


def _login_clients(base_url: str, n: int) -> list[tuple[httpx.Client, str]]:
    out = []
    for _ in range(n):
        c = httpx.Client(base_url=base_url, timeout=60)
        out.append((c, csrf_of(c.get("/login").text)))
    return out


def _concurrent_logins(clients, username_of, password: str) -> list[int]:
    barrier = threading.Barrier(len(clients))
    codes: list[int | BaseException | None] = [None] * len(clients)

    def go(k: int, c: httpx.Client, tok: str) -> None:
        req = c.build_request("POST", "/login", data={
            "username": username_of(k), "password": password, "csrf_token": tok, "next": "/"})
        barrier.wait()
        try:
            codes[k] = c.send(req).status_code
        except httpx.HTTPError as exc:  # reported below, never swallowed
            codes[k] = exc

    threads = [threading.Thread(target=go, args=(k, c, tok)) for k, (c, tok) in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for c, _ in clients:
        c.close()
    assert all(isinstance(x, int) for x in codes), codes
    return codes  # type: ignore[return-value]


def test_concurrent_wrong_passwords_cannot_overshoot_the_limit(sqlite_world, app_factory):
    with LiveServer(app_factory(sqlite_world)) as live:
        codes = _concurrent_logins(_login_clients(live.url, 20), lambda k: "ann", "wrong-password")
        assert sorted(codes) == [401] * 5 + [429] * 15, codes
        # the right password now waits too, for this username from this address
        (c, tok), = _login_clients(live.url, 1)
        try:
            r = c.post("/login", data={"username": "ann", "password": PASSWORD,
                                       "csrf_token": tok, "next": "/"})
        finally:
            c.close()
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_per_ip_limit_stops_spraying_over_many_usernames(sqlite_world, app_factory):
    app = app_factory(sqlite_world, login_max_failures=5, login_max_failures_per_ip=8)
    with LiveServer(app) as live:
        codes = _concurrent_logins(_login_clients(live.url, 12), lambda k: f"user{k}",
                                   "wrong-password")
        assert sorted(codes) == [401] * 8 + [429] * 4, codes


def _chunked_post(port: int, path: str, headers: dict[str, str], total: int,
                  chunk: int = 256 * 1024, pattern: bytes = b"x") -> tuple[int, bytes, int]:
    """POST a chunked body of ``total`` bytes over a raw socket; returns (status, response body,
    bytes the client managed to send before the server answered or closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Transfer-Encoding: chunked",
            *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sent = 0
    try:
        sock.sendall("\r\n".join(head).encode())
        block = (pattern * (chunk // len(pattern) + 1))[:chunk]
        try:
            while sent < total:
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                sent += len(block)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent: expected
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        head_raw, _, body = data.partition(b"\r\n\r\n")
        status = int(head_raw.split(b" ", 2)[1])
        # the body may come in later segments than the head (a loaded machine): read all of it
        length = next((int(line.split(b":", 1)[1]) for line in head_raw.split(b"\r\n")[1:]
                       if line.lower().startswith(b"content-length:")), None)
        while length is None or len(body) < length:
            part = sock.recv(65536)
            if not part:
                break
            body += part
        return status, body, sent
    finally:
        sock.close()


def test_chunked_body_over_8_mib_is_413_and_not_parsed(sqlite_world, app_factory):
    ten_mib = 10 * 1024 * 1024
    with LiveServer(app_factory(sqlite_world)) as live:
        status, body, _ = _chunked_post(
            live.port, "/api/v1/decisions",
            {"Authorization": f"Bearer {sqlite_world.tokens['ann']}",
             "Content-Type": "application/json"}, ten_mib)
        assert status == 413 and b"exceeds the limit of 8,388,608 bytes" in body, body
        # a web form too, of fields small and few enough that the form parser's own limits (1 MiB
        # per field, 1000 fields) do not trip first: 413 while the form is being read
        status, body, _ = _chunked_post(
            live.port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, ten_mib,
            pattern=b"note=" + b"x" * 10_000 + b"&")
        assert status == 413 and b"exceeds the limit of 8,388,608 bytes" in body, body[:300]
        # under the limit a chunked body is read normally
        with httpx.Client(base_url=live.url, timeout=30) as c:
            item = sqlite_world.items["sample"]

            def small():
                yield b'{"decisions": [{"item_id": %d, ' % item
                yield b'"decision": "approve", "version": 1}]}'

            r = c.post("/api/v1/decisions", content=small(),
                       headers={**auth(sqlite_world.tokens["ann"]),
                                "Content-Type": "application/json"})
            assert r.status_code == 200 and r.json()["decided"] == 1
    with session_scope(sqlite_world.url) as s:
        assert s.get(ReviewItem, sqlite_world.items["sample"]).status == "approved"


def test_declared_oversized_body_is_413_before_reading(sqlite_world, app_factory):
    with LiveServer(app_factory(sqlite_world)) as live:
        sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
        with sock:
            sock.sendall(b"POST /api/v1/decisions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 99999999\r\n\r\n")
            data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 413") and b"99,999,999 bytes exceeds" in data
