"""TMDB's genre list in the project's genre vocabulary (``genres`` table, ``Genre.tmdb_id``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import Genre, session_scope
from shared.genres import UnknownGenreError, canonical_genre

logger = logging.getLogger(__name__)


@dataclass
class GenreSync:
    """TMDB ids mapped to stored names, and the names the vocabulary did not know."""

    names: dict[int, str]
    unrecognized_names: list[str] = field(default_factory=list)


def stored_genre_name(tmdb_name: str) -> tuple[str, bool]:
    """The stored name of a TMDB genre (``Science Fiction`` -> ``Sci-Fi``) and whether it is known.

    A name the vocabulary does not know is kept as TMDB writes it rather than dropped: TMDB may add
    a genre, and a model's vocabulary is whatever its training data holds.
    """
    try:
        return canonical_genre(tmdb_name), True
    except UnknownGenreError:
        return tmdb_name.strip(), False


def _upsert_genre(session: Session, tmdb_id: int, name: str) -> None:
    by_id = session.scalar(select(Genre).where(Genre.tmdb_id == tmdb_id))
    by_name = session.scalar(select(Genre).where(Genre.name == name))
    if by_id is not None and by_id is by_name:
        return
    if by_id is not None:
        if by_name is None:
            by_id.name = name  # TMDB renamed the genre
            return
        by_id.tmdb_id = None  # the name already has a row (e.g. from an IMDb import): move the id there
        session.flush()
    if by_name is None:
        session.add(Genre(name=name, tmdb_id=tmdb_id))
    else:
        by_name.tmdb_id = tmdb_id
    session.flush()


def sync_tmdb_genres(tmdb_genres: Mapping[int, str], database_url: str | None = None) -> GenreSync:
    """Store ``/genre/movie/list`` in the genre vocabulary; return ``{tmdb id: stored name}``."""
    sync = GenreSync(names={})
    with session_scope(database_url) as session:
        for tmdb_id, tmdb_name in sorted(tmdb_genres.items()):
            name, known = stored_genre_name(tmdb_name)
            if not known:
                sync.unrecognized_names.append(name)
                logger.warning("TMDB genre %d %r is not in the genre vocabulary: stored under that name",
                               tmdb_id, name)
            _upsert_genre(session, tmdb_id, name)
            sync.names[tmdb_id] = name
    return sync


def load_tmdb_genres(database_url: str | None = None) -> dict[int, str]:
    """``{tmdb id: stored name}`` of every genre that has a TMDB id."""
    with session_scope(database_url) as session:
        rows = session.execute(select(Genre.tmdb_id, Genre.name).where(Genre.tmdb_id.is_not(None))).all()
    return {int(tmdb_id): name for tmdb_id, name in rows if tmdb_id is not None}


def map_genre_ids(genre_ids: Iterable[int], names: Mapping[int, str]) -> tuple[list[str], list[int]]:
    """Genre names of a movie in TMDB's order, and the ids TMDB's genre list does not have."""
    known: list[str] = []
    unknown: list[int] = []
    for genre_id in genre_ids:
        name = names.get(genre_id)
        if name is None:
            if genre_id not in unknown:
                unknown.append(genre_id)
        elif name not in known:
            known.append(name)
    return known, unknown
