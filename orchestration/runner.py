"""Run the asset graph in-process against the persistent Dagster instance (used by the CLI's
`demo` and `run` commands; the runs show up in the Dagster UI afterwards)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from ml import warehouse as wh
from ml.config import Settings

DAGSTER_YAML = """\
# Dagster instance of learnloop (embedded default: SQLite storage in this folder).
# For PostgreSQL: `learnloop` writes DAGSTER_YAML_POSTGRES (this file plus a `storage:` block
# reading LEARNLOOP_DAGSTER_PG_URL) when that variable is set and no dagster.yaml exists yet.
# A cluster (Kubernetes, Celery): deploy/k8s/dagster.yaml, deploy/celery/dagster.yaml.
telemetry:
  enabled: false
python_logs:
  # learnloop's own warnings (e.g. an ingest worker that crashed) reach the run's event log
  managed_python_loggers: [ml]
# runs launched by the daemon (schedules, sensors, the UI's Materialize) wait in a queue and start
# when concurrency.runs allows; `learnloop run` executes its runs in its own process (no queue)
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 5
concurrency:
  pools:
    # every pool one step at a time: the warehouse pool serializes the DuckDB writers
    default_limit: 1
  runs:
    # sized for 2 cores (docs/deployment.md, "At scale"): two runs at a time, of which at most
    # one trains or evaluates a model and at most one calls LLM providers (audit, teaching);
    # the learnloop/workload tag of each job (orchestration/jobs.py) says which it is
    max_concurrent_runs: 2
    tag_concurrency_limits:
      - key: learnloop/workload
        value: training
        limit: 1
      - key: learnloop/workload
        value: llm
        limit: 1
run_monitoring:
  # the monitoring daemon (`dagster dev`, `dagster-daemon run`): a run that never starts, or
  # hangs while being canceled, is marked failed; a finished run that still holds pool slots (its
  # process was killed mid-step) has them freed after free_slots_after_run_end_seconds.
  # `learnloop run` does the same for the runs of dead learnloop processes (docs/operations.md)
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0  # the default run launcher cannot resume a run: fail it instead
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 30
# a failed run is launched again by the daemon when its job or run asks for it (the landing
# sensor's ingest runs carry dagster/max_retries); other runs are not retried (default 0)
run_retries:
  enabled: true
  max_retries: 0
"""

_POSTGRES_STORAGE = """\
storage:
  postgres:
    postgres_url:
      env: LEARNLOOP_DAGSTER_PG_URL
"""
DAGSTER_YAML_POSTGRES = DAGSTER_YAML + _POSTGRES_STORAGE

# dagster.yaml files written by earlier versions: replaced by the current one (a file that differs
# from every shipped version was edited by someone and is left alone)
_EARLIER_DAGSTER_YAMLS = (
    """\
# Dagster instance of learnloop (embedded default: SQLite storage in this folder).
# For PostgreSQL, replace with:  storage: {postgres: {postgres_url: {env: LEARNLOOP_DAGSTER_PG_URL}}}
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
""",
    """\
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
""",
    """\
# Dagster instance of learnloop (embedded default: SQLite storage in this folder).
# For PostgreSQL: `learnloop` writes DAGSTER_YAML_POSTGRES (this file plus a `storage:` block
# reading LEARNLOOP_DAGSTER_PG_URL) when that variable is set and no dagster.yaml exists yet.
telemetry:
  enabled: false
python_logs:
  # learnloop's own warnings (e.g. an ingest worker that crashed) reach the run's event log
  managed_python_loggers: [ml]
concurrency:
  pools:
    default_limit: 1
run_monitoring:
  # the monitoring daemon (`dagster dev`, `dagster-daemon run`): a run that never starts, or
  # hangs while being canceled, is marked failed; a finished run that still holds pool slots (its
  # process was killed mid-step) has them freed after free_slots_after_run_end_seconds.
  # `learnloop run` does the same for the runs of dead learnloop processes (docs/operations.md)
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0  # the default run launcher cannot resume a run: fail it instead
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 30
# a failed run is launched again by the daemon when its job or run asks for it (the landing
# sensor's ingest runs carry dagster/max_retries); other runs are not retried (default 0)
run_retries:
  enabled: true
  max_retries: 0
