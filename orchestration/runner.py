"""Run the asset graph in-process against the persistent Dagster instance (used by the CLI's
`demo` and `run` commands; the runs show up in the Dagster UI afterwards)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

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
# a failed run is launched again by the daemon when its job or run asks for it (the landing
# sensor's ingest runs carry dagster/max_retries); other runs are not retried (default 0)
run_retries:
  enabled: true
  max_retries: 0
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
    """Materialize the ingest job for each day (daily partitions: nothing to register first)."""
    days = list(days)
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
    """Execute one job in this process.

    With ``output``, nothing the run prints reaches the terminal; afterwards that file (replaced at
    each run) holds the run's captured stdout and stderr (dbt's log lines, library progress bars,
    console logs) followed by its warnings, errors and run events, read back from the instance.
    Reading them back, rather than mirroring the terminal into the file while the run goes, makes
    the file complete: Dagster's mirror is a ``tail -F`` subprocess that is stopped as soon as the
    run ends and may not have copied the last lines yet (dagster-io/dagster#23336). The Dagster UI
    keeps the run's full event log and captured output either way."""
    config = {**(run_config or {}), **_logging(log_level)}
    job = defs.resolve_job_def(name)
    if output is None:
        return job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    # two real file descriptors, so Dagster still captures each stream of the steps' output
    # (its mirrors copy into them) while the terminal gets nothing
    with open(os.devnull, "w", encoding="utf-8") as sink_out, \
            open(os.devnull, "w", encoding="utf-8") as sink_err, \
            contextlib.redirect_stdout(sink_out), contextlib.redirect_stderr(sink_err):
        result = job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)
    write_run_output(instance, result.run_id, output)
    return result


def write_run_output(instance: dg.DagsterInstance, run_id: str, output: Path) -> None:
    """Write one run's captured stdout/stderr, then its warnings, errors and run-level events with
    each failure's message and causes (so a failure's reason is at the end of the file, where
    ``tail`` looks)."""
    records = instance.all_logs(run_id)
    with open(output, "w", encoding="utf-8") as out:
        for rec in records:
            event = rec.dagster_event
            if event is None or event.event_type_value != "LOGS_CAPTURED":
                continue
            captured = event.logs_captured_data
            log_key = [run_id, "compute_logs", captured.file_key]
            data = instance.compute_log_manager.get_log_data(log_key)
            steps = ", ".join(captured.step_keys or []) or "run"
            for stream, raw in (("stdout", data.stdout), ("stderr", data.stderr)):
                if raw:
                    out.write(f"===== {stream} of {steps} =====\n")
                    out.write(raw.decode("utf-8", errors="replace"))
                    if not raw.endswith(b"\n"):
                        out.write("\n")
        out.write("===== run events (warnings, errors, run start/end) =====\n")
        said = set()
        for rec in records:
            event = rec.dagster_event
            run_level = event is not None and event.event_type.name.startswith("RUN_")
            if rec.level < logging.WARNING and not run_level:
                continue
            kind = event.event_type.name if event is not None else "LOG"
            when = datetime.fromtimestamp(rec.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"{when} {logging.getLevelName(rec.level)} {rec.step_key or '-'} {kind}: "
                      f"{rec.user_message}\n")
            error = _event_error(event)
            # the message and its causes (the stack traces are in the stderr part above)
            while error is not None and error.message not in said:
                said.add(error.message)
                out.write(f"  {error.message.strip()}\n")
                error = error.cause


def _event_error(event):
    """The error a step or run failure carries, if any."""
    if event is None:
        return None
    if event.event_type.name == "STEP_FAILURE":
        return event.step_failure_data.error
    if event.event_type.name in ("RUN_FAILURE", "ENGINE_EVENT") and event.event_specific_data:
        return getattr(event.event_specific_data, "error", None)
    return None


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
