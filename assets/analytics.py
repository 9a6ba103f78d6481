"""Stage `analytics`: the dbt project ``dbt_project/`` on the DuckDB warehouse, as Dagster assets.

- ``dbt_project``: the ``DbtProject`` (profiles.yml lives inside the project directory).
- ``LearnloopDbtTranslator``: dbt sources -> the asset that writes each
  (``meta.dagster.asset_key`` in ``models/staging/_sources.yml``, which is generated from the
  table registry ``ml.tables``); dbt models -> group ``analytics``, kinds {dbt, duckdb}; dbt tests -> asset
  checks on the model they test.
- ``dbt_analytics_assets``: one ``@dbt_assets`` multi-asset running ``dbt build`` in the
  ``warehouse`` pool (writers of the DuckDB file are serialized); dbt's event stream turns every
  model into a materialization (tables with ``dagster/row_count``) and every dbt test into an asset
  check evaluation.
- ``dbt_resource``: the ``DbtCliResource`` to bind under the key ``dbt``.

The manifest. ``@dbt_assets`` needs ``target/manifest.json`` when this module is imported, and a
clean checkout has none (target/ is gitignored). ``ensure_manifest()`` runs at import: it runs
``dbt parse`` when the manifest is missing or older than any file of the dbt project, so a clean
checkout, ``dagster dev`` after an edit, and the tests all load a current manifest; otherwise it
costs one directory walk. The parse writes into a fresh temporary target directory and the manifest
is moved into place atomically, so processes importing this module at the same time (code server,
run workers) never read a half-written manifest. It reads no environment variable: the profile's
warehouse path does not matter to ``dbt parse`` (it opens no connection). This replaces
``DbtProject.prepare_if_dev()``, which parses only under ``dagster dev`` (DAGSTER_IS_DEV_CLI) and
runs ``dbt`` from PATH (a venv used without activation has none there).

Where dbt writes. Nothing goes into the source tree: dbt's ``target/`` (the manifest, the
partial-parse cache, each invocation's artifacts) and its logs live under ``$LEARNLOOP_HOME/dbt/
target`` (``LEARNLOOP_DBT_DIR``/target when set; ``ml.config.Settings.dbt_target``). The manifest's
place is read once, when this module is imported (``@dbt_assets`` needs the manifest then: the one
setting read at import, by necessity); each ``dbt build`` writes its artifacts and ``dbt.log`` to a
folder of its own, ``<target>/<asset>-<run id>-<random>`` (dagster-dbt's default layout, there
rather than in ``dbt_project/target``), under the target of the LEARNLOOP_HOME of the run.

The warehouse path. It is decided at run time, not at import: the asset asks the ``warehouse``
resource (``WarehouseResource.path()``: its ``database`` field, else ``LEARNLOOP_WAREHOUSE_PATH``
or ``$LEARNLOOP_HOME/warehouse.duckdb``)
and passes it to dbt as ``--vars '{"warehouse_path": ...}'``, which profiles.yml reads before its
own env-var fallbacks. A test with a temporary LEARNLOOP_HOME therefore builds into its own file.
A DuckLake warehouse (``WarehouseResource.target()``) goes to dbt in the environment of the dbt
process (``LEARNLOOP_WAREHOUSE_URL`` and ``_DATA_PATH``, ``WarehouseResource.dbt_env()``), never on
its command line, which the Dagster log shows: profiles.yml then picks its ``lake`` output.

What the marts show in the Dagster UI. After ``dbt build`` the materializations of
``model_performance`` and ``experiment_arms`` carry, besides ``dagster/row_count``, a markdown
table of their latest rows (``latest_rows``: the last 14 days per model version; every arm of the
last 5 experiments) and numeric figures the UI plots across materializations (``ml.mart_summaries``
names them: ``<metric>_7d__<model>_v<version>`` and ``<metric>__<arm>``). They are read, bounded
by LIMIT, over one read-only connection once dbt has exited (``MART_SUMMARIES``).

Declarative automation. Every dbt model carries ``AUTOMATION_CONDITION``: ``eager()`` whose "no
dependency missing" clause looks at the dbt models only. When a source asset (interactions,
interaction_quality, audited_errors, review_decisions, candidate_evaluation) gets a new
materialization, the next
evaluation requests the models that read it and, in the same tick, everything downstream of them
(``any_deps_updated`` counts a dependency that will be requested): one run, one ``dbt build
--select`` of that part of the project with its tests. Why not eager on the marts alone: a mart's
dependencies are the staging and intermediate views, which nothing else would materialize between
two analytics_job runs, so a mart-only condition never sees an update (the views cost a
``create view`` each). Why the missing-dependency clause ignores the sources: they are
daily-partitioned and most landing days have no data, so "some partition of a dependency is
missing" is always true and plain eager never fires; the models build on whatever partitions
exist (``ensure_source_tables`` covers a source never written). Why it keeps the dbt models: a
model must not be built before the views it reads exist, so on a fresh instance the automation
waits for the first full build (analytics_job: its schedule, ``learnloop run``/``demo``, the UI)
instead of failing a run. A run never starts while a dependency or the model itself is in
a run (``~any_deps_in_progress``, ``~in_progress``), and a run that materializes a source together
with the models (analytics_job) does not trigger another. The conditions are evaluated by
``analytics_automation_sensor`` (orchestration/automation.py) under the Dagster daemon; the hourly
analytics_schedule stays as the floor. ``learnloop run``/``demo`` run jobs explicitly and evaluate
no condition. To turn automation off, stop that sensor in the UI (Automation tab).
"""

