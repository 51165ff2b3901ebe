"""The poster-folder contract read by ``postergenre import`` and ``postergenre evaluate`` alike."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.poster_folder import ImportFolderError, LabelRow, parse_row, read_labels
from tests.conftest import make_poster, write_poster_folder


def test_rows_are_numbered_as_a_spreadsheet_does_and_stripped(tmp_path: Path) -> None:
    folder = write_poster_folder(tmp_path, [("tt0000001", 2001, "First", "Drama"),
                                            (" local-2 ", 2002, " Second ", "Comedy|Drama")])
    rows = list(read_labels(folder))
    assert rows == [LabelRow(2, "tt0000001", "2001", "First", "Drama"),
                    LabelRow(3, "local-2", "2002", "Second", "Comedy|Drama")]


def test_an_unusable_folder_says_what_it_lacks(tmp_path: Path) -> None:
    with pytest.raises(ImportFolderError, match="labels.csv not found: expected images/<id>.jpg"):
        list(read_labels(tmp_path))
    (tmp_path / "labels.csv").write_text("imdb_id,title\ntt0000001,First\n")
    with pytest.raises(ImportFolderError, match="lacks column\\(s\\) year, genres"):
        list(read_labels(tmp_path))


def test_a_good_row_gives_the_movie_and_its_poster_bytes(tmp_path: Path) -> None:
    folder = write_poster_folder(tmp_path, [("tt0000001", 2001, "First", "Drama|Romance"),
                                            ("local-2", 2002, "Second", "Comedy")])
    imdb, local = (parse_row(folder, row) for row in read_labels(folder))
    record, data = imdb
    assert (record.source, record.source_id, record.title, record.year, record.genres) == (
        "imdb", "tt0000001", "First", 2001, ["Drama", "Romance"])
    assert data == make_poster(0)
    assert local[0].source == "import" and local[1] == make_poster(1)


@pytest.mark.parametrize(("row", "reason"), [
    (LabelRow(2, "bad id!", "2001", "T", "Drama"), "bad id 'bad id!'"),
    (LabelRow(2, "tt0000001", "19x", "T", "Drama"), "bad year '19x'"),
    (LabelRow(2, "tt0000001", "2001", "T", "Drama|Nonsense"), "Nonsense"),
    (LabelRow(2, "tt0000001", "2001", "T", "N/A"), "no genre"),
    (LabelRow(2, "tt0000009", "2001", "T", "Drama"), "missing image images/tt0000009.jpg"),
])
def test_a_bad_row_is_refused_with_its_reason(tmp_path: Path, row: LabelRow, reason: str) -> None:
    folder = write_poster_folder(tmp_path, [("tt0000001", 2001, "First", "Drama")])
    with pytest.raises(ValueError, match=re.escape(reason)) as raised:
        parse_row(folder, row)
    assert not isinstance(raised.value, ImportFolderError)
