"""Database models and sessions (SQLAlchemy 2). PostgreSQL in stack mode, SQLite in embedded mode.

The schema is owned by Alembic (``shared/migrations``); ``postergenre db upgrade`` applies it, and so
does ``postergenre demo`` (the embedded set-up command). Every other command calls
:func:`require_current_schema`, which refuses a database whose schema is not the code's (no silent
migration of a production database by whichever command ran first after a deploy); only an empty
embedded SQLite database is created in place, with a warning, so that a newcomer's first command
works. ``postergenre bench inference`` upgrades the throw-away SQLite database it creates itself.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import sqlalchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


movie_genres = Table(
    "movie_genres",
    Base.metadata,
    Column("movie_id", ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True),
    Column("genre_id", ForeignKey("genres.id", ondelete="CASCADE"), primary_key=True),
)


class Genre(Base):
    __tablename__ = "genres"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    tmdb_id: Mapped[int | None] = mapped_column(Integer, unique=True)


class Movie(Base):
    """A movie and its poster, identified by ``(source, source_id)`` such as ("imdb", "tt0084058")."""

    __tablename__ = "movies"
    __table_args__ = (UniqueConstraint("source", "source_id", name="uq_movies_source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text, default="")
    year: Mapped[int] = mapped_column(Integer, index=True)
    release_date: Mapped[dt.date | None] = mapped_column(nullable=True)
    original_language: Mapped[str | None] = mapped_column(String(16))
    popularity: Mapped[float | None] = mapped_column(Float)
    poster_path: Mapped[str | None] = mapped_column(Text)
    poster_key: Mapped[str | None] = mapped_column(Text)
    poster_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    poster_phash: Mapped[str | None] = mapped_column(String(16))
    poster_width: Mapped[int | None] = mapped_column(Integer)
    poster_height: Mapped[int | None] = mapped_column(Integer)
    poster_bytes: Mapped[int | None] = mapped_column(BigInteger)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    genres: Mapped[list[Genre]] = relationship(secondary=movie_genres, lazy="selectin")

    @property
    def genre_names(self) -> list[str]:
        return sorted(g.name for g in self.genres)


class RejectedPoster(Base):
    """A poster that was refused (does not decode, too small, not an image), with the reason."""

    __tablename__ = "rejected_posters"
    __table_args__ = (UniqueConstraint("source", "source_id", name="uq_rejected_source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str] = mapped_column(String(32))
    url: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetVersion(Base):
    """An immutable training set: parameters, content hash, manifest location and counts."""

    __tablename__ = "dataset_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    window: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    manifest_key: Mapped[str] = mapped_column(Text)
    targets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """The model registry: one row per trained version of a named model."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_model_version"),
        UniqueConstraint("task_id", name="uq_model_task"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    year: Mapped[int | None] = mapped_column(Integer)
    window: Mapped[str] = mapped_column(String(16), default="year")
    layout: Mapped[str] = mapped_column(String(16), default="independent")
    architecture: Mapped[str] = mapped_column(String(32), default="smallcnn")
    image_size: Mapped[int] = mapped_column(Integer, default=128)
    dataset_version: Mapped[str | None] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(64))
    genres: Mapped[list[Any]] = mapped_column(JSON, default=list)
    years: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    exports: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A long-running job (crawl, dataset build, training) started through Celery, with its progress."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web service read while a worker writes; busy_timeout avoids "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        from pathlib import Path

        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pool as large as a burst of uploads: beyond the pool, a connection is opened (its pragmas
        # run) and closed per request (SQLAlchemy's default keeps 5).
        # sqlalchemy.create_engine looked up at each call: when tracing is on (shared.tracing), the
        # OpenTelemetry instrumentation has wrapped it, and the engine's queries become spans.
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=20, max_overflow=20)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def _session_maker(engine: Engine) -> sessionmaker[Session]:
    # One per engine: sessionmaker() defines a new Session subclass each time it is called, and
    # SQLAlchemy sets up event dispatch for every new class, which every request paid.
    return sessionmaker(engine, expire_on_commit=False)


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    if url is None:
        from shared.config import get_settings

        url = get_settings().effective_database_url
    return _session_maker(get_engine(url))


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(url: str) -> Any:
    from pathlib import Path

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _configured_url(url: str | None) -> str:
    if url is None:
        from shared.config import get_settings

        url = get_settings().effective_database_url
    return url


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision`` to the database at ``url`` (default: configured)."""
    from alembic import command

    url = _configured_url(url)
    get_engine(url)  # creates the SQLite folder
    command.upgrade(_alembic_config(url), revision)


class SchemaOutOfDateError(RuntimeError):
    """The database's schema is not the one the code needs; ``postergenre db upgrade`` fixes it."""


def head_revision() -> str:
    """The newest Alembic revision the code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert head is not None, "shared/migrations has no revision"
    return head


def current_revision(url: str | None = None) -> str | None:
    """The Alembic revision the database at ``url`` is at; None when it has none (empty)."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(_configured_url(url)).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _is_empty(url: str) -> bool:
    return not inspect(get_engine(url)).get_table_names()


def require_current_schema(url: str | None = None) -> None:
    """Return when the database is at the code's schema; raise :class:`SchemaOutOfDateError` otherwise.

    The one exception: an empty embedded (SQLite) database gets the schema created, with a warning,
    so that a first command works without a set-up step. A PostgreSQL database is never changed here.
    """
    url = _configured_url(url)
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    if current is None and url.startswith("sqlite") and _is_empty(url):
        path = url.split("sqlite:///", 1)[-1]
        log.warning("creating the embedded database schema at %s; `postergenre db upgrade` does this "
                    "explicitly", path)
        upgrade_database(url)
        return
    raise SchemaOutOfDateError(f"the database schema is at {current or 'empty'}, the code needs {head}: "
                               "run `postergenre db upgrade`")
