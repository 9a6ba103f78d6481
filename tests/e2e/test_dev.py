"""`learnloop dev`: the Dagster UI through `dg dev`, on a port that is free."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import pytest

from orchestration.cli import choose_dev_port

LEARNLOOP = Path(sys.executable).with_name("learnloop")


def test_an_explicit_port_that_is_taken_is_an_error_naming_it():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(click.BadParameter, match=f"port {port} on 127.0.0.1 is in use"):
            choose_dev_port("127.0.0.1", port)


def test_a_bad_port_variable_is_named(monkeypatch):
    monkeypatch.setenv("LEARNLOOP_DAGSTER_PORT", "30x0")
    with pytest.raises(click.ClickException, match="LEARNLOOP_DAGSTER_PORT='30x0'"):
        choose_dev_port("127.0.0.1", None)


def test_dev_serves_the_ui_through_dg_on_a_free_port_when_the_preferred_one_is_taken(
        learnloop_home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        env = {**os.environ, "LEARNLOOP_DAGSTER_PORT": str(taken)}
        proc = subprocess.Popen([str(LEARNLOOP), "dev"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            first = proc.stdout.readline()
            m = re.search(r"http://127\.0\.0\.1:(\d+)", first)
            assert m, first
            port = int(m.group(1))
            assert port != taken and f"port {taken} (LEARNLOOP_DAGSTER_PORT) is in use" in first
            deadline, status = time.monotonic() + 120, None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info",
                                                timeout=2) as resp:
                        status = resp.status
                        break
                except OSError:
                    time.sleep(1)
            assert status == 200, f"no UI on {port}; dev exited with {proc.poll()}"
            # the process that serves is dg's (execv: same pid), not the superseded dagster dev
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert Path(cmdline[1].decode()).name == "dg" and cmdline[2] == b"dev", cmdline
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
