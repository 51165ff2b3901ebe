"""The genre vocabulary: IMDb's names (the shared poster collection) and TMDB's 19 (the crawler).

A model's own vocabulary is the sorted list of genres present in its training data; it is saved
with the dataset version and the model, never assumed from this module.
"""

from __future__ import annotations

IMDB_GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Biography", "Comedy", "Crime", "Documentary", "Drama",
    "Family", "Fantasy", "Film-Noir", "History", "Horror", "Music", "Musical", "Mystery", "News",
    "Reality-TV", "Romance", "Sci-Fi", "Short", "Sport", "Talk-Show", "Thriller", "War", "Western",
    "Game-Show", "Adult",
)

# TMDB API v3 /genre/movie/list ids and names.
TMDB_GENRES: dict[int, str] = {
    28: "Action", 12: "Adventure", 16: "Animation", 35: "Comedy", 80: "Crime", 99: "Documentary",
    18: "Drama", 10751: "Family", 14: "Fantasy", 36: "History", 27: "Horror", 10402: "Music",
    9648: "Mystery", 10749: "Romance", 878: "Science Fiction", 10770: "TV Movie", 53: "Thriller",
    10752: "War", 37: "Western",
}

# Names that mean the same genre in both vocabularies.
ALIASES: dict[str, str] = {"Science Fiction": "Sci-Fi", "Sci Fi": "Sci-Fi", "Scifi": "Sci-Fi"}

KNOWN_GENRES: frozenset[str] = frozenset(IMDB_GENRES) | frozenset(TMDB_GENRES.values())


class UnknownGenreError(ValueError):
    pass


def canonical_genre(name: str) -> str:
    """Return the stored name of a genre, or raise :class:`UnknownGenreError`."""
    cleaned = name.strip()
    cleaned = ALIASES.get(cleaned, cleaned)
    if cleaned not in KNOWN_GENRES:
        raise UnknownGenreError(f"unknown genre {name!r}")
    return cleaned


def parse_genres(field: str, separator: str = "|") -> list[str]:
    """Parse ``"Drama|Romance"`` into canonical names, keeping order and dropping repeats."""
    names: list[str] = []
    for raw in field.split(separator):
        if raw.strip() in ("", "N/A"):
            continue
        name = canonical_genre(raw)
        if name not in names:
            names.append(name)
    return names


def rank_genres(genres: tuple[str, ...], scores: list[float], k: int) -> list[tuple[str, float]]:
    """The ``k`` best genres with their scores, best first; ties broken by name so tables are stable."""
    ranked = sorted(zip([-float(score) for score in scores], genres, strict=True))  # no key function:
    return [(genre, -negated) for negated, genre in ranked[:k]]  # tuples compare in C, 20 years a table
