"""The sample commands of the ``learnloop`` command line: ``samples stats`` and ``tag add|remove``
(the store functions are in ``store/samples.py``; docs/samples.md).

    learnloop samples stats [filters] [--json]
    learnloop tag add TAG [filters] [--ids 3,4] [--all]
    learnloop tag remove TAG [filters] [--ids 3,4] [--all]

Filters: ``--since/--until`` (YYYY-MM-DD, inclusive, or ISO datetimes), ``--quality-min/--quality-max``
(0-1, inclusive), ``--category``, ``--intent``, ``--source``, ``--tenant``, ``--tag``, ``--status``
(repeatable or comma-separated: any of the values). The command line sees every tenant.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import click

from store.models import SAMPLE_STATUSES

OPTION_OF = {"since": "--since", "until": "--until", "quality_min": "--quality-min",
             "quality_max": "--quality-max", "category": "--category", "intent": "--intent",
             "source": "--source", "tenant": "--tenant", "tag": "--tag", "status": "--status",
             "ids": "--ids"}
LIST_FIELDS = ("category", "intent", "source", "tenant", "tag", "status")


def filter_options(fn):
    """The sample filter's options (``store.samples.SampleFilter``), passed on as ``filters``."""
    options = [
        click.option("--since", default=None, metavar="DATE",
                     help="from this day (YYYY-MM-DD, UTC) or ISO datetime, inclusive; the "
                          "interaction's time, else when the item was created"),
        click.option("--until", default=None, metavar="DATE", help="to this day, inclusive"),
        click.option("--quality-min", type=float, default=None, metavar="Q",
                     help="quality score at least Q (0-1)"),
        click.option("--quality-max", type=float, default=None, metavar="Q",
                     help="quality score at most Q (0-1)"),
        click.option("--category", multiple=True, help="repeatable or comma-separated"),
        click.option("--intent", multiple=True, help="repeatable or comma-separated"),
        click.option("--source", multiple=True,
                     help="human_agent, retrieval, llm:<provider>, ... (repeatable)"),
        click.option("--tenant", multiple=True, help="repeatable or comma-separated"),
        click.option("--tag", "tags", multiple=True, help="samples carrying this tag (repeatable: "
                                                          "any of them)"),
        click.option("--status", multiple=True,
                     help=f"{', '.join(SAMPLE_STATUSES)} (repeatable)"),
    ]

    @functools.wraps(fn)
    def wrapper(*args, since, until, quality_min, quality_max, category, intent, source, tenant,
                tags, status, **kwargs):
        filters = {"since": since, "until": until, "quality_min": quality_min,
                   "quality_max": quality_max, "category": list(category),
                   "intent": list(intent), "source": list(source), "tenant": list(tenant),
                   "tag": list(tags), "status": list(status)}
        return fn(*args, filters=filters, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def build_filter(filters: dict[str, Any]):
    """``filters`` as a ``SampleFilter``; a bad value is a usage error naming the option."""
    from store.samples import FilterError, SampleFilter

    try:
        return SampleFilter.from_dict(filters)
    except FilterError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1],
                                 param_hint=OPTION_OF.get(exc.field, exc.field)) from None


def _store_url() -> str:
    from orchestration.cli import _migrated_settings

    return _migrated_settings().store


# ---- samples stats ---------------------------------------------------------------------------------
@click.group(help="Sample items (proposed training examples): statistics. See docs/samples.md.")
def samples() -> None:
    pass


def _counts_line(counts: dict[str, int], limit: int = 8) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k} {n}" for k, n in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "") or "-"


