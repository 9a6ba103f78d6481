"""`learnloop models list|show` (and the models block of `learnloop status`) through click's
CliRunner, on versions registered with ml.registry in a real SQLite MLflow store under a fresh
LEARNLOOP_HOME."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import main
from ml.config import Settings
from ml.registry import Registry

VERSION_HASH = "feedc0de" * 8


def _run(*args):
    return CliRunner().invoke(main, list(args))


def _register(reg: Registry, method: str, metrics: dict, parent: str | None = None) -> str:
    with reg.start_run(f"candidate-{method}") as run_id:
        reg.log_params(run_id, {"lora": {"r": 8}, "prompt": "p" * 7000})
        reg.log_metrics(run_id, metrics)
    return reg.register_version(f"/models/{method}", run_id,
                                {"dataset_version": VERSION_HASH, "method": method,
                                 "base_model": "tiny", "parent_version": parent,
                                 "git_commit": "abc"})


def test_list_and_show_by_number_and_alias(learnloop_home):
    reg = Registry.from_settings(Settings())
    assert reg.tracking_uri == f"sqlite:///{learnloop_home / 'mlflow.db'}"
    one = _register(reg, "lora", {"eval_rougeL": 0.41, "retention_rougeL": 0.38,
                                  "gate_passed": True})
    two = _register(reg, "dpo", {"eval_rougeL": 0.45}, parent=one)
    reg.set_version_tag(two, "gate_passed", "false")  # a tag stands in for a missing metric
    reg.set_alias("champion", one)
    reg.set_alias("challenger", two)

    res = _run("models", "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "learnloop-assistant" and "eval_rougeL" in lines[1]
    assert lines[2].split()[:2] == ["2", "challenger"] and lines[3].split()[:2] == ["1", "champion"]
    assert "dpo" in lines[2] and VERSION_HASH[:12] in lines[2] and VERSION_HASH[:13] not in lines[2]
    assert lines[2].split()[-3:] == ["0.4500", "-", "no"]
    assert lines[3].split()[-3:] == ["0.4100", "0.3800", "yes"]

    listed = json.loads(_run("models", "list", "--json").output)
    assert [v["version"] for v in listed] == ["2", "1"]
    assert listed[1]["aliases"] == ["champion"] and listed[1]["metrics"]["gate_passed"] == 1.0
    assert listed[0]["tags"]["parent_version"] == "1"

    by_alias = _run("models", "show", "champion")
    assert by_alias.exit_code == 0, by_alias.output
    assert by_alias.output.startswith("learnloop-assistant version 1  [champion]")
    for words in ("tag          method = lora", "param        lora.r = 8",
                  "metric       retention_rougeL = 0.38", "source       /models/lora",
                  "(6,000 chars; --json shows all)", "(FINISHED)"):
        assert words in by_alias.output, words
    by_number = json.loads(_run("models", "show", "2", "--json").output)
    assert by_number["version"] == "2" and by_number["aliases"] == ["challenger"]
    assert by_number["tags"]["method"] == "dpo" and by_number["metrics"] == {"eval_rougeL": 0.45}
    assert by_number["params"]["prompt"].endswith("...[truncated, 7000 chars]")
    assert json.loads(_run("models", "show", "challenger", "--json").output) == by_number

    status = json.loads(_run("status", "--json").output)["models"]
    assert status == {"name": "learnloop-assistant", "versions": 2, "champion": "1",
                      "challenger": "2", "latest": "2"}

    for ref, words in (("9", "has no version 9 (versions: 1, 2)"),
                       ("staging", "has no alias 'staging'"),
                       ("0", "expected a positive integer")):
        res = _run("models", "show", ref)
        assert res.exit_code == 2 and words in res.output, (ref, res.output)


def test_an_empty_home_says_so_and_creates_no_store(learnloop_home):
    res = _run("models", "list")
    assert res.exit_code == 0, res.output
    assert "no versions of the registered model 'learnloop-assistant' yet" in res.output
    assert json.loads(_run("models", "list", "--json").output) == []
    res = _run("models", "show", "champion")
    assert res.exit_code == 2 and "has no alias 'champion'" in res.output
    status = _run("status", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["models"] == {"name": "learnloop-assistant", "versions": 0,
                                                   "champion": None, "challenger": None,
                                                   "latest": None}
    assert "models     learnloop-assistant: versions 0 · latest - · champion - · challenger -" \
        in _run("status").output
    assert not (learnloop_home / "mlflow.db").exists()


def test_list_shows_the_method_the_training_assets_tag(learnloop_home):
    """The assets tag ``learnloop.method`` / ``learnloop.role`` (assets.training.lineage_tags)."""
    from assets.training import lineage_tags

    reg = Registry.from_settings(Settings())
    with reg.start_run("base") as run_id:
        base = reg.register_version("/models/base", run_id, {"learnloop.role": "base"})
    with reg.start_run("candidate") as run_id:
        cand = reg.register_version("/models/cand", run_id, lineage_tags(
            role="candidate", method="lora+dpo", base_model="/models/base",
            dataset_version=VERSION_HASH, parent_version=base, dagster_run_id="r"))
    lines = _run("models", "list").output.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert "lora+dpo" in rows[cand]
    assert "base" in rows[base]
