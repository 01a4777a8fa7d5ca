"""Request-scoped dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api.feed import ChangeFeed
from events.log import EventProducer
from events.settings import Settings


async def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


async def _producer(request: Request) -> EventProducer:
    producer: EventProducer = request.app.state.producer
    return producer


async def _feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed = request.app.state.feed
    return feed


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DbDep = Annotated[AsyncEngine, Depends(_engine)]
LogDep = Annotated[EventProducer, Depends(_producer)]
FeedDep = Annotated[ChangeFeed, Depends(_feed)]
SettingsDep = Annotated[Settings, Depends(_settings)]
