"""A small, thread-safe circuit breaker (closed -> open -> half-open -> closed)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failed calls; after ``reset_timeout_s`` it
    lets ``half_open_max_calls`` trial calls through (half-open). A trial success closes it, a
    trial failure opens it again for another cool-down.

    A "call" is one logical provider call *after* its retries, so a burst of retried 503s counts
    once. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_timeout_s < 0:
            raise ValueError(f"reset_timeout_s must be >= 0, got {reset_timeout_s}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        self.opened_count = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state}, failures={self._failures})"

    def _refresh(self) -> None:
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._state = HALF_OPEN
            self._trials = 0
            log.info("circuit %s half-open after %.1fs cool-down", self.name, self.reset_timeout_s)

    @property
    def state(self) -> str:
        with self._lock:
            self._refresh()
            return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def retry_in_s(self) -> float:
        with self._lock:
            if self._state != OPEN:
                return 0.0
            return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))

    def allow_request(self) -> bool:
        """True when a call may go out now (reserves a trial slot when half-open)."""
        with self._lock:
            self._refresh()
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and self._trials < self.half_open_max_calls:
                self._trials += 1
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            if self._state != CLOSED:
                log.info("circuit %s closed", self.name)
            self._state = CLOSED
            self._failures = 0
            self._trials = 0

    def record_failure(self) -> None:
        with self._lock:
            self._refresh()
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                if self._state != OPEN:
                    self.opened_count += 1
                    log.warning("circuit %s open after %d failure(s)", self.name, self._failures)
                self._state = OPEN
                self._opened_at = self._clock()
                self._trials = 0
