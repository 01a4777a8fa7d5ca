"""The ``taskflow`` command line."""

from __future__ import annotations

import asyncio
import sys

import typer

from events.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="TaskFlow: event-sourced tasks.")
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka and Postgres under .stack/.")
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka and Postgres (idempotent), create the topic and the database."""
    from cli.stack import Stack

    s = get_settings()
    st = Stack(s)
    st.pg_up()
    st.kafka_up()
    asyncio.run(_bootstrap())


async def _bootstrap() -> None:
    from events.db import ensure_database
    from events.log import ensure_topic

    s = get_settings()
    if await ensure_database(s.database_url):
        print(f"stack: created database {s.database_url.rsplit('/', 1)[-1]}", file=sys.stderr)
    for attempt in range(60):
        try:
            created = await ensure_topic(s.kafka_bootstrap, s.topic, s.partitions)
            break
        except Exception as exc:  # the broker may still be electing itself controller
            if attempt == 59:
                raise
            last = exc
            await asyncio.sleep(0.5)
    else:  # pragma: no cover
        raise RuntimeError(last)
    if created:
        print(f"stack: created topic {s.topic} ({s.partitions} partitions, kept forever)",
              file=sys.stderr)


@stack_app.command("down")
def stack_down() -> None:
    """Stop Kafka and Postgres (data stays in .stack/)."""
    from cli.stack import Stack

    st = Stack(get_settings())
    st.kafka_down()
    st.pg_down()


@stack_app.command("status")
def stack_status() -> None:
    """Show whether Kafka and Postgres are running."""
    from cli.stack import Stack

    for k, v in Stack(get_settings()).status().items():
        print(f"{k:9} {v}")


@app.command()
def migrate() -> None:
    """Run the Alembic migrations to head."""
    from events.db import migrate as run

    run(get_settings().database_url)


if __name__ == "__main__":
    app()
