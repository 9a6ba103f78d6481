"""The `learnloop` command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestration.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
LEARNLOOP = Path(sys.executable).with_name("learnloop")


def test_import_reports_accepted_and_quarantined(learnloop_home, tmp_path):
    bad = tmp_path / "mixed.jsonl"
    good = {"interaction_id": "x1", "session_id": "s", "timestamp": "2026-11-01T10:00:00Z",
            "response": "hello"}
    bad.write_text(json.dumps(good) + "\n{broken\n" + json.dumps({**good, "interaction_id": ""}) + "\n")
    res = CliRunner().invoke(main, ["import", "native", str(bad), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert (summary["accepted"], summary["quarantined"]) == (1, 2)
    assert all(Path(f).exists() for f in summary["files"])


def test_import_hh_rlhf_sample_lands_every_pair(learnloop_home):
    res = CliRunner().invoke(main, ["import", "hh-rlhf", str(SHARED / "hh-rlhf-helpful-base" /
                                                             "test.jsonl.gz"), "--tenant", "hh"])
    assert res.exit_code == 0, res.output
    assert "2,354 accepted, 0 quarantined" in res.output


def test_import_rejects_unknown_format_by_name(learnloop_home, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    res = CliRunner().invoke(main, ["import", "csv", str(f)])
    assert res.exit_code != 0
    assert "'csv' is not one of" in res.output and "openai-chat" in res.output


def test_status_json_on_an_empty_home_reports_zeros(learnloop_home):
    res = CliRunner().invoke(main, ["status", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert st["interactions"] == 0 and st["quarantined"] == 0
    assert st["errors"] == {"pending": 0, "confirmed": 0, "dismissed": 0}
    assert st["samples"] == {"pending": 0, "approved": 0, "rejected": 0}
    assert st["datasets"] == 0
    assert st["models"] == {"versions": 0, "champion": None, "challenger": None}


