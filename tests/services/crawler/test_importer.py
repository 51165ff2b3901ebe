from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from services.cli import main
from services.crawler.importer import import_folder
from shared.db import Movie, session_scope, upgrade_database
from shared.storage import object_store_from_settings
from tests.conftest import write_poster_folder


def test_import_rejects_bad_rows_and_reruns_import_nothing_twice(settings: object, tmp_path: Path,
                                                                   capsys: object) -> None:
    folder = write_poster_folder(tmp_path / "in", [
        ("tt0000001", 2001, "Good", "Drama|Romance"),
        ("tt0000002", 2001, "Missing image", "Comedy"),
        ("tt0000003", 2001, "Broken", "Comedy"),
        ("tt0000004", "20x1", "Bad year", "Comedy"),  # type: ignore[list-item]
        ("tt0000005", 2002, "Unknown genre", "Cyberpunk"),
        ("tt0000006", 2002, "Also good", "Sci-Fi"),
    ])
    (folder / "images" / "tt0000002.jpg").unlink()
    (folder / "images" / "tt0000003.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert main(["import", "--from", str(folder), "--quiet"]) == 1
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "row 3 (tt0000002): missing image" in err
    assert "row 4 (tt0000003): image does not decode" in err or "row 4 (tt0000003): not an image" in err
    assert "row 5 (tt0000004): bad year" in err
    assert "row 6 (tt0000005): unknown genre 'Cyberpunk'" in err
    with session_scope() as session:
        movies = session.scalars(select(Movie).order_by(Movie.source_id)).all()
        assert [m.source_id for m in movies] == ["tt0000001", "tt0000006"]
        assert movies[0].genre_names == ["Drama", "Romance"]
        assert movies[0].poster_sha256 and movies[0].poster_width == 60
        store = object_store_from_settings()
        assert store.exists(movies[0].poster_key or "")
    objects_before = sorted(object_store_from_settings().list("posters/"))
    # The rerun imports nothing twice.
    assert main(["import", "--from", str(folder), "--quiet"]) == 1
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "imported 0, updated 0, unchanged 2, rejected 4" in out
    assert sorted(object_store_from_settings().list("posters/")) == objects_before
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Movie)) == 2


def test_import_into_postgres_and_s3(stack_settings: object, poster_folder: Path) -> None:
    upgrade_database()
    store = object_store_from_settings()
    report = import_folder(poster_folder, store)
    assert report.imported == 24 and not report.errors
    assert len(list(store.list("posters/"))) == 24
    report = import_folder(poster_folder, store)
    assert report.unchanged == 24 and report.imported == 0


def test_import_of_missing_folder_says_what_to_do(settings: object, tmp_path: Path, capsys: object) -> None:
    assert main(["import", "--from", str(tmp_path / "nowhere")]) == 2
    assert "TMDB_API_KEY" in capsys.readouterr().err  # type: ignore[attr-defined]
