"""Fixtures: every test gets its own topic and database on the real Kafka and Postgres.

``make test`` starts the stack (``taskflow stack up``) before pytest runs; the session
fixture only checks that it is there and prepares a migrated template database, which
each test clones (CREATE DATABASE ... TEMPLATE is quick next to migrating).

A test that needs the stack carries the ``stack`` marker: put on here for every test
that uses one of ``STACK_FIXTURES``, and by hand on the few that reach the stack some
other way. ``make test-fast`` runs the rest (``pytest -m "not stack"``), with no Kafka
or Postgres; the session fixtures connect only when a selected test asks for them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.engine import make_url

from events import constants
from events.db import drop_database, ensure_database, migrate
from events.log import delete_topics, ensure_topic, ping
from events.settings import Settings
from tests.helpers import Env, free_port, new_name

# One template per pytest session, so that concurrent sessions never clone a template
# another session is rebuilding.
TEMPLATE = f"taskflow_tpl_{os.getpid()}"
# Fixtures that reach the stack: a test using any of them is marked ``stack``.
STACK_FIXTURES = frozenset({"env", "template_db", "private_stack"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


def _url(base: str, db: str) -> str:
    return make_url(base).set(database=db).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def template_db(base_settings: Settings) -> Iterator[str]:
    url = _url(base_settings.database_url, TEMPLATE)

    async def prepare() -> None:
        await ping(base_settings.kafka_bootstrap, timeout_s=10)
        await drop_database(url)
        await ensure_database(url)

    asyncio.run(prepare())
    migrate(url)
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture
async def env(base_settings: Settings, template_db: str,
              request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    name = new_name(request.node.name[:20].replace("[", "_").replace("]", "_").lower() + "_")
    url = _url(base_settings.database_url, name)
    await ensure_database(url, template=TEMPLATE)
    topic = f"test.{name}"
    await ensure_topic(base_settings.kafka_bootstrap, topic, 6)
    e = Env(name=name, database_url=url, topic=topic, bootstrap=base_settings.kafka_bootstrap,
            api_port=free_port())
    try:
        yield e
    finally:
        e.stop_all()
        await drop_database(url)
        await delete_topics(base_settings.kafka_bootstrap,
                            [topic, topic + constants.DEAD_LETTER_TOPIC_SUFFIX])
