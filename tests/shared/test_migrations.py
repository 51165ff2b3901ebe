"""Migrations run forward on a database that holds data, and keep it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, inspect, text

from shared.db import Base, upgrade_database


def test_migrations_from_the_first_revision_keep_data(postgres_url: str) -> None:
    upgrade_database(postgres_url, revision="0001")
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO genres (id, name) VALUES (1, 'Drama')"))
        conn.execute(text(
            "INSERT INTO movies (id, source, source_id, title, year, extra, created_at, updated_at) "
            "VALUES (1, 'imdb', 'tt0000001', 'Kept', 2001, '{}', now(), now())"))
        conn.execute(text("INSERT INTO movie_genres (movie_id, genre_id) VALUES (1, 1)"))
    upgrade_database(postgres_url)  # every later revision
    upgrade_database(postgres_url)  # and again: a no-op
    with engine.connect() as conn:
        assert conn.execute(text("SELECT title FROM movies WHERE source_id = 'tt0000001'")).scalar() == "Kept"
        assert conn.execute(text("SELECT count(*) FROM movie_genres")).scalar() == 1
    engine.dispose()


def test_head_schema_matches_the_models(postgres_url: str) -> None:
    upgrade_database(postgres_url)
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        assert columns == {column.name for column in table.columns}, table.name
    engine.dispose()


def test_sqlite_upgrade(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade_database(url)
    upgrade_database(url)


def test_db_check_passes_only_at_head_and_changes_nothing(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`postergenre db check`: what the Kubernetes init containers wait on while Job/migrate upgrades."""
    from services.cli import main
    from shared.config import get_settings

    url = f"sqlite:///{tmp_path}/db.sqlite"
    monkeypatch.setenv("POSTERGENRE_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert main(["db", "check"]) == 1
        assert "database schema is at empty, the code needs" in capsys.readouterr().err
        upgrade_database(url)
        assert main(["db", "check"]) == 0
        assert "database schema is at head" in capsys.readouterr().out
        engine = create_engine(url)
        with engine.begin() as conn:  # as if the code were one migration ahead of the database
            conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
        engine.dispose()
        assert main(["db", "check"]) == 1
        assert main(["db", "check"]) == 1  # the check never upgrades
        assert "database schema is at older, the code needs" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_rolling_window_models_are_renamed_apart_from_the_year_models(tmp_path: object) -> None:
    """Revision 0002: a rolling-window row named like the year's independent model gets its own name
    and keeps its objects' place (exports.prefix); the independent model's rows keep theirs."""
    from shared.models import version_prefix

    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade_database(url, revision="0001")
    engine = create_engine(url)
    insert = text(
        "INSERT INTO model_versions (name, version, year, window, layout, architecture, image_size, "
        "genres, years, metrics, exports, status, status_reason, created_at) VALUES (:name, :version, 2000, "
        ":window, :layout, 'smallcnn', 32, '[]', '[2000]', '{}', :exports, 'candidate', '', "
        "CURRENT_TIMESTAMP)")
    with engine.begin() as conn:
        conn.execute(insert, {"name": "genre-2000", "version": 1, "window": "year", "layout": "independent",
                              "exports": '{"prefix": "models/genre-2000/1"}'})
        conn.execute(insert, {"name": "genre-2000", "version": 2, "window": "rolling", "layout": "window",
                              "exports": '{"prefix": "models/genre-2000/2"}'})
        conn.execute(insert, {"name": "genre-2001", "version": 1, "window": "rolling", "layout": "window",
                              "exports": "{}"})
    upgrade_database(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, version, exports FROM model_versions ORDER BY id")).all()
    assert [(name, version) for name, version, _ in rows] == [
        ("genre-2000", 1), ("genre-rolling-2000", 2), ("genre-rolling-2001", 1)]
    prefixes = [version_prefix(name, version, json.loads(exports)) for name, version, exports in rows]
    assert prefixes == ["models/genre-2000/1", "models/genre-2000/2", "models/genre-2001/1"]
    engine.dispose()