""",
)


def prepare_dagster_home(settings: Settings) -> Path:
    """Create $LEARNLOOP_HOME/dagster_home with a dagster.yaml unless DAGSTER_HOME is set: the
    PostgreSQL variant when LEARNLOOP_DAGSTER_PG_URL is set. A dagster.yaml that an earlier
    version wrote (unedited, either variant) is brought up to date in the same variant; an
    edited one is left alone."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
    else:
        home = settings.dagster_home_dir
        os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        pg = bool(os.environ.get("LEARNLOOP_DAGSTER_PG_URL"))
        cfg.write_text(DAGSTER_YAML_POSTGRES if pg else DAGSTER_YAML, encoding="utf-8")
    else:
        text = cfg.read_text(encoding="utf-8")
        if text in _EARLIER_DAGSTER_YAMLS:  # a SQLite one stays SQLite
            cfg.write_text(DAGSTER_YAML, encoding="utf-8")
        elif text in {earlier + _POSTGRES_STORAGE for earlier in _EARLIER_DAGSTER_YAMLS}:
            cfg.write_text(DAGSTER_YAML_POSTGRES, encoding="utf-8")
    return home


def instance_for(settings: Settings) -> dg.DagsterInstance:
    prepare_dagster_home(settings)
    return dg.DagsterInstance.get()


# ---- runs owned by a learnloop process: tags, dead owners, the warehouse slot ------------------------
OWNER_HOST_TAG = "learnloop/owner_host"
OWNER_PID_TAG = "learnloop/owner_pid"
# the owner process's start time: a pid reused by another process is not mistaken for the owner
OWNER_STARTED_TAG = "learnloop/owner_started"
COMMAND_TAG = "learnloop/command"


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when there is none."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # exists, owned by another user
        return -1.0


def owner_tags(command: str) -> dict[str, str]:
    """Tags naming this process as the owner of the runs it executes in-process."""
    pid = os.getpid()
    return {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(pid),
            OWNER_STARTED_TAG: f"{_process_started(pid) or 0:.2f}", COMMAND_TAG: command}


def owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the learnloop process that owns a run (its tags) still runs: None when the run is
    not a learnloop CLI run or its owner is on another host (cannot tell from here)."""
    if OWNER_PID_TAG not in tags or tags.get(OWNER_HOST_TAG) != socket.gethostname():
        return None
    started = _process_started(int(tags[OWNER_PID_TAG]))
    if started is None:
        return False
    if started < 0:
        return True
    recorded = float(tags.get(OWNER_STARTED_TAG) or 0)
    return not recorded or abs(started - recorded) < 1.0  # same pid, another process: dead


@dataclass(frozen=True)
class SlotHolder:
    """A run that holds a slot of the pool (``claimed``) or waits in its queue."""

    run_id: str
    job: str
    status: str  # the run's status; "MISSING" when the instance has no such run
    claimed: bool
    pid: str  # the owning learnloop process, "" for a run started elsewhere
    alive: bool | None  # owner_alive

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "not started by learnloop run"
        return f"run {self.run_id} ({self.job}, {self.status}, {who})"


def pool_holders(instance: dg.DagsterInstance, pool: str) -> list[SlotHolder]:
    """The runs that hold or wait for a slot of ``pool``, in the instance's concurrency table."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    claimed = {c.run_id for c in info.claimed_slots}
    out = []
    for run_id in dict.fromkeys([*claimed, *(p.run_id for p in info.pending_steps)]):
        run = instance.get_run_by_id(run_id)
        tags = dict(run.tags) if run else {}
        out.append(SlotHolder(run_id=run_id, job=run.job_name if run else "?",
                              status=run.status.value if run else "MISSING",
                              claimed=run_id in claimed, pid=tags.get(OWNER_PID_TAG, ""),
                              alive=owner_alive(tags)))
    return out


