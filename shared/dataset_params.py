"""Parameters of a dataset build, the windows that turn them into targets, and the input error.

A *target* is what one model is trained for: a year (``"2000"``) for the ``year`` and ``rolling``
windows, a decade (``"2000s"``) for the ``decade`` window. The window says which release years feed it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select

from shared import years as year_spec
from shared.config import get_settings
from shared.db import Movie, session_scope

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.orm import Session

Window = Literal["year", "decade", "rolling"]
WINDOWS: tuple[Window, ...] = ("year", "decade", "rolling")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Bumped whenever the build would give different splits for the same inputs, so the hash changes.
ALGORITHM_VERSION = 1
# Release years a movie can plausibly have (as shared.catalog.check_year).
FIRST_YEAR, LAST_YEAR = 1874, 2100
ROLLING_BEFORE, ROLLING_AFTER = 5, 4


class DatasetInputError(ValueError):
    """The request cannot be built (unknown years, empty selection, a movie without genre...).

    The CLI prints it and exits non-zero; the admin API answers 422 with its message.
    """


@dataclass(frozen=True)
class BuildParams:
    """Everything that decides a build's content (all of it goes into the content hash)."""

    first_year: int
    last_year: int
    window: Window = "year"
    min_posters: int = 30
    seed: int = 0
    image_size: int = 128
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Composite-genre balancing bounds, as fractions of the original train split.
    min_composite_fraction: float = 0.01
    max_composite_fraction: float = 0.04
    # A composite seen once in train is repeated at most this many times (copies marked for augmentation).
    singleton_max_copies: int = 3
    # Genres with fewer posters in the whole selection are left out of the vocabulary (3: a genre
    # needs a poster in each of train, validation and test to be learnt and measured).
    min_genre_posters: int = 3
    # Perceptual hashes this close (in bits) are the same poster for the split.
    max_phash_distance: int = 4
    # Examples per TFRecord shard.
    shard_size: int = 1024

    def __post_init__(self) -> None:
        check_params(self)

    @property
    def years(self) -> range:
        return range(self.first_year, self.last_year + 1)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "algorithm_version": ALGORITHM_VERSION}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BuildParams:
        """Build from loose input (the admin API's JSON, a Celery task's kwargs).

        ``years`` may be ``"2000-2019"``, ``"2005"``, ``[2000, 2019]`` or ``first_year``/``last_year``.
        Raises :class:`DatasetInputError` with a readable message for anything wrong.
        """
        data = dict(values)
        if "years" in data:
            first, last = parse_year_span(data.pop("years"))
            data.setdefault("first_year", first)
            data.setdefault("last_year", last)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"algorithm_version"})
        if unknown:
            raise DatasetInputError(f"unknown parameter(s): {', '.join(unknown)}")
        data.pop("algorithm_version", None)
        if "first_year" not in data or "last_year" not in data:
            raise DatasetInputError("years are required, e.g. years='2000-2019'")
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data or data[field.name] is None:
                continue
            value = data[field.name]
            try:
                if field.name == "window":
                    kwargs[field.name] = str(value)
                elif field.name.endswith("fraction"):
                    kwargs[field.name] = float(value)
                else:
                    kwargs[field.name] = int(value)
            except (TypeError, ValueError):
                raise DatasetInputError(f"{field.name} must be a number, not {value!r}") from None
        return cls(**kwargs)


def parse_year_span(value: Any) -> tuple[int, int]:
    """``"2000-2019"``, ``"2005"``, ``2005``, ``[2000, 2019]`` or a ``range`` as (first, last)."""
    try:
        if isinstance(value, range):
            if not value:
                raise ValueError
            return value[0], value[-1]
        if isinstance(value, list | tuple):
            first, last = (int(v) for v in value)
            return first, last
        if isinstance(value, int):
            return value, value
        span = year_spec.parse_year_span(str(value))
        return span[0], span[-1]
    except year_spec.YearSpecError as exc:
        raise DatasetInputError(str(exc)) from None
    except (TypeError, ValueError):
        raise DatasetInputError(f"years must look like 2000-2019 or 2005, not {value!r}") from None


