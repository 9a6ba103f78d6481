"""``learnloop``: the one command-line group (the ``learnloop`` script of pyproject.toml)."""

from __future__ import annotations

import os

import click

from orchestration.cli import COMMANDS as PIPELINE_COMMANDS
from orchestration.landing_cli import COMMANDS as LANDING_COMMANDS
from service.cli import COMMANDS as SERVICE_COMMANDS


@click.group(help="learnloop: continuous learning from a chatbot's own logs.")
def main() -> None:
    # LanceDB's Rust core logs warnings (e.g. "No existing dataset ..., it will be created") straight
    # to the terminal; keep those to errors unless the user asked for more.
    os.environ.setdefault("LANCEDB_LOG", "error")


for _command in (*PIPELINE_COMMANDS, *LANDING_COMMANDS, *SERVICE_COMMANDS):
    main.add_command(_command)