def release_dead_runs(instance: dg.DagsterInstance, pool: str) -> list[str]:
    """Free the ``pool`` slots of runs that can never free them: finished runs (their process was
    killed mid-step), runs missing from the instance, and unfinished runs whose owning learnloop
    process is gone (marked FAILURE first). Returns one line per run released."""
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    done = []
    for h in pool_holders(instance, pool):
        run = instance.get_run_by_id(h.run_id)
        if run is not None and run.status not in FINISHED_STATUSES:
            # this process runs one run at a time: an unfinished run of its own is a leftover
            mine = h.pid == str(os.getpid()) and run.tags.get(OWNER_HOST_TAG) == socket.gethostname()
            if h.alive is not False and not mine:
                continue
            instance.report_run_failed(
                run, f"the learnloop process that ran it (pid {h.pid} on "
                     f"{run.tags.get(OWNER_HOST_TAG)}) is gone; marked failed by pid "
                     f"{os.getpid()}, which freed its {pool} slot")
            what = f"was {h.status} with its owner (pid {h.pid}) gone: marked FAILURE"
        else:
            what = ("is not in this Dagster instance" if run is None
                    else f"ended ({h.status}) without freeing its slot")
        instance.event_log_storage.free_concurrency_slots_for_run(h.run_id)
        done.append(f"released the {pool} slot of run {h.run_id} ({h.job}): it {what}")
    return done


def wait_for_pool(instance: dg.DagsterInstance, pool: str,
                  say: Callable[[str], None], poll_seconds: float = 1.0) -> None:
    """Return once ``pool`` has a free slot: first release the slots of dead runs (saying what was
    released), then, while live runs hold every slot, say once per holder which run holds it and
    sleep (an interruptible sleep: Ctrl-C and SIGTERM stop the wait)."""
    said: set[str] = set()
    while True:
        for line in release_dead_runs(instance, pool):
            say(line)
        info = instance.event_log_storage.get_concurrency_info(pool)
        holders = [h for h in pool_holders(instance, pool) if h.claimed]
        if info.limit is None or len(info.claimed_slots) < info.limit:
            return
        for h in holders:
            if h.run_id not in said:
                said.add(h.run_id)
                say(f"waiting for the {pool} slot held by {h.describe()}; if that run is dead, "
                    f"terminate it in the Dagster UI (Runs) and its slot is freed")
        time.sleep(poll_seconds)


