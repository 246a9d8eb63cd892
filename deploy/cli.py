"""The ``runlog`` command: run the local stack and talk to it.

Every failure a person can fix prints one sentence and exits 1; no tracebacks.
"""

from __future__ import annotations

import asyncio
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from events.settings import get_settings, tune_service_gc

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


@main.group()
def webhooks() -> None:
    """Webhooks that receive a project's alerts (HTTP POST of JSON, retried until delivered)."""


def _db(action):  # type: ignore[no-untyped-def]
    """Run ``action(conn)`` against RUNLOG_DATABASE_URL, with a one-sentence error if unreachable."""
    import asyncpg

    from projections.db import init_connection

    s = get_settings()

    async def go():  # type: ignore[no-untyped-def]
        try:
            conn = await asyncpg.connect(s.database_url)
        except OSError as exc:
            _fail(f"cannot reach PostgreSQL at {s.database_url}: {exc}")
        await init_connection(conn)
        try:
            return await action(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


@webhooks.command("add")
@click.argument("project_path", metavar="ENTITY/PROJECT")
@click.argument("url")
def webhooks_add(project_path: str, url: str) -> None:
    """Send the alerts of ENTITY/PROJECT to URL from now on."""
    parts = project_path.split("/")
    if len(parts) != 2 or not all(parts):
        _fail(f"expected ENTITY/PROJECT, got {project_path!r}")
    if not url.startswith(("http://", "https://")):
        _fail(f"the webhook URL must start with http:// or https://, got {url!r}")
    hook_id = _db(lambda conn: conn.fetchval(
        """INSERT INTO webhooks (entity, project, url) VALUES ($1, $2, $3)
           ON CONFLICT (entity, project, url) DO UPDATE SET active = true RETURNING id""", parts[0], parts[1], url))
    console.print(f"webhook {hook_id}: alerts of {project_path} -> {url}", highlight=False)


@webhooks.command("list")
def webhooks_list() -> None:
    """Show the configured webhooks and their delivery counts."""
    rows = _db(lambda conn: conn.fetch(
        """SELECT w.id, w.entity || '/' || w.project AS project, w.url, w.active,
                  count(*) FILTER (WHERE d.delivered) AS delivered, count(d.attempt) AS attempts
           FROM webhooks w LEFT JOIN alert_deliveries d ON d.webhook_id = w.id
           GROUP BY w.id ORDER BY w.id"""))
    table = Table("id", "project", "url", "active", "delivered", "attempts", box=None)
    for r in rows:
        table.add_row(str(r["id"]), r["project"], r["url"], str(r["active"]), str(r["delivered"]), str(r["attempts"]))
    console.print(table)


@webhooks.command("remove")
@click.argument("hook_id", type=int)
def webhooks_remove(hook_id: int) -> None:
    """Stop sending alerts to webhook HOOK_ID (its delivery record stays)."""
    done = _db(lambda conn: conn.fetchval("UPDATE webhooks SET active = false WHERE id = $1 RETURNING id", hook_id))
    if done is None:
        _fail(f"there is no webhook {hook_id}")
    console.print(f"webhook {hook_id} removed", highlight=False)


@main.group()
def keys() -> None:
    """API keys (per entity, scopes read and/or write; stored hashed, shown once)."""


@keys.command("create")
@click.argument("entity")
@click.option("--read-only", is_flag=True, help="read scope only (no writes)")
@click.option("--label", default=None, help="a note to tell keys apart in `runlog keys list`")
def keys_create(entity: str, read_only: bool, label: str | None) -> None:
    """Create an API key for ENTITY and print it (once: only its hash is stored)."""
    from api.auth import create_key

    if not entity or "/" in entity:
        _fail(f"not an entity name: {entity!r}")
    scopes = ("read",) if read_only else ("read", "write")
    key_id, text = _db(lambda conn: create_key(conn, entity, scopes, label))
    err_console.print(f"key {key_id} for entity {entity} ({', '.join(scopes)}); shown once, keep it safe:",
                      highlight=False)
    click.echo(text)


@keys.command("list")
def keys_list() -> None:
    """Show the API keys (id, entity, scopes, prefix, created, last used, revoked); never the key."""
    rows = _db(lambda conn: conn.fetch(
        "SELECT id, entity, scopes, prefix, label, created_at, revoked_at FROM api_keys ORDER BY id"))
    table = Table("id", "entity", "scopes", "prefix", "label", "created", "revoked", box=None)
    for r in rows:
        table.add_row(str(r["id"]), r["entity"], ",".join(r["scopes"]), r["prefix"] + "...", r["label"] or "",
                      r["created_at"].strftime("%Y-%m-%d %H:%M"),
                      r["revoked_at"].strftime("%Y-%m-%d %H:%M") if r["revoked_at"] else "")
    console.print(table)


@keys.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke API key KEY_ID: requests with it get 401 from now on."""
    done = _db(lambda conn: conn.fetchval(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING id", key_id))
    if done is None:
        _fail(f"there is no API key {key_id}")
    console.print(f"API key {key_id} revoked", highlight=False)


@main.command()
@click.option("--from-kafka", is_flag=True, help="rebuild the event store too, from offset 0 of the events topic")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="processes folding the event store, each taking a share of the runs  [default: one per core, at most 8]")
def replay(from_kafka: bool, workers: int | None) -> None:
    """Rebuild every read model from the event store and swap it in atomically (API keeps serving)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from consumers.replay import KafkaSource
    from consumers.replay import replay as run_replay

    s = get_settings()
    tune_service_gc()  # a long Python fold, like the consumer's

    async def go(conn):  # type: ignore[no-untyped-def]
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("replaying events", total=None)
            source = KafkaSource(s.bootstrap_servers, s.events_topic, s.consumer_group) if from_kafka else None
            return await run_replay(conn, progress=lambda done, total: bar.update(task, completed=done, total=total),
                                    from_kafka=source, workers=workers or min(os.cpu_count() or 1, 8), dsn=s.database_url)

    result = _db(go)
    rate = result.events / result.seconds if result.seconds else 0.0
    console.print(f"replayed {result.events} events ({result.applied} applied, {result.skipped} seq duplicates "
                  f"skipped) in {result.seconds:.1f}s, {rate:,.0f} events/s; read models swapped in",
                  highlight=False)


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


@main.command()
@click.argument("dirs", nargs=-1, type=click.Path(exists=True))
def sync(dirs: tuple[str, ...]) -> None:
    """Send the events local spools still hold (offline runs, killed processes).

    DIRS are run directories or spool files; without any, every spool under $RUNLOG_HOME/spool.
    Sending twice is harmless: events are deduplicated downstream."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from producer._sync import find_spools
    from producer._sync import sync as sync_spools
    from producer.errors import CommError

    s = get_settings()
    paths = find_spools(list(dirs), home=s.home)
    if not paths:
        console.print("no spools found", highlight=False)
        return
    with Progress(TextColumn("sync"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as progress:
        task = progress.add_task("sync", total=0)

        def on_start(states: list) -> None:
            progress.update(task, total=sum(st.unsent for st in states if not st.busy))

        try:
            states = sync_spools(paths, s, on_start=on_start, on_ack=lambda n: progress.advance(task, n))
        except CommError as exc:
            _fail(str(exc))
    failed = False
    for st in states:
        if st.busy:
            console.print(f"{st.path}: in use by a running process, skipped", highlight=False)
        elif st.error:
            failed = True
            console.print(f"{st.run_path}: sent {st.sent}, {st.unsent} left ({st.error})", highlight=False)
        elif st.sent:
            console.print(f"{st.run_path}: sent {st.sent} event(s)", highlight=False)
    sent = sum(st.sent for st in states)
    console.print(f"synced {sent} event(s) from {len(states)} spool(s)", highlight=False)
    if failed:
        _fail("some events were not acknowledged; run `runlog sync` again")


if __name__ == "__main__":
    main()