# no `from __future__ import annotations`: dagster inspects the `context` annotation at definition time
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import dagster_dbt as dg_dbt
import duckdb

from assets.catalog import STAGE_OWNERS
from assets.resources import WAREHOUSE_POOL, WarehouseResource
from ml import mart_summaries
from ml import warehouse as wh
from ml.config import Settings
from ml.tables import TABLE_LIST

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"
ANALYTICS_GROUP = "analytics"
# every dbt model (module docstring: "Declarative automation"): eager(), but a missing dependency
# holds a model back only when it is another dbt model, not a landing-day partition of a source
AUTOMATION_CONDITION = (
    (dg.AutomationCondition.newly_missing()
     | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing().allow(
        dg.AssetSelection.groups(ANALYTICS_GROUP)).with_label("any_dbt_deps_missing")
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("eager_after_upstream_data")
# directories of the dbt project that are outputs, not inputs, of a parse
_GENERATED_DIRS = {"target", "logs", "dbt_packages"}


def dbt_executable() -> str:
    """The ``dbt`` next to this interpreter (a venv need not be on PATH), else ``dbt`` on PATH."""
    sibling = Path(sys.executable).parent / "dbt"
    return str(sibling) if sibling.exists() else "dbt"


def dbt_target_dir() -> Path:
    """Where dbt writes (``$LEARNLOOP_HOME/dbt/target``), read from the environment now."""
    return Settings().dbt_target


# an absolute target_path: DbtProject joins it to project_dir, which keeps it as it is
dbt_project = dg_dbt.DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR,
                                target_path=dbt_target_dir())


def _newest_project_file(project: dg_dbt.DbtProject) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(project.project_dir):
        if Path(root) == project.project_dir:
            dirs[:] = [d for d in dirs if d not in _GENERATED_DIRS]
        for name in files:
            newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


def manifest_is_current(project: dg_dbt.DbtProject = dbt_project) -> bool:
    """True when the manifest exists and is newer than every file of the dbt project."""
    path = project.manifest_path
    return path.exists() and path.stat().st_mtime >= _newest_project_file(project)


def ensure_manifest(project: dg_dbt.DbtProject = dbt_project) -> Path:
    """Run ``dbt parse`` unless the manifest is current; return the manifest path.

    Raises when dbt fails to parse the project (the error names the failing file).
    """
    if manifest_is_current(project):
        return project.manifest_path
    project.manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parse-", dir=project.manifest_path.parent) as tmp:
        dbt = dg_dbt.DbtCliResource(project_dir=project, dbt_executable=dbt_executable())
        dbt.cli(["parse", "--quiet"], target_path=Path(tmp)).wait()
        produced = Path(tmp) / "manifest.json"
        if not produced.exists():
            raise FileNotFoundError(f"`dbt parse` in {project.project_dir} wrote no {produced}")
        os.replace(produced, project.manifest_path)
    return project.manifest_path


class LearnloopDbtTranslator(dg_dbt.DagsterDbtTranslator):
    """Sources -> the asset that writes them (``meta.dagster.asset_key`` in ``_sources.yml``,
    generated from ``ml.tables``); models -> group `analytics`, kinds dbt+duckdb, automation
    condition ``AUTOMATION_CONDITION`` (materialize after new upstream data; the module
    docstring says why every model, views included, carries it)."""

    def __init__(self) -> None:
        super().__init__(settings=dg_dbt.DagsterDbtTranslatorSettings(
            enable_asset_checks=True, enable_code_references=True))

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str,
                       project: dg_dbt.DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "source":
            declared = (props.get("meta") or {}).get("dagster", {}).get("asset_key")
            if not declared:
                raise ValueError(
                    f"dbt source {props['source_name']}.{props['name']} ({unique_id}) names no "
                    f"upstream asset (meta.dagster.asset_key); _sources.yml is generated from "
                    f"ml/tables.py: `learnloop tables --write-dbt-sources`")
            return spec
        return spec.replace_attributes(
            group_name=ANALYTICS_GROUP, kinds={"dbt", "duckdb"},
            owners=STAGE_OWNERS[ANALYTICS_GROUP], automation_condition=AUTOMATION_CONDITION,
            tags={**spec.tags, "stage": ANALYTICS_GROUP, "store": "duckdb"})


dbt_translator = LearnloopDbtTranslator()


def dbt_vars(warehouse: Path | str) -> str:
    """The ``--vars`` argument that points profiles.yml at ``warehouse``."""
    return json.dumps({"warehouse_path": str(warehouse)})


@dg_dbt.dbt_assets(
    manifest=ensure_manifest(dbt_project),
    project=dbt_project,
    dagster_dbt_translator=dbt_translator,
    name="dbt_analytics",
    pool=WAREHOUSE_POOL,
)
def dbt_analytics_assets(context: dg.AssetExecutionContext, dbt: dg_dbt.DbtCliResource,
                         warehouse: WarehouseResource):
    """`dbt build` of the selected models and their tests on the warehouse.

    dbt's log lines reach the Dagster log as dbt runs; its events (materializations, check
    evaluations) are yielded once dbt has exited, because the row counts attached to the table
    models (and the latest rows and figures of model_performance and experiment_arms) need the
    DuckDB file, which the dbt process holds locked while it runs. (dagster-dbt's
    own ``fetch_row_counts()`` does the same wait for DuckDB, but leaves an in-process DuckDB
    handle open afterwards, which locks the warehouse against every other process.) A failed
    model or dbt test fails the step after all events, including the failed checks, are reported.
    """
    with warehouse.get_connection() as con:
        created = ensure_source_tables(con)
    if created:
        context.log.info(f"created empty source tables not written yet: {created}")
    target = invocation_target(dbt_target_dir(), context.run.run_id)
    context.log.info(f"dbt build on warehouse {warehouse.describe()}; dbt's artifacts and log "
                     f"in {target}")
    args = ["build"] if warehouse.is_lake() else ["build", "--vars", dbt_vars(warehouse.path())]
    with environment(warehouse.dbt_env()):  # the dbt process inherits it (a lake's URL)
        invocation = dbt.cli(args, context=context, raise_on_error=False, target_path=target)
    events = list(invocation.stream())
    with warehouse.get_read_connection() as con:
        counts = table_row_counts(con, invocation.manifest, events)
        summaries = mart_metadata(con, invocation.manifest, events)
    for event in events:
        unique_id = _unique_id(event)
        extra: dict[str, Any] = {}
        if unique_id in counts:
            extra["dagster/row_count"] = counts[unique_id]
        extra.update(summaries.get(unique_id, {}))
        if extra:
            event = event.with_metadata({**event.metadata, **extra})
        yield event
    error = invocation.get_error()
    if error is not None:
        raise error


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block (a subprocess started in it inherits them),
    then restore what was there."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def invocation_target(target: Path, run_id: str) -> Path:
    """A fresh folder under ``target`` for one dbt invocation's artifacts and log."""
    return target / f"dbt_analytics-{run_id[:7]}-{uuid.uuid4().hex[:7]}"


def ensure_source_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Create (empty) any dbt source table whose stage has not run yet, so the marts build on a
    fresh warehouse instead of failing on a missing relation. Returns the tables created."""
    existing = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_catalog = current_database()").fetchall()}
    created = []
    for table in TABLE_LIST:
        if table.dbt_source and table.name not in existing:
            wh.ensure_table(con, table.name)
            created.append(table.name)
    return created


def _unique_id(event: Any) -> str | None:
    if not isinstance(event, (dg.Output, dg.AssetMaterialization)):
        return None
    value = event.metadata.get("unique_id")
    return value.value if isinstance(value, dg.TextMetadataValue) else value


def table_row_counts(con: duckdb.DuckDBPyConnection, manifest: Mapping[str, Any],
                     events: Iterable[Any]) -> dict[str, int]:
    """Rows of every model built as a table among ``events`` (views are not counted: counting
    one runs its query)."""
    counts: dict[str, int] = {}
    for event in events:
        unique_id = _unique_id(event)
        if unique_id is None:
            continue
        node = manifest["nodes"][unique_id]
        if node["config"]["materialized"] not in ("table", "incremental"):
            continue
        relation = f'"{node["schema"]}"."{node["alias"]}"'
        counts[unique_id] = int(con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0])
    return counts


dbt_resource = dg_dbt.DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())


# the marts whose materializations carry their latest rows and figures: model name -> summary
MART_SUMMARIES: dict[str, Callable[[duckdb.DuckDBPyConnection, str],
                                   mart_summaries.MartSummary]] = {
    "model_performance": mart_summaries.model_performance_summary,
    "experiment_arms": mart_summaries.experiment_arms_summary,
}


def summary_metadata(summary: mart_summaries.MartSummary) -> dict[str, Any]:
    """Dagster metadata of a mart summary: ``latest_rows`` (markdown), the figures (numbers the
    UI plots) and the notes (text)."""
    return {"latest_rows": dg.MetadataValue.md(summary.markdown), **summary.figures,
            **{key: dg.MetadataValue.text(value) for key, value in summary.notes.items()}}


def mart_metadata(con: duckdb.DuckDBPyConnection, manifest: Mapping[str, Any],
                  events: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Metadata for the materialization events of the marts in ``MART_SUMMARIES``, by unique id."""
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        unique_id = _unique_id(event)
        if unique_id is None:
            continue
        node = manifest["nodes"][unique_id]
        summarize = MART_SUMMARIES.get(node["name"])
        if summarize is None:
            continue
        relation = f'"{node["schema"]}"."{node["alias"]}"'
        out[unique_id] = summary_metadata(summarize(con, relation))
    return out
