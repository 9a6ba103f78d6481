"""Sign-in rate limiting, CSRF tokens and input limits of the review service."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from typing import Callable

# input length limits (characters); longer input gets 422 with a message naming the field
MAX_NOTE = 2000
MAX_FINAL_RESPONSE = 20_000
MAX_TAG = 64
MAX_TAGS_PER_REQUEST = 20
MAX_USERNAME = 128
MAX_PASSWORD = 1024
MAX_BATCH_DECISIONS = 200


class InputTooLong(ValueError):
    pass


def check_length(field: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise InputTooLong(f"{field} is {len(value):,} characters long; the limit is {limit:,}")


class LoginLimiter:
    """At most ``max_failures`` failed sign-ins per key (username + client IP) in ``window_s``.

    In memory, per process: run one service process per store, or put a shared limiter in front.
    """

    def __init__(self, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures.get(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, username: str, ip: str) -> int | None:
        """Seconds until the next attempt is allowed, or ``None`` when it is allowed now."""
        key, now = (username.lower(), ip), self.clock()
        with self._lock:
            q = self._prune(key, now)
            if len(q) < self.max_failures:
                return None
            return max(1, int(q[0] + self.window_s - now + 0.999))

    def failure(self, username: str, ip: str) -> None:
        key, now = (username.lower(), ip), self.clock()
        with self._lock:
            q = self._prune(key, now)
            q.append(now)
            self._failures[key] = q
            if len(self._failures) > 10_000:  # bound memory: forget keys with no recent failure
                for k in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window_s]:
                    del self._failures[k]

    def reset(self, username: str, ip: str) -> None:
        with self._lock:
            self._failures.pop((username.lower(), ip), None)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and secrets.compare_digest(str(expected), str(given))
