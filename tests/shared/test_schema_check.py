"""No silent database upgrade: ordinary commands refuse a schema other than the code's (exit 2), only
``postergenre db upgrade`` (and ``demo``) migrate, and an empty embedded database is created with a
warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from services.cli import main
from shared.config import Settings
from shared.db import (
    SchemaOutOfDateError,
    current_revision,
    get_engine,
    head_revision,
    require_current_schema,
    upgrade_database,
)


def test_an_empty_stack_database_is_refused_and_left_empty(postgres_url: str) -> None:
    with pytest.raises(SchemaOutOfDateError) as error:
        require_current_schema(postgres_url)
    assert str(error.value) == (f"the database schema is at empty, the code needs {head_revision()}: "
                                "run `postergenre db upgrade`")
    assert current_revision(postgres_url) is None


def test_a_database_at_another_revision_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade_database(url)
    with get_engine(url).begin() as connection:  # what an older (or newer) release left
        connection.execute(text("UPDATE alembic_version SET version_num = '0000_older'"))
    with pytest.raises(SchemaOutOfDateError, match="schema is at 0000_older, the code needs"):
        require_current_schema(url)
    assert current_revision(url) == "0000_older"  # not an empty database: never touched


def test_an_empty_embedded_database_is_created_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "home" / "postergenre.db"
    with caplog.at_level(logging.WARNING, logger="shared.db"):
        require_current_schema(f"sqlite:///{path}")
    assert current_revision(f"sqlite:///{path}") == head_revision()
    assert (f"creating the embedded database schema at {path}; `postergenre db upgrade` does this "
            "explicitly") in caplog.text
    caplog.clear()
    require_current_schema(f"sqlite:///{path}")  # now current: silent
    assert not caplog.records


def test_an_embedded_database_with_tables_but_no_revision_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with get_engine(url).begin() as connection:
        connection.execute(text("CREATE TABLE movies (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaOutOfDateError, match="schema is at empty"):
        require_current_schema(url)


def test_dataset_build_on_an_old_stack_schema_exits_2_until_db_upgrade(
        stack_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    url = stack_settings.effective_database_url
    assert main(["dataset", "build", "--years", "2000-2001"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: the database schema is at empty, the code needs {head_revision()}: "
                   "run `postergenre db upgrade`\n")
    assert "Traceback" not in err
    assert current_revision(url) is None  # the command migrated nothing

    assert main(["db", "upgrade"]) == 0
    assert current_revision(url) == head_revision()
    capsys.readouterr()
    # Past the schema check now: the build itself says there is nothing to build from.
    assert main(["dataset", "build", "--years", "2000-2001"]) == 2
    assert "schema" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["import", "--from", "."],
    ["models", "list"],
    ["train", "--dataset", "none", "--years", "2000"],
])
def test_other_commands_refuse_an_old_stack_schema(stack_settings: Settings, command: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(command) == 2
    assert "run `postergenre db upgrade`" in capsys.readouterr().err
    assert current_revision(stack_settings.effective_database_url) is None


def test_crawl_refuses_an_old_stack_schema(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from shared.config import get_settings

    monkeypatch.setenv("TMDB_API_KEY", "not-used")  # past the credential check, to the schema one
    get_settings.cache_clear()
    assert main(["crawl", "--years", "2000", "--job-id", "schema"]) == 2
    assert "run `postergenre db upgrade`" in capsys.readouterr().err
    assert current_revision(stack_settings.effective_database_url) is None
