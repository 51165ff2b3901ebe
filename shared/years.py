"""The year specification every command and API takes: ``2005``, ``2000-2019`` or ``2000,2005-2007``.

One parser and one error for the web API (``?years=``), the admin API, ``postergenre predict``,
``crawl``, ``import``, ``dataset build``, ``train`` and ``demo``, so a spec means the same everywhere
and a bad one is refused with the same message. Years lie in the catalogue's bounds
(:data:`shared.catalog.MIN_YEAR` .. :data:`shared.catalog.MAX_YEAR`).
"""

from __future__ import annotations

import argparse

from shared.catalog import MAX_YEAR, MIN_YEAR

EXAMPLE = "2000-2019, 2005 or 2000,2005-2007"


class YearSpecError(ValueError):
    """A year specification that cannot be read; the message names the bad part and the fix."""


def parse_years(spec: str, max_years: int | None = None, check_bounds: bool = True) -> list[int]:
    """``"2000-2019"``, ``"2005"``, ``"2000,2005,2010-2012"`` -> sorted distinct years.

    ``max_years`` bounds how many years one spec may name (the web API's per-request limit).
    ``check_bounds=False`` leaves the release-year bounds to the caller (the command line's argument
    types: ``dataset build`` then says which years its data has, with its own exit status).
    """
    years: set[int] = set()
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not part for part in parts):
        raise YearSpecError(f"bad years {spec!r}: years must look like {EXAMPLE}")
    for part in parts:
        first, dash, last = part.partition("-")
        try:
            start = int(first)
            end = int(last) if dash else start
        except ValueError:
            raise YearSpecError(f"bad years {part!r}: years must look like {EXAMPLE}") from None
        if start > end:
            raise YearSpecError(f"bad years {part!r}: empty year range (it runs backwards: "
                                f"write {end}-{start})")
        if check_bounds and (start < MIN_YEAR or end > MAX_YEAR):
            raise YearSpecError(f"bad years {part!r}: unknown years {start}-{end}, release years lie "
                                f"between {MIN_YEAR} and {MAX_YEAR}")
        years.update(range(start, end + 1))
        if max_years is not None and len(years) > max_years:
            raise YearSpecError(f"bad years {spec!r}: at most {max_years} years per request")
    return sorted(years)


def parse_year_span(spec: str, check_bounds: bool = True) -> range:
    """A spec naming one contiguous span (``2000-2019`` or ``2005``), as datasets and trainings take."""
    years = parse_years(spec, check_bounds=check_bounds)
    if years != list(range(years[0], years[-1] + 1)):
        raise YearSpecError(f"years {spec!r} must be one span like 2000-2019")
    return range(years[0], years[-1] + 1)


def years_argument(spec: str) -> list[int]:
    """:func:`parse_years` as an argparse ``type`` (argparse shows only ArgumentTypeError's message);
    the syntax only, as the commands have always checked it (see ``check_bounds``)."""
    try:
        return parse_years(spec, check_bounds=False)
    except YearSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def year_span_argument(spec: str) -> range:
    """:func:`parse_year_span` as an argparse ``type``."""
    try:
        return parse_year_span(spec, check_bounds=False)
    except YearSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
