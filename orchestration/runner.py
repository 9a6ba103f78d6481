"""Run the asset graph in-process against the persistent Dagster instance (used by the CLI's
`demo` and `run` commands; the runs show up in the Dagster UI afterwards)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterable

import dagster as dg

from ml.config import Settings

DAGSTER_YAML = """\
# Dagster instance of learnloop (embedded default: SQLite storage in this folder).
# For PostgreSQL, replace with:  storage: {postgres: {postgres_url: {env: LEARNLOOP_DAGSTER_PG_URL}}}
telemetry:
  enabled: false
python_logs:
  # learnloop's own warnings (e.g. an ingest worker that crashed) reach the run's event log
  managed_python_loggers: [ml]
concurrency:
  pools:
    default_limit: 1
"""


def prepare_dagster_home(settings: Settings) -> Path:
    """Create $LEARNLOOP_HOME/dagster_home with a dagster.yaml unless DAGSTER_HOME is set."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
    else:
        home = settings.dagster_home_dir
        os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    return home


def instance_for(settings: Settings) -> dg.DagsterInstance:
    prepare_dagster_home(settings)
    return dg.DagsterInstance.get()


def _logging(level: str) -> dict:
    """Run config for the console logger: the CLI shows a progress bar, the UI keeps the full log."""
    return {"loggers": {"console": {"config": {"log_level": level}}}}


def run_ingest(defs: dg.Definitions, instance: dg.DagsterInstance, days: Iterable[str],
               on_day: Callable[[str, dg.ExecuteInProcessResult], None] | None = None,
               log_level: str = "WARNING") -> list[str]:
    """Materialize the ingest job for each day (adding the dynamic partitions first)."""
    from assets.partitions import landing_date_partitions

    days = list(days)
    known = set(instance.get_dynamic_partitions(landing_date_partitions.name))
    new = [d for d in days if d not in known]
    if new:
        instance.add_dynamic_partitions(landing_date_partitions.name, new)
    job = defs.resolve_job_def("ingest_job")
    failed = []
    for day in days:
        result = job.execute_in_process(partition_key=day, instance=instance,
                                        run_config=_logging(log_level), raise_on_error=False)
        if not result.success:
            failed.append(day)
        if on_day:
            on_day(day, result)
    return failed


def run_job(defs: dg.Definitions, instance: dg.DagsterInstance, name: str,
            log_level: str = "WARNING", run_config: dict | None = None,
            output: Path | None = None) -> dg.ExecuteInProcessResult:
    """Execute one job in this process. With ``output``, what the run writes to this process's
    stdout and stderr (dbt's log lines, library progress bars, console logs) goes to that file
    (replaced at each run) instead of the terminal; the Dagster UI keeps the run's full event log either way."""
    config = {**(run_config or {}), **_logging(log_level)}
    job = defs.resolve_job_def(name)
    if output is None:
        return job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    # the file holds the job's last run only (the Dagster UI keeps every run's event log)
    with open(output, "w", encoding="utf-8") as out, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        return job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
