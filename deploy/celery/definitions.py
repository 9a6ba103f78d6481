"""learnloop's code location for a Celery deployment: the same definitions as
``orchestration.definitions``, with every step of a run sent to the Celery workers.

Load it with deploy/celery/workspace.yaml (``dagster code-server start -f
deploy/celery/definitions.py -d .`` from the repository root, or ``dagster-webserver -w
deploy/celery/workspace.yaml``). The executor's settings are deploy/celery/celery.yaml, the
file the workers start with; the broker and backend URLs are read from the environment when a
run starts, not here.
"""

from pathlib import Path

import yaml
from dagster_celery import celery_executor

from orchestration.definitions import build_definitions

CELERY_YAML = Path(__file__).with_name("celery.yaml")


def celery_executor_config(path: Path = CELERY_YAML) -> dict:
    """The executor config of ``path`` (its ``execution.config``)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    config = (raw.get("execution") or {}).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: no execution.config mapping (the Celery executor's config)")
    return config


defs = build_definitions(executor=celery_executor.configured(celery_executor_config()))
