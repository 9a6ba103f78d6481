"""``learnloop``: the one command-line group (the ``learnloop`` script of pyproject.toml)."""

from __future__ import annotations

import os

import click

from cli.demo_loop import COMMANDS as DEMO_COMMANDS
from cli.samples import COMMANDS as SAMPLE_COMMANDS
from orchestration.cli import COMMANDS as PIPELINE_COMMANDS
from orchestration.cli import STORE_UNREACHABLE_EXIT, unreachable_store_line
from orchestration.datasets_cli import COMMANDS as DATASET_COMMANDS
from orchestration.landing_cli import COMMANDS as LANDING_COMMANDS
from orchestration.models_cli import COMMANDS as MODEL_COMMANDS
from orchestration.training_cli import COMMANDS as TRAINING_COMMANDS
from service.cli import COMMANDS as SERVICE_COMMANDS


class _Group(click.Group):
    """A store that cannot be reached ends any command with one line naming the store and the
    reason (exit status 3), not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            line = unreachable_store_line(exc)
            if line is None:
                raise
            click.echo(f"learnloop: {line}", err=True)
            ctx.exit(STORE_UNREACHABLE_EXIT)


@click.group(cls=_Group, help="learnloop: continuous learning from a chatbot's own logs.")
def main() -> None:
    # LanceDB's Rust core logs warnings (e.g. "No existing dataset ..., it will be created") straight
    # to the terminal; keep those to errors unless the user asked for more.
    os.environ.setdefault("LANCEDB_LOG", "error")


for _command in (*PIPELINE_COMMANDS, *DATASET_COMMANDS, *LANDING_COMMANDS, *SERVICE_COMMANDS,
                 *SAMPLE_COMMANDS, *MODEL_COMMANDS, *TRAINING_COMMANDS, *DEMO_COMMANDS):
    main.add_command(_command)