class RunGuard:
    """What a CLI command wraps each in-process run with: a run id chosen here and owner tags (so a
    later command can tell a run of a dead process from a live one), waiting for a free slot of the
    warehouse pool before the run starts (releasing dead runs' slots, saying who holds it), and a
    prompt stop on Ctrl-C / SIGTERM (:meth:`interrupts`)."""

    def __init__(self, instance: dg.DagsterInstance, command: str,
                 say: Callable[[str], None], pool: str | None = None,
                 grace_seconds: float = 5.0) -> None:
        from assets.resources import WAREHOUSE_POOL

        self.instance, self.say = instance, say
        self.pool = pool or WAREHOUSE_POOL
        self.tags = owner_tags(command)
        self.grace_seconds = grace_seconds
        self.current_run_id: str | None = None
        self.interrupted = False  # a SIGINT/SIGTERM arrived

    def start_run(self) -> str:
        """Before each run: wait for the pool, then the new run's id."""
        if self.interrupted:
            raise KeyboardInterrupt
        wait_for_pool(self.instance, self.pool, self.say)
        self.current_run_id = str(uuid.uuid4())
        return self.current_run_id

    @contextlib.contextmanager
    def interrupts(self):
        """SIGINT and SIGTERM stop the command promptly. Dagster holds interrupts back during an
        in-process run and only raises them inside a step's own code (where the run then fails
        and frees its slot); while the run waits for a slot or sits in Dagster's own code it
        ignores them. So the signal also reaches a watcher thread (``signal.set_wakeup_fd``):
        when the run has not ended ``grace_seconds`` later, the watcher marks it CANCELED, frees
        its slots and exits with status 130."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def _raise(signo, _frame):
            raise KeyboardInterrupt

        handlers = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        finished = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(read_fd, finished), daemon=True,
                                   name="learnloop-interrupts")
        watcher.start()
        try:
            yield self
        finally:
            finished.set()
            signal.set_wakeup_fd(old_fd)
            os.close(write_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _watch(self, read_fd: int, finished: threading.Event) -> None:
        try:
            while not finished.is_set():
                data = os.read(read_fd, 16)
                if not data:  # the pipe was closed: the command ended
                    return
                if not {signal.SIGINT.value, signal.SIGTERM.value} & set(data):
                    continue
                self.interrupted = True
                if finished.wait(self.grace_seconds):
                    return
                self._cancel_current_run()
                os._exit(130)
        finally:
            os.close(read_fd)

    def _cancel_current_run(self) -> None:
        from dagster._core.storage.dagster_run import FINISHED_STATUSES

        run_id = self.current_run_id
        run = self.instance.get_run_by_id(run_id) if run_id else None
        if run is not None and run.status not in FINISHED_STATUSES:
            self.instance.report_run_canceled(
                run, f"stopped by SIGINT/SIGTERM of the learnloop process (pid {os.getpid()})")
        if run_id:
            self.instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        print(f"interrupted: run {run_id or '-'} marked CANCELED and its {self.pool} slot freed",
              file=sys.stderr, flush=True)


def _logging(level: str) -> dict:
    """Run config for the console logger: the CLI shows a progress bar, the UI keeps the full log."""
    return {"loggers": {"console": {"config": {"log_level": level}}}}


def _guarded(guard: RunGuard | None) -> dict:
    """execute_in_process arguments of a guarded run: its id (after waiting for the pool) and
    the owner tags."""
    return {} if guard is None else {"run_id": guard.start_run(), "tags": guard.tags}


def run_ingest(defs: dg.Definitions, instance: dg.DagsterInstance, days: Iterable[str],
               on_day: Callable[[str, dg.ExecuteInProcessResult], None] | None = None,
               log_level: str = "WARNING", guard: RunGuard | None = None) -> list[str]:
    """Materialize the ingest job for each day (daily partitions: nothing to register first);
    with ``guard``, each run waits for the warehouse slot first and carries the owner tags."""
    days = list(days)
    job = defs.resolve_job_def("ingest_job")
    failed = []
    for day in days:
        result = job.execute_in_process(partition_key=day, instance=instance,
                                        run_config=_logging(log_level), raise_on_error=False,
                                        **_guarded(guard))
        if not result.success:
            failed.append(day)
        if on_day:
            on_day(day, result)
    return failed


RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def all_days_tags(settings: Settings | None = None, target=None) -> dict[str, str]:
    """Run tags of a run over every landing day of the warehouse's interactions: the partition
    range from the first to the last (today alone when there is none yet). A job of day-
    partitioned assets (the audit) run without a partition key works on the whole history this
    way; a run over the whole partition set since 2000 would record ~10k empty partitions.
    ``target``: the warehouse (default: the settings')."""
    if target is None:
        target = (settings or Settings()).warehouse_target
    days = wh.landing_day_range(target)
    if days is None:
        today = datetime.now(UTC).date().isoformat()
        days = (today, today)
    return {RANGE_START_TAG: days[0], RANGE_END_TAG: days[1]}


def run_job(defs: dg.Definitions, instance: dg.DagsterInstance, name: str,
            log_level: str = "WARNING", run_config: dict | None = None,
            output: Path | None = None, guard: RunGuard | None = None) -> dg.ExecuteInProcessResult:
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
    guarded = _guarded(guard)  # waits for the pool before the terminal is silenced
    if job.partitions_def is not None:  # audit_job, manual_audit_job: every landing day
        guarded["tags"] = {**guarded.get("tags", {}), **all_days_tags()}
    if output is None:
        return job.execute_in_process(instance=instance, run_config=config, raise_on_error=False,
                                      **guarded)
    output.parent.mkdir(parents=True, exist_ok=True)
    # two real file descriptors, so Dagster still captures each stream of the steps' output
    # (its mirrors copy into them) while the terminal gets nothing
    with open(os.devnull, "w", encoding="utf-8") as sink_out, \
            open(os.devnull, "w", encoding="utf-8") as sink_err, \
            contextlib.redirect_stdout(sink_out), contextlib.redirect_stderr(sink_err):
        result = job.execute_in_process(instance=instance, run_config=config, raise_on_error=False,
                                        **guarded)
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


@dataclass
class JobReport:
    """What the CLI says about one finished run: ``ok`` (the run succeeded and no job produced
    nothing because every provider call failed), one line per problem (a failed step and its
    error's first line; a stage whose every provider call failed), warnings (partial failures,
    failed checks) and the retries it took."""

    ok: bool
    problems: list[str]
    warnings: list[str]
    retries: str


def _first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "(no message)"


def _error_line(error) -> str:
    """The first line of the first error in a chain that is not Dagster's own wrapper (the
    user's or the library's error, e.g. the database driver's), else of the outermost one."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause
    mine = [e for e in chain if not (e.cls_name or "").startswith("Dagster")] or chain
    return _first_line(mine[0].message if mine else "")


def _chain_text(error) -> str:
    out = []
    while error is not None:
        out.append(error.message or "")
        error = error.cause
    return "\n".join(out)


def asset_materializations(result: dg.ExecuteInProcessResult) -> list[dg.AssetMaterialization]:
    """One materialization per asset of the run: a run over a range of partitions (the audit
    over every landing day) records one per partition, all with the step's metadata."""
    seen, out = set(), []
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        if mat.asset_key not in seen:
            seen.add(mat.asset_key)
            out.append(mat)
    return out


def job_report(result: dg.ExecuteInProcessResult) -> JobReport:
    """:class:`JobReport` of an in-process run, from its events and its materializations'
    metadata (``failures``, ``audited``, ``retries`` of the audit and teaching assets)."""
    problems, warnings = [], []
    step_retries = 0
    for event in result.all_events:
        kind = event.event_type_value
        if kind == "STEP_FAILURE":
            problems.append(f"step {event.step_key} failed: "
                            f"{_error_line(event.step_failure_data.error)}")
        elif kind == "STEP_UP_FOR_RETRY":
            step_retries += 1
        elif kind == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            if not ev.passed:
                warnings.append(f"check {ev.check_name} on {ev.asset_key.to_user_string()} "
                                f"failed ({ev.severity.value})")
    if not result.success and not problems:
        run_failure = [e for e in result.all_events
                       if e.event_type == dg.DagsterEventType.RUN_FAILURE]
        error = _event_error(run_failure[-1]) if run_failure else None
        resource = re.search(r"on ResourceDefinition (\w+)", _chain_text(error))
        where = f"resource {resource.group(1)} did not start: " if resource else ""
        if error is not None:
            reason = _error_line(error)
        else:
            reason = _first_line(run_failure[-1].message if run_failure else "")
        problems.append(f"run failed: {where}{reason}")
    llm_retries = provider_failures = 0
    for mat in asset_materializations(result):
        meta = {k: v.value for k, v in mat.metadata.items()}
        asset = mat.asset_key.to_user_string()
        llm_retries += int(meta.get("retries") or 0)
        failures = int(meta.get("failures") or 0)
        provider_failures += failures
        line = provider_shortfall(asset, meta)
        if line:
            problems.append(line)
        elif failures:
            warnings.append(f"{asset}: {failures:,} item(s) failed and are retried by the next run "
                            f"(`learnloop status` shows them)")
    parts = [f"{n:,} {what}" for n, what in ((step_retries, "step retries"),
                                             (llm_retries, "LLM call retries"),
                                             (provider_failures, "failed items"))
             if n]
    return JobReport(ok=result.success and not problems, problems=problems, warnings=warnings,
                     retries=", ".join(parts))


def provider_shortfall(asset: str, meta: dict) -> str | None:
    """The line that makes a run count as failed although Dagster says it succeeded: every audit
    (``audited_errors``) or every LLM teacher proposal (``teacher_samples``) of the run failed,
    so the stage produced nothing; None otherwise."""
    failures = int(meta.get("failures") or 0)
    if not failures:
        return None
    if asset == "audited_errors" and not int(meta.get("audited") or 0):
        return (f"audited_errors: all {failures:,} audits failed ({meta.get('auditor', '?')}): "
                f"nothing was audited; they are retried by the next run")
    if asset == "teacher_samples":
        by_source = meta.get("samples_by_source") or {}
        if not any(str(k).startswith("llm:") and v for k, v in by_source.items()) and \
                not int(meta.get("proposals") or 0):
            return (f"teacher_samples: all {failures:,} teacher proposals failed "
                    f"({meta.get('teacher', '?')}); they are retried by the next run")
    return None