def check_params(params: BuildParams) -> None:
    """Raise :class:`DatasetInputError` when the parameters cannot make a dataset."""
    p = params
    if p.first_year > p.last_year:
        raise DatasetInputError(f"empty year range {p.first_year}-{p.last_year}")
    if p.first_year < FIRST_YEAR or p.last_year > LAST_YEAR:
        raise DatasetInputError(
            f"unknown years {p.first_year}-{p.last_year}: release years lie in {FIRST_YEAR}-{LAST_YEAR}"
        )
    if p.window not in WINDOWS:
        raise DatasetInputError(f"window must be one of {', '.join(WINDOWS)}, not {p.window!r}")
    if p.min_posters < 1:
        raise DatasetInputError("min_posters must be at least 1")
    if not 8 <= p.image_size <= 1024:
        raise DatasetInputError(f"image_size must be 8-1024 pixels, not {p.image_size}")
    if not (0 < p.val_fraction < 1 and 0 < p.test_fraction < 1 and p.val_fraction + p.test_fraction < 1):
        raise DatasetInputError(
            "val_fraction and test_fraction must be in (0, 1) and sum to less than 1, "
            f"not {p.val_fraction} and {p.test_fraction}"
        )
    if not 0 < p.min_composite_fraction <= p.max_composite_fraction <= 1:
        raise DatasetInputError(
            "composite bounds must satisfy 0 < min <= max <= 1, not "
            f"{p.min_composite_fraction} and {p.max_composite_fraction}"
        )
    if p.singleton_max_copies < 1:
        raise DatasetInputError("singleton_max_copies must be at least 1")
    if p.min_genre_posters < 1:
        raise DatasetInputError("min_genre_posters must be at least 1")
    if not 0 <= p.max_phash_distance <= 16:
        raise DatasetInputError("max_phash_distance must be 0-16 bits")
    if p.shard_size < 1:
        raise DatasetInputError("shard_size must be at least 1")


def target_name(window: Window, year: int) -> str:
    """The target a year's model is trained for: ``"2000"``, or ``"2000s"`` for decades."""
    return f"{year // 10 * 10}s" if window == "decade" else str(year)


def window_targets(window: Window, years: range) -> dict[str, list[int]]:
    """Each target of the build and the release years that feed it (sorted, may reach outside ``years``
    for rolling windows at the ends: the 2000 model of a 2000-2019 build also learns from 1995-1999)."""
    targets: dict[str, list[int]] = {}
    for year in years:
        name = target_name(window, year)
        if window == "year":
            targets[name] = [year]
        elif window == "decade":
            decade = year // 10 * 10
            targets[name] = list(range(decade, decade + 10))
        else:
            targets[name] = list(range(year - ROLLING_BEFORE, year + ROLLING_AFTER + 1))
    return targets


def count_movies(session: Session, years: Iterable[int]) -> int:
    """Movies with a poster released in ``years`` (a cheap check before queueing a build)."""
    wanted = sorted(set(years))
    if not wanted:
        return 0
    query = (
        select(func.count())
        .select_from(Movie)
        .where(Movie.year.in_(wanted), Movie.poster_key.is_not(None), Movie.poster_sha256.is_not(None))
    )
    return int(session.scalar(query) or 0)


def database_years(session: Session) -> tuple[int, int] | None:
    """First and last release year of the movies with a poster, or None when there are none."""
    first, last = session.execute(
        select(func.min(Movie.year), func.max(Movie.year)).where(Movie.poster_key.is_not(None))
    ).one()
    return None if first is None else (int(first), int(last))


def empty_selection(
    params: BuildParams, all_years: list[int], known: tuple[int, int] | None
) -> DatasetInputError:
    """The error for a request whose windows hold no movie, saying which years the database has."""
    where = (
        f"the database has posters from {known[0]} to {known[1]}" if known else "the database has no posters"
    )
    return DatasetInputError(
        f"unknown years: no movie with a poster in {all_years[0]}-{all_years[-1]} "
        f"({params.window} windows of {params.first_year}-{params.last_year}); {where}"
    )


def check_build_request(values: Mapping[str, Any], database_url: str | None = None) -> BuildParams:
    """Parameters of a build request, or :class:`DatasetInputError` (unknown years, empty selection...).

    ``image_size`` defaults to ``settings.image_size``. Checks that the database has movies in the
    requested windows; the rest (genres, --min-posters) is checked by the build itself.
    """
    values = dict(values)
    if values.get("image_size") is None:
        values["image_size"] = get_settings().image_size
    params = BuildParams.from_mapping(values)
    years = sorted({y for ys in window_targets(params.window, params.years).values() for y in ys})
    with session_scope(database_url) as session:
        if count_movies(session, years) == 0:
            raise empty_selection(params, years, database_years(session))
    return params
