"""The one year specification (shared.years) and the one message each bad spec gets everywhere."""

from __future__ import annotations

import argparse

import pytest

from shared.years import YearSpecError, parse_year_span, parse_years, year_span_argument, years_argument


def test_a_spec_names_sorted_distinct_years() -> None:
    assert parse_years("2005") == [2005]
    assert parse_years("2000-2002") == [2000, 2001, 2002]
    assert parse_years("2010, 2000-2001,2000") == [2000, 2001, 2010]
    assert parse_year_span("2000-2004") == range(2000, 2005)


@pytest.mark.parametrize("spec, message", [
    ("20x0", "years must look like 2000-2019"),
    ("", "years must look like"),
    ("2000,,2001", "years must look like"),
    ("2019-2000", "empty year range (it runs backwards: write 2000-2019)"),
    ("1200", "unknown years 1200-1200, release years lie between 1874 and 2100"),
])
def test_a_bad_spec_is_refused_naming_the_fix(spec: str, message: str) -> None:
    with pytest.raises(YearSpecError, match="^bad years") as error:
        parse_years(spec)
    assert message in str(error.value)


def test_limits_and_spans() -> None:
    with pytest.raises(YearSpecError, match="at most 3 years per request"):
        parse_years("2000-2003", max_years=3)
    with pytest.raises(YearSpecError, match="must be one span like 2000-2019"):
        parse_year_span("2000,2005")


def test_argparse_types_show_the_same_message() -> None:
    assert years_argument("2000,2002") == [2000, 2002]
    assert year_span_argument("2001") == range(2001, 2002)
    with pytest.raises(argparse.ArgumentTypeError, match="years must look like"):
        year_span_argument("20x0")
    assert year_span_argument("3000") == range(3000, 3001)  # bounds: the command's own check
