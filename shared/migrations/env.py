"""Alembic environment: migrations run against the URL given by shared.db.upgrade_database."""

from __future__ import annotations

from alembic import context

from shared.db import Base, get_engine

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = get_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),  # SQLite alters tables by copying them
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
