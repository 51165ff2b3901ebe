"""A small TMDB-compatible site (API v3 subset + image server) for the crawler's tests and benchmark.

Serves ``/3/configuration``, ``/3/genre/movie/list``, ``/3/discover/movie`` (paging, most popular
first, TMDB's last-page limit answered with 422) and posters under ``/t/p/<size>/<file>``, on
``127.0.0.1`` and a free port, from a deterministic catalogue. Faults can be injected: 429 with
Retry-After, 500s, slow answers, truncated JSON, corrupt/tiny/missing posters, unknown genre ids,
malformed results; a wrong API key gets TMDB's 401.

With ``real_posters`` (the shared collection ``../shared/data/posters-imdb``) the catalogue is
those movies, their IMDb genres mapped to TMDB's ids, and the posters are the real JPEGs;
otherwise posters are generated.

Run alone (the crawl benchmark does): ``python -m benchmarks.fakes.tmdb_site --movies-per-year
2000=100``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

TMDB_GENRE_LIST: dict[int, str] = {
    28: "Action", 12: "Adventure", 16: "Animation", 35: "Comedy", 80: "Crime", 99: "Documentary",
    18: "Drama", 10751: "Family", 14: "Fantasy", 36: "History", 27: "Horror", 10402: "Music",
    9648: "Mystery", 10749: "Romance", 878: "Science Fiction", 10770: "TV Movie", 53: "Thriller",
    10752: "War", 37: "Western",
}
# IMDb genres of the shared collection as TMDB genre ids (IMDb-only genres have none).
IMDB_TO_TMDB: dict[str, int] = {
    "Action": 28, "Adventure": 12, "Animation": 16, "Comedy": 35, "Crime": 80, "Documentary": 99,
    "Drama": 18, "Family": 10751, "Fantasy": 14, "History": 36, "Horror": 27, "Music": 10402,
    "Musical": 10402, "Mystery": 9648, "Romance": 10749, "Sci-Fi": 878, "Thriller": 53, "War": 10752,
    "Western": 37,
}
POSTER_SIZES = ["w92", "w154", "w185", "w342", "w500", "w780", "original"]
# ../shared/data/posters-imdb beside the repository checkout.
SHARED_POSTERS = Path(__file__).resolve().parents[3] / "shared" / "data" / "posters-imdb"
UNAUTHORIZED = {"status_code": 7, "status_message": "Invalid API key: You must be granted a valid key.",
                "success": False}


@dataclass
class SiteMovie:
    id: int
    title: str
    year: int
    release_date: dt.date
    genre_ids: list[int]
    popularity: float
    original_language: str = "en"
    poster_version: int = 0
    has_poster: bool = True
    poster_file: Path | None = None  # a real poster; None means generated

    @property
    def poster_path(self) -> str | None:
        if not self.has_poster:
            return None
        return f"/p{self.id}.jpg" if self.poster_version == 0 else f"/p{self.id}v{self.poster_version}.jpg"


@dataclass
class Fault:
    """Answer the next ``count`` requests whose path starts with ``path`` this way.

    kind: ``429`` (with ``retry_after``), ``500``, ``slow`` (``delay`` seconds, then the real answer),
    ``truncated`` (half of the JSON body).
    """

    kind: str
    path: str
    count: int = 1
    retry_after: str = "1"
    delay: float = 2.0
    page: int | None = None  # only this discover page


@dataclass
class LoggedRequest:
    time: float  # when it arrived (time.monotonic)
    path: str
    query: dict[str, str]
    status: int
    fault: str = ""


@dataclass
class TmdbSite:
    movies: list[SiteMovie]
    api_key: str = "test-key"
    bearer_token: str = "test-token"
    page_size: int = 20
    max_page: int = 500
    poster_size_px: tuple[int, int] = (40, 60)
    corrupt_posters: set[int] = field(default_factory=set)
    tiny_posters: set[int] = field(default_factory=set)
    missing_posters: set[int] = field(default_factory=set)
    malformed_movies: set[int] = field(default_factory=set)
    extra_genre_ids: dict[int, list[int]] = field(default_factory=dict)
    poster_delay: float = 0.0
    # Posters past this many wait until ``release_posters()``: a test can act (cut the store) at a known
    # point of a crawl, however fast or slow the machine is.
    hold_posters_after: int | None = None
    faults: list[Fault] = field(default_factory=list)
    log: list[LoggedRequest] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.by_id = {movie.id: movie for movie in self.movies}
        self._posters: dict[tuple[int, int], bytes] = {}
        self.posters_served = 0
        self.posters_released = threading.Event()

    def release_posters(self) -> None:
        self.posters_released.set()

    # --- catalogue ------------------------------------------------------------------------------

    @classmethod
    def generated(cls, movies_per_year: dict[int, int], **kwargs: Any) -> TmdbSite:
        """``n`` movies per year with ids ``year*10000 + i``, release dates spread over the year."""
        genre_ids = sorted(TMDB_GENRE_LIST)
        movies = []
        for year, count in sorted(movies_per_year.items()):
            days = 366 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 365
            for index in range(count):
                rng = np.random.default_rng(year * 100_003 + index)
                picked = sorted({int(g) for g in rng.choice(genre_ids, size=int(rng.integers(1, 4)))})
                movies.append(SiteMovie(
                    id=year * 10_000 + index, title=f"Movie {year}-{index}", year=year,
                    release_date=dt.date(year, 1, 1) + dt.timedelta(days=(index * 7919) % days),
                    genre_ids=picked, popularity=round(1000.0 - index * 0.37, 3),
                    original_language=["en", "fr", "ja", "es"][index % 4]))
        return cls(movies=movies, **kwargs)

    @classmethod
    def from_posters(cls, folder: Path, per_year: Mapping[int, int], **kwargs: Any) -> TmdbSite:
        """The shared collection's movies with their real posters (IMDb genres as TMDB ids).

        ``per_year``: how many movies of each year (the first ones of ``labels.csv``).
        """
        movies = []
        taken: dict[int, int] = {}
        with (folder / "labels.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                year = int(row["year"])
                if taken.get(year, 0) >= per_year.get(year, 0):
                    continue
                index = taken.get(year, 0)
                taken[year] = index + 1
                genres = sorted({IMDB_TO_TMDB[g] for g in row["genres"].split("|") if g in IMDB_TO_TMDB})
                movies.append(SiteMovie(
                    id=int(row["imdb_id"][2:]), title=row["title"], year=year,
                    release_date=dt.date(year, 1, 1) + dt.timedelta(days=(index * 7919) % 365),
                    genre_ids=genres, popularity=round(1000.0 - index * 0.37, 3),
                    poster_file=folder / "images" / f"{row['imdb_id']}.jpg"))
        return cls(movies=movies, **kwargs)

    def change_poster(self, movie_id: int) -> None:
        """A new poster, at a new path, as TMDB does when a poster is replaced."""
        self.by_id[movie_id].poster_version += 1

    def poster_bytes(self, movie: SiteMovie) -> bytes:
        if movie.poster_file is not None and movie.poster_version == 0:
            return movie.poster_file.read_bytes()
        key = (movie.id, movie.poster_version)
        with self.lock:
            cached = self._posters.get(key)
        if cached is None:
            size = (10, 15) if movie.id in self.tiny_posters else self.poster_size_px
            # A coarse random grid scaled up: cheap to make, compresses like a real poster.
            rng = np.random.default_rng(movie.id * 31 + movie.poster_version)
            grid = rng.integers(0, 256, size=(12, 8, 3), dtype=np.uint8)
            image = Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            cached = buffer.getvalue()
            with self.lock:
                self._posters[key] = cached
        return cached

    def warm(self) -> None:
        """Make every poster now, so that serving them costs no more than sending bytes."""
        for movie in self.movies:
            if movie.has_poster:
                self.poster_bytes(movie)

    def movie_json(self, movie: SiteMovie) -> dict[str, Any]:
        genre_ids: Any = movie.genre_ids + self.extra_genre_ids.get(movie.id, [])
        if movie.id in self.malformed_movies:
            genre_ids = "Drama"  # a field of the wrong type
        return {
            "adult": False, "backdrop_path": None, "genre_ids": genre_ids, "id": movie.id,
            "original_language": movie.original_language, "original_title": movie.title,
            "overview": "", "popularity": movie.popularity, "poster_path": movie.poster_path,
            "release_date": movie.release_date.isoformat(), "title": movie.title, "video": False,
            "vote_average": 6.5, "vote_count": 100,
        }

    def discover(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        try:
            page = int(query.get("page", "1"))
        except ValueError:
            page = 0
        if not 1 <= page <= self.max_page:
            return 422, {"success": False, "status_code": 22,
                         "status_message": f"Invalid page: Pages start at 1 and max at {self.max_page}. "
                                           "They are expected to be an integer."}
        selected = self.movies
        if "primary_release_year" in query:
            year = int(query["primary_release_year"])
            selected = [m for m in selected if m.year == year]
        if "primary_release_date.gte" in query:
            start = dt.date.fromisoformat(query["primary_release_date.gte"])
            selected = [m for m in selected if m.release_date >= start]
        if "primary_release_date.lte" in query:
            end = dt.date.fromisoformat(query["primary_release_date.lte"])
            selected = [m for m in selected if m.release_date <= end]
        selected = sorted(selected, key=lambda m: (-m.popularity, m.id))
        start_index = (page - 1) * self.page_size
        results = [self.movie_json(m) for m in selected[start_index:start_index + self.page_size]]
        return 200, {"page": page, "results": results, "total_results": len(selected),
                     "total_pages": math.ceil(len(selected) / self.page_size)}

    def configuration(self) -> dict[str, Any]:
        base = f"{self.url}/t/p/"
        return {"images": {"base_url": base, "secure_base_url": base, "poster_sizes": POSTER_SIZES,
                           "backdrop_sizes": ["w300", "original"], "logo_sizes": ["w92", "original"],
                           "profile_sizes": ["w45", "original"], "still_sizes": ["w92", "original"]},
                "change_keys": ["poster_path", "release_date", "title"]}

    # --- serving --------------------------------------------------------------------------------

    def take_fault(self, path: str, query: dict[str, str]) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.count > 0 and path.startswith(fault.path) and (
                        fault.page is None or query.get("page") == str(fault.page)):
                    fault.count -= 1
                    return fault
        return None

    def authorized(self, query: dict[str, str], authorization: str | None) -> bool:
        return query.get("api_key") == self.api_key or authorization == f"Bearer {self.bearer_token}"

    def requests_to(self, path: str) -> list[LoggedRequest]:
        with self.lock:
            return sorted((r for r in self.log if r.path.startswith(path)), key=lambda r: r.time)

    def handle(self, path: str, query: dict[str, str],
               authorization: str | None) -> tuple[int, str, bytes, dict[str, str], str]:
        """(status, content type, body, extra headers, fault name) of one request."""
        fault = self.take_fault(path, query)
        fault_name = fault.kind if fault else ""
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "429":
            limited = {"success": False, "status_code": 25,
                       "status_message": "Your request count (#) is over the allowed limit of (40)."}
            headers = {"Retry-After": fault.retry_after}
            return 429, "application/json", json.dumps(limited).encode(), headers, "429"
        if fault is not None and fault.kind == "500":
            error = b'{"status_code": 11, "status_message": "Internal error"}'
            return 500, "application/json", error, {}, "500"
        if path.startswith("/t/p/"):
            return (*self.poster(path), {}, fault_name)
        if not path.startswith("/3/"):
            return 404, "text/plain", b"not found", {}, fault_name
        if not self.authorized(query, authorization):
            return 401, "application/json", json.dumps(UNAUTHORIZED).encode(), {}, fault_name
        endpoint = path[2:]
        if endpoint == "/configuration":
            status, document = 200, self.configuration()
        elif endpoint == "/genre/movie/list":
            status, document = 200, {"genres": [{"id": k, "name": v} for k, v in TMDB_GENRE_LIST.items()]}
        elif endpoint == "/discover/movie":
            status, document = self.discover(query)
        else:
            status, document = 404, {"success": False, "status_code": 34,
                                     "status_message": "The resource you requested could not be found."}
        body = json.dumps(document).encode()
        if fault is not None and fault.kind == "truncated":
            body = body[: len(body) // 2]
        return status, "application/json;charset=utf-8", body, {}, fault_name

    def poster(self, path: str) -> tuple[int, str, bytes]:
        parts = path.split("/")  # ['', 't', 'p', size, file]
        if len(parts) != 5 or parts[3] not in POSTER_SIZES:
            return 404, "text/plain", b"not found"
        name = parts[4].removeprefix("p").removesuffix(".jpg")
        movie_id, _, version = name.partition("v")
        movie = self.by_id.get(int(movie_id)) if movie_id.isdigit() else None
        if movie is None or movie.poster_path != "/" + parts[4] or movie.id in self.missing_posters:
            return 404, "text/plain", b"not found"
        with self.lock:
            self.posters_served += 1
            held = self.hold_posters_after is not None and self.posters_served > self.hold_posters_after
        if held:
            self.posters_released.wait(timeout=300)
        if self.poster_delay:
            time.sleep(self.poster_delay)
        if movie.id in self.corrupt_posters:
            return 200, "image/jpeg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
        return 200, "image/jpeg", self.poster_bytes(movie)


def _handler(site: TmdbSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            arrived = time.monotonic()
            parsed = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
            status, content_type, body, headers, fault = site.handle(
                parsed.path, query, self.headers.get("Authorization"))
            with site.lock:
                site.log.append(LoggedRequest(arrived, parsed.path, query, status, fault))
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout): nothing to answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections of a crawler opening 16 at once, and
    # the client's SYN retries (1 s, 3 s, 7 s...) would look like a slow site.
    request_queue_size = 256
    daemon_threads = True


@contextmanager
def serve(site: TmdbSite, port: int = 0) -> Iterator[str]:
    """Serve the site on 127.0.0.1 in a background thread; yield its API URL (``.../3``)."""
    server = _Server(("127.0.0.1", port), _handler(site))
    site.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="tmdb-site", daemon=True)
    thread.start()
    try:
        yield f"{site.url}/3"
    finally:
        server.shutdown()
        server.server_close()


def poster_counts(folder: Path) -> dict[int, int]:
    """Movies per year in the shared collection's ``labels.csv``."""
    counts: dict[int, int] = {}
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            counts[int(row["year"])] = counts.get(int(row["year"]), 0) + 1
    return counts


def parse_counts(text: str) -> dict[int, int]:
    """``2000=100,2001=50`` as ``{2000: 100, 2001: 50}``."""
    counts = {}
    for part in text.split(","):
        year, _, count = part.partition("=")
        counts[int(year)] = int(count)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--movies-per-year", type=parse_counts, required=True, help="2000=100,2001=50")
    parser.add_argument("--real-posters", type=Path, default=None, help="the shared poster collection")
    parser.add_argument("--poster-width", type=int, default=342)
    args = parser.parse_args()
    if args.real_posters is not None:
        site = TmdbSite.from_posters(args.real_posters, args.movies_per_year)
    else:
        width = args.poster_width
        site = TmdbSite.generated(args.movies_per_year, poster_size_px=(width, width * 3 // 2))
    site.warm()
    with serve(site, args.port) as url:
        print(f"ready {url} {len(site.movies)}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