def format_stats(st: dict[str, Any], described: str) -> str:
    """The statistics as a readable table."""
    if not st["total"]:
        return f"no sample matches ({described})"
    q = st["quality"]
    rate = "-" if st["approval_rate"] is None else f"{st['approval_rate']:.0%}"
    lines = [f"samples: {st['total']}  ({described})",
             "status:   " + " · ".join(f"{k} {n}" for k, n in st["by_status"].items()),
             f"approval: {rate} ((approved + edited) of {st['decided']} decided)"]
    if q["known"]:
        lines.append(f"quality:  mean {q['mean']:.2f} · min {q['min']:.2f} · q1 {q['q1']:.2f} · "
                     f"median {q['median']:.2f} · q3 {q['q3']:.2f} · max {q['max']:.2f} · "
                     f"unknown {q['unknown']}")
        top = max(b["count"] for b in q["histogram"]) or 1
        for b in q["histogram"]:
            bar = "#" * round(30 * b["count"] / top)
            lines.append(f"  {b['bin']}  {b['count']:>6}  {bar}")
    else:
        lines.append(f"quality:  no scores (unknown {q['unknown']})")
    for title, key in (("source", "by_source"), ("category", "by_category"),
                       ("intent", "by_intent"), ("tenant", "by_tenant"), ("tags", "by_tag")):
        lines.append(f"{title + ':':9} {_counts_line(st[key])}")
    return "\n".join(lines)


@samples.command("stats", help="Counts of the samples matching the filters by status, source, "
                               "category, intent, tenant and tag, their quality histogram and "
                               "quartiles, and the approval rate.")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="the statistics as JSON")
def stats(filters: dict[str, Any], as_json: bool) -> None:
    from store.db import session_scope
    from store.samples import sample_stats

    flt = build_filter(filters)
    with session_scope(_store_url()) as s:
        st = sample_stats(s, flt)
    click.echo(json.dumps(st, indent=2) if as_json else format_stats(st, flt.describe()))


# ---- tag add / remove ----------------------------------------------------------------------------
@click.group(help="Add or remove one tag on many samples at once (each changed sample gets a new "
                  "version and a review event; nothing is deleted). See docs/samples.md.")
def tag() -> None:
    pass


def _tag_command(add: bool):
    verb = "add" if add else "remove"

    @tag.command(verb, help=f"{verb.capitalize()} TAG {'on' if add else 'from'} the samples "
                            f"matching the filters and/or --ids. Without either, refused unless "
                            f"--all.")
    @click.argument("tag_name", metavar="TAG")
    @filter_options
    @click.option("--ids", "ids", multiple=True, metavar="ID[,ID...]",
                  help="these sample item ids (repeatable or comma-separated)")
    @click.option("--all", "everything", is_flag=True,
                  help="with no filter and no --ids: every sample")
    def command(tag_name: str, filters: dict[str, Any], ids: tuple[str, ...],
                everything: bool) -> None:
        from service.cli_support import cli_actor
        from store.db import session_scope
        from store.repo import Conflict
        from store.samples import TagError, tag_samples

        flt = build_filter({**filters, "ids": list(ids)})
        if flt.is_empty() and not everything:
            raise click.UsageError(f"no filter and no --ids: this would {verb} {tag_name!r} on "
                                   f"every sample. Narrow it with filters or --ids, or pass --all.")
        try:
            with session_scope(_store_url()) as s:
                res = tag_samples(s, tag_name, add=add, actor=cli_actor(), flt=flt)
        except TagError as exc:
            raise click.BadParameter(str(exc), param_hint="TAG") from None
        except Conflict as exc:
            raise click.ClickException(f"{exc}; nothing was changed, run it again") from None
        if not res.matched:
            click.echo(f"no sample matches ({flt.describe()}): nothing to {verb}")
            return
        state = "had it already" if add else "did not have it"
        line = (f"tag {res.tag!r}: {res.matched} matched, {res.changed} changed, "
                f"{res.unchanged} {state}")
        if res.skipped:
            line += f", {res.skipped} changed by someone else meanwhile and no longer matched"
        click.echo(line)

    return command


tag_add = _tag_command(True)
tag_remove = _tag_command(False)

COMMANDS = [samples, tag]
