"""Sign-in rate limiting, CSRF tokens and input limits of the review service."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

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
    """Sign-in rate limit, in memory, per process.

    Two limits over a sliding window of ``window_s`` seconds: at most ``max_failures`` attempts
    per (username, client IP) and at most ``max_per_ip`` attempts per client IP (any usernames, so
    one address cannot spray passwords over many accounts). An attempt is counted by
    ``attempt()`` *before* the password is checked, atomically under one lock, so concurrent
    requests cannot all slip through between the check and the count. A successful sign-in takes
    its own attempt back and clears the (username, IP) history.

    Run one service process per store, or put a shared limiter in front when scaling out.
    """

    def __init__(self, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic, max_per_ip: int | None = None):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.max_per_ip = max_per_ip if max_per_ip is not None else 4 * max_failures
        self._attempts: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._attempts.get(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def _keys(self, username: str, ip: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", f"{username.lower()}\x00{ip}"), ("ip", ip)

    def _wait(self, q: deque[float], limit: int, now: float) -> int | None:
        if len(q) < limit:
            return None
        return max(1, int(q[len(q) - limit] + self.window_s - now + 0.999))

    def attempt(self, username: str, ip: str) -> tuple[int | None, float]:
        """Count one sign-in attempt; returns ``(retry_after, stamp)``.

        ``retry_after`` is ``None`` when the attempt may go ahead (it is then counted, with the
        time ``stamp``), else the seconds to wait (nothing is counted).
        """
        user_key, ip_key = self._keys(username, ip)
        now = self.clock()
        with self._lock:
            uq, iq = self._prune(user_key, now), self._prune(ip_key, now)
            waits = [w for w in (self._wait(uq, self.max_failures, now),
                                 self._wait(iq, self.max_per_ip, now)) if w is not None]
            if waits:
                return max(waits), now
            uq.append(now)
            iq.append(now)
            self._attempts[user_key], self._attempts[ip_key] = uq, iq
            if len(self._attempts) > 20_000:  # bound memory: forget keys with no recent attempt
                for k in [k for k, v in self._attempts.items()
                          if not v or v[-1] <= now - self.window_s]:
                    del self._attempts[k]
            return None, now

    def retry_after(self, username: str, ip: str) -> int | None:
        """Seconds until the next attempt is allowed, or ``None`` (counts nothing)."""
        user_key, ip_key = self._keys(username, ip)
        now = self.clock()
        with self._lock:
            waits = [w for w in (self._wait(self._prune(user_key, now), self.max_failures, now),
                                 self._wait(self._prune(ip_key, now), self.max_per_ip, now))
                     if w is not None]
            return max(waits) if waits else None

    def succeeded(self, username: str, ip: str, stamp: float) -> None:
        """The attempt made at ``stamp`` signed in: forget the (username, IP) history and take
        that attempt back from the IP's count."""
        user_key, ip_key = self._keys(username, ip)
        with self._lock:
            self._attempts.pop(user_key, None)
            q = self._attempts.get(ip_key)
            if q is not None:
                try:
                    q.remove(stamp)
                except ValueError:
                    pass  # already outside the window


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and secrets.compare_digest(str(expected), str(given))
