"""The ``runlog`` command: run the local stack and talk to it.

Every failure a person can fix prints one sentence and exits 1; no tracebacks.
"""

from __future__ import annotations

import asyncio
import sys

import click
from rich.console import Console
from rich.table import Table

from events.settings import get_settings

from .process import StackError

# Wide enough for the demo's table when the output is a file or a CI log.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


@click.group()
def main() -> None:
    """runlog: an event-sourced tracker for machine-learning runs."""


@main.command()
def up() -> None:
    """Start Kafka, PostgreSQL, the consumer, the watchdog and the API in the background."""
    from . import stack

    try:
        stack.up(get_settings(), say=lambda line: console.print(line, highlight=False, soft_wrap=True))
    except StackError as exc:
        _fail(str(exc))


@main.command()
def down() -> None:
    """Stop exactly the processes that `runlog up` started."""
    from . import stack

    try:
        stack.down(get_settings(), say=lambda line: console.print(line, highlight=False, soft_wrap=True))
    except StackError as exc:
        _fail(str(exc))


@main.command()
def status() -> None:
    """Say which parts of the local stack run."""
    from . import stack

    s = get_settings()
    table = Table("part", "state", "pid", box=None)
    for name, pid in stack.status(s).items():
        table.add_row(name, "[green]running[/]" if pid else "[red]stopped[/]", str(pid or ""))
    console.print(table)
    console.print(f"state and logs in {s.home}", highlight=False)


@main.command()
def migrate() -> None:
    """Apply the database migrations that are not applied yet (safe to run twice)."""
    from projections.migrate import migrate_url

    s = get_settings()
    try:
        applied = asyncio.run(migrate_url(s.database_url))
    except OSError as exc:
        _fail(f"cannot reach PostgreSQL at {s.database_url}: {exc}")
    console.print(f"applied: {', '.join(applied)}" if applied else "nothing to apply", highlight=False)


@main.command()
@click.option("--ranks", default=4, show_default=True, help="training processes to simulate")
@click.option("--steps", default=200, show_default=True, help="steps each rank logs")
@click.option("--project", default="demo", show_default=True)
def demo(ranks: int, steps: int, project: str) -> None:
    """Run a small simulated distributed training job and print its runs read back through the API."""
    from . import demo as demo_module

    try:
        demo_module.run(ranks=ranks, steps=steps, project=project, console=console)
    except StackError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
