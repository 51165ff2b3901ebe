from __future__ import annotations

import datetime as dt

import pytest

from services.crawler.tmdb import (
    DateWindow,
    ImageConfig,
    TmdbFormatError,
    api_url,
    discover_params,
    error_message,
    movie_from_result,
    pages_needed,
    parse_configuration,
    parse_discover_page,
    parse_genre_list,
    redact,
    split_window,
)

CONFIG = ImageConfig("https://image.tmdb.org/t/p/", ("w92", "w342", "original"))


def test_api_url_puts_the_key_in_the_query_only_when_there_is_one() -> None:
    assert api_url("https://api.themoviedb.org/3/", "/configuration") == "https://api.themoviedb.org/3/configuration"
    assert api_url("http://x/3", "genre/movie/list", {"language": "en"}, api_key="k") == (
        "http://x/3/genre/movie/list?language=en&api_key=k")


def test_discover_asks_for_a_year_or_a_release_date_window() -> None:
    year = DateWindow.whole_year(2005)
    assert discover_params(year, 3) == {"sort_by": "popularity.desc", "include_adult": "false", "page": "3",
                                        "primary_release_year": "2005"}
    first, second = split_window(year) or (year, year)
    assert (first.start, first.end, second.start, second.end) == (
        dt.date(2005, 1, 1), dt.date(2005, 7, 2), dt.date(2005, 7, 3), dt.date(2005, 12, 31))
    params = discover_params(second, 1)
    assert "primary_release_year" not in params
    assert (params["primary_release_date.gte"], params["primary_release_date.lte"]) == (
        "2005-07-03", "2005-12-31")
    assert DateWindow.from_meta(second.to_meta()) == second
    day = DateWindow(2005, dt.date(2005, 3, 1), dt.date(2005, 3, 1))
    assert split_window(day) is None and day.days == 1


def test_pages_needed_follows_the_limit() -> None:
    assert pages_needed(1234, 62, None) == 62
    assert pages_needed(1234, 62, 25) == 2
    assert pages_needed(10, 1, 25) == 1
    assert pages_needed(0, 0, 25) == 0


def test_configuration_and_genre_list_are_read_or_refused_with_the_reason() -> None:
    config = parse_configuration({"images": {"secure_base_url": "https://img/t/p/",
                                              "poster_sizes": ["w342"]}})
    assert config.poster_url("w342", "/abc.jpg") == "https://img/t/p/w342/abc.jpg"
    with pytest.raises(TmdbFormatError, match="poster_sizes"):
        parse_configuration({"images": {"secure_base_url": "https://img/", "poster_sizes": "w342"}})
    with pytest.raises(TmdbFormatError, match="missing field 'images'"):
        parse_configuration({"change_keys": []})
    genres = {"genres": [{"id": 28, "name": "Action"}, {"id": 878, "name": "Science Fiction"}]}
    assert parse_genre_list(genres) == {28: "Action", 878: "Science Fiction"}
    with pytest.raises(TmdbFormatError, match="'id' has type str"):
        parse_genre_list({"genres": [{"id": "28", "name": "Action"}]})


def test_discover_page_and_movies() -> None:
    page = parse_discover_page({"page": 2, "total_pages": 7, "total_results": 130, "results": [
        {"id": 603, "title": "The Matrix", "release_date": "1999-03-30", "genre_ids": [28, 878, 28],
         "original_language": "en", "popularity": 83.5, "poster_path": "/f89U3ADr1oiB1s9GkdPOEpXUk5H.jpg"},
        "not an object"]})
    assert (page.page, page.total_pages, page.total_results, len(page.results)) == (2, 7, 130, 1)
    movie = movie_from_result(page.results[0], DateWindow.whole_year(1999), 20, CONFIG, "w342")
    assert (movie.tmdb_id, movie.title, movie.year, movie.rank, movie.release_date, movie.genre_ids,
            movie.original_language, movie.popularity) == (
        603, "The Matrix", 1999, 20, dt.date(1999, 3, 30), [28, 878], "en", 83.5)
    assert movie.poster_urls == ["https://image.tmdb.org/t/p/w342/f89U3ADr1oiB1s9GkdPOEpXUk5H.jpg"]
    blank = movie_from_result({"id": 7, "title": "No date", "release_date": "", "poster_path": None},
                              DateWindow.whole_year(2001), 0, CONFIG, "w342")
    assert blank.release_date is None and blank.poster_urls == [] and blank.year == 2001
    with pytest.raises(TmdbFormatError, match="results"):
        parse_discover_page({"page": 1, "total_pages": 1, "total_results": 0})


@pytest.mark.parametrize(("result", "reason"), [
    ({"id": "603"}, "not a positive integer"),
    ({"id": 1, "genre_ids": "Drama"}, "genre_ids is not a list"),
    ({"id": 1, "release_date": "30/03/1999"}, "bad release_date"),
    ({"id": 1, "popularity": "high"}, "popularity has type str"),
    ({"id": 1, "poster_path": "../../etc/passwd"}, "bad poster_path"),
    ({"id": 1, "title": 5}, "title has type int"),
])
def test_unusable_movies_are_refused_with_the_reason(result: dict[str, object], reason: str) -> None:
    with pytest.raises(TmdbFormatError, match=reason):
        movie_from_result(result, DateWindow.whole_year(2000), 0, CONFIG, "w342")


def test_errors_and_urls_are_reported_without_the_key() -> None:
    assert error_message(b'{"status_code": 7, "status_message": "Invalid API key"}') == "Invalid API key"
    assert error_message(b"<html>Bad gateway</html>") == "<html>Bad gateway</html>"
    assert redact("GET http://x/3/discover/movie?page=2&api_key=s3cr3t>") == (
        "GET http://x/3/discover/movie?page=2&api_key=***>")
