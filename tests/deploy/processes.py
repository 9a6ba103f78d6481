"""Processes the deploy tests start (servers, workers): a free local port, and stopping a
process group with everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """Stop the process group this test started (the process and its children): SIGTERM, then
    SIGKILL to whatever of the group is left after ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # anyone of the group left?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
