"""``learnloop datasets``: list, show, diff, export and build dataset versions (training datasets
and evaluation suites recorded in the operational store, files under ``$LEARNLOOP_HOME/datasets``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from orchestration.cli import _migrated_settings as _settings


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"learnloop datasets: {message}", err=True)
    sys.exit(code)


def _get(session, ref: str, kind: str | None = None):
    from store.datasets import AmbiguousVersion, get_dataset
    from store.repo import NotFound

    try:
        return get_dataset(session, ref, kind=kind)
    except (NotFound, AmbiguousVersion) as exc:
        _fail(str(exc))


def _short(h: str | None) -> str:
    return (h or "-")[:12]


@click.group(help="Dataset versions: training datasets and evaluation suites (docs/datasets.md).")
def datasets() -> None:
    pass


@datasets.command("list", help="Every dataset version, newest first.")
@click.option("--kind", type=click.Choice(["training", "eval_suite"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def list_cmd(kind: str | None, as_json: bool) -> None:
    from store.datasets import dataset_summary, list_datasets
    from store.db import session_scope

    with session_scope(_settings().store) as s:
        rows = [dataset_summary(d) for d in list_datasets(s, kind=kind)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no dataset versions yet: `learnloop datasets build` (or the dataset sensor, "
                   "or `learnloop demo`) makes one")
        return
    click.echo(f"{'kind':<11} {'name':<12} {'#':>3} {'version':<13} {'parent':<13} {'status':<8} "
               f"{'train':>6} {'valid':>6} {'eval':>6} {'retain':>6}  created")
    for r in rows:
        click.echo(f"{r['kind']:<11} {r['name'][:12]:<12} {r['version']:>3} "
                   f"{_short(r['version_hash']):<13} {_short(r['parent_version']):<13} "
                   f"{r['status']:<8} {r['n_train']:>6,} {r['n_validation']:>6,} "
                   f"{r['n_eval']:>6,} {r['n_retention']:>6,}  {(r['created_at'] or '')[:19]}")


@datasets.command(help="One version: spec, counts, statistics, exports. V: a version hash "
                       "(a prefix of 4+ characters) or NAME@N.")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def show(version: str, as_json: bool) -> None:
    from store.datasets import dataset_summary
    from store.db import session_scope

    with session_scope(_settings().store) as s:
        r = dataset_summary(_get(s, version))
    if as_json:
        click.echo(json.dumps(r, indent=2, default=str))
        return
    click.echo(f"{r['kind']} {r['name']}@{r['version']}  version {r['version_hash']}")
    click.echo(f"  parent     {r['parent_version'] or '-'}")
    click.echo(f"  status     {r['status']}   created {r['created_at']} by "
               f"{r['created_by'] or '-'}")
    click.echo(f"  sizes      train {r['n_train']:,} · validation {r['n_validation']:,} · "
               f"eval {r['n_eval']:,} · retention {r['n_retention']:,}")
    click.echo(f"  checksum   {r['checksum'] or '-'}")
    click.echo(f"  folder     {r['path'] or '-'}")
    for fmt, rel in sorted((r["exports"] or {}).items()):
        click.echo(f"  export     {fmt:<8} {rel}")
    click.echo("  spec       " + json.dumps(r["spec"], sort_keys=True))
    for key, value in sorted((r["counts"] or {}).items()):
        click.echo(f"  counts     {key}: {json.dumps(value, sort_keys=True)}")
    failed = (r["stats"] or {}).get("failed_checks")
    if failed:
        click.echo(f"  FAILED CHECKS {', '.join(failed)}")


def diff_versions(a_items: list[Any], b_items: list[Any], a_spec: dict,
                  b_spec: dict) -> dict[str, Any]:
    """What changed from version A to version B: examples added, removed and moved between
    splits (by item key), the category counts per split, and the spec keys that differ."""
    a = {i.item_key: i for i in a_items}
    b = {i.item_key: i for i in b_items}
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    moved = sorted(k for k in set(a) & set(b) if a[k].split != b[k].split)
    changed = sorted(k for k in set(a) & set(b)
                     if a[k].split == b[k].split and a[k].example_hash != b[k].example_hash)

    def mix(items) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = {}
        for i in items:
            out.setdefault(i.split, Counter())[i.category or "uncategorized"] += 1
        return {split: dict(sorted(c.items())) for split, c in sorted(out.items())}

    spec = {k: {"from": a_spec.get(k), "to": b_spec.get(k)}
            for k in sorted(set(a_spec) | set(b_spec)) if a_spec.get(k) != b_spec.get(k)}
    return {"added": added, "removed": removed, "moved_split": moved, "text_changed": changed,
            "categories": {"from": mix(a_items), "to": mix(b_items)}, "spec": spec}


@datasets.command(help="What changed between two versions (examples added, removed, moved "
                       "between splits, category counts, spec).")
@click.argument("v1")
@click.argument("v2")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def diff(v1: str, v2: str, as_json: bool) -> None:
    from store.datasets import dataset_items
    from store.db import session_scope

    with session_scope(_settings().store) as s:
        a, b = _get(s, v1), _get(s, v2)
        out = diff_versions(dataset_items(s, a.id), dataset_items(s, b.id), a.spec or {},
                            b.spec or {})
        out["from"], out["to"] = a.version_hash, b.version_hash
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"{_short(out['from'])} -> {_short(out['to'])}")
    for key in ("added", "removed", "moved_split", "text_changed"):
        keys = out[key]
        shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
        click.echo(f"  {key:<13} {len(keys):>6,}  {shown}")
    splits = sorted(set(out["categories"]["from"]) | set(out["categories"]["to"]))
    for split in splits:
        fa, fb = out["categories"]["from"].get(split, {}), out["categories"]["to"].get(split, {})
        for cat in sorted(set(fa) | set(fb)):
            if fa.get(cat, 0) != fb.get(cat, 0):
                click.echo(f"  {split:<10} {cat:<28} {fa.get(cat, 0):>6,} -> {fb.get(cat, 0):,}")
    for key, change in out["spec"].items():
        click.echo(f"  spec {key}: {json.dumps(change['from'])} -> {json.dumps(change['to'])}")


def export_entries(exports: dict[str, str], fmt: str) -> dict[str, str]:
    """The exports of a version that make up format ``fmt``: the entry itself (e.g.
    ``openai_train``) or every entry of the family (``openai`` -> ``openai_train`` and
    ``openai_validation``; ``hf`` -> ``hf_datasets``)."""
    if fmt in exports:
        return {fmt: exports[fmt]}
    return {k: v for k, v in exports.items() if k.split("_", 1)[0] == fmt}


@datasets.command(help="Copy one export of a version into a folder (or print where its files "
                       "are). The version's files are checked against its manifest first.")
@click.argument("version")
@click.option("--format", "fmt", required=True,
              help="openai, gemini, hf, dpo (both splits), or one file such as openai_train "
                   "(`learnloop datasets show V` lists them)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder to copy the export into (default: print the paths)")
def export(version: str, fmt: str, out: Path | None) -> None:
    from ml.datasets.exports import verify_exports
    from store.db import session_scope

    with session_scope(_settings().store) as s:
        ds = _get(s, version)
        exports, root, vh = dict(ds.exports or {}), Path(ds.path or ""), ds.version_hash
    chosen = export_entries(exports, fmt)
    if not chosen:
        families = sorted({k.split("_", 1)[0] for k in exports} | set(exports))
        _fail(f"version {_short(vh)} has no {fmt!r} export (formats: {', '.join(families)})")
    if not root.is_dir():
        _fail(f"the files of version {_short(vh)} are gone ({root} does not exist)", code=1)
    problems = verify_exports(root)
    if problems:
        _fail(f"version {_short(vh)} in {root} does not match its manifest: "
              + "; ".join(problems[:5]), code=1)
    for rel in chosen.values():
        src = root / rel
        if out is None:
            click.echo(str(src))
            continue
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)
        click.echo(f"copied {rel} of {_short(vh)} to {dest}")


@datasets.command(help="Build the evaluation suite and a training dataset version now "
                        "(datasets_job). The spec comes from --spec (a JSON or YAML file of "
                        "training_dataset's config, docs/datasets.md) or the defaults.")
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON or YAML file with the dataset spec")
def build(spec_path: Path | None) -> None:
    import yaml

    from orchestration import runner
    from orchestration.cli import run_jobs
    from orchestration.definitions import defs

    settings = _settings()
    run_config: dict[str, Any] = {}
    if spec_path is not None:
        try:
            spec = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            _fail(f"{spec_path}: not JSON or YAML: {exc}")
        if not isinstance(spec, dict):
            _fail(f"{spec_path}: the spec must be a mapping of settings, got "
                  f"{type(spec).__name__}")
        run_config = {"datasets_job": {"ops": {"training_dataset": {"config": spec}}}}
    guard = runner.RunGuard(runner.instance_for(settings), "learnloop datasets build",
                            say=lambda line: click.echo(line, err=True))
    try:
        with guard.interrupts():
            ok = run_jobs(settings, defs, runner.instance_for(settings), ["datasets_job"],
                          guard=guard, run_config=run_config)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if not ok:
        sys.exit(1)
    from store.datasets import latest_dataset
    from store.db import session_scope

    with session_scope(settings.store) as s:
        ds = latest_dataset(s, "training")
        if ds is not None:
            click.echo(f"training dataset {ds.name}@{ds.version} {ds.version_hash}: train "
                       f"{ds.n_train:,}, validation {ds.n_validation:,} ({ds.path})")


COMMANDS = [datasets]
