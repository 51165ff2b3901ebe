"""Model names per layout and the one routing rule (shared.models), as every service uses them."""

from __future__ import annotations

from typing import Any

from services.trainer.evaluation import year_routing
from services.web.routes.models import year_assignment
from shared import registry
from shared.db import session_scope, upgrade_database
from shared.models import (
    PRECEDENCE,
    blessed_models,
    genre_thresholds,
    model_name,
    models_by_year,
    served_model,
)

PREFIX = "genre"


def test_names_per_layout_cannot_collide() -> None:
    names = {
        model_name(PREFIX, "independent", "year", "2000"),
        model_name(PREFIX, "window", "rolling", "2000"),
        model_name(PREFIX, "window", "decade", "2000s"),
        model_name(PREFIX, "shared", "year", "2000"),
    }
    assert names == {"genre-2000", "genre-rolling-2000", "genre-2000s", "genre-shared"}


def bless_model(name: str, layout: str, window: str, year: int | None, years: list[int]) -> None:
    row = registry.register(name=name, task_id=None, year=year, window=window, layout=layout,
                            architecture="smallcnn", image_size=32, dataset_version="d1", genres=["Drama"],
                            years=years, metrics={"test": {"macro_map": 0.3}},
                            exports={"prefix": f"models/{name}/1"})
    registry.bless(name, int(row["version"]), force=True)


def test_evaluate_and_the_page_choose_the_same_model_for_every_year(settings: Any) -> None:
    """A year, a rolling-window, a decade and a shared model blessed together: ``postergenre
    evaluate`` (year_routing) and the page (the year assignment of /api/v1/models, the predictions'
    models_by_year) pick the same model for every year, the most specific one."""
    upgrade_database()
    bless_model("genre-2000", "independent", "year", 2000, [2000])
    bless_model("genre-rolling-2001", "window", "rolling", 2001, list(range(1996, 2006)))
    bless_model("genre-2000s", "window", "decade", None, list(range(2000, 2010)))
    bless_model("genre-shared", "shared", "year", None, list(range(1998, 2012)))

    evaluated = {year: served.row["name"] for year, served in year_routing(registry.blessed_versions(),
                                                                          PREFIX).items()}
    with session_scope() as session:
        page = year_assignment(session, PREFIX)
        served = blessed_models(session, PREFIX)
        predicted = {year: model.name for year, model in models_by_year(served, range(1990, 2020)).items()}
    assert evaluated == page == predicted
    assert page == {1998: "genre-shared", 1999: "genre-shared", 2000: "genre-2000",
                    2001: "genre-rolling-2001", **{year: "genre-2000s" for year in range(2002, 2010)},
                    2010: "genre-shared", 2011: "genre-shared"}
    assert PRECEDENCE == ("year", "rolling", "decade", "shared")
    shared_head = year_routing(registry.blessed_versions(), PREFIX)[2011].head
    assert shared_head == 2011 - 1998  # the shared model's head of that year


def test_a_versions_thresholds_follow_its_genres_and_mark_likely_genres() -> None:
    row: dict[str, Any] = {"name": "genre-2000", "version": 3, "image_size": 32,
                           "genres": ["Drama", "Comedy"], "years": [2000], "layout": "independent",
                           "metrics": {"thresholds": {"Comedy": 0.3, "Drama": 0.6}}}
    model = served_model(row, "genre")
    assert model is not None and model.thresholds == (0.6, 0.3)  # in the order of the genres
    assert model.likely([0.6, 0.29]) == [True, False]  # at or above the threshold, the F1 rule
    # No thresholds, or not one per genre: nothing is marked rather than some genres only.
    assert genre_thresholds({"micro_f1": 0.5}, ("Drama",)) is None
    assert genre_thresholds({"thresholds": {"Drama": 0.6}}, ("Drama", "Comedy")) is None
    assert genre_thresholds({"thresholds": {"Drama": True}}, ("Drama",)) is None
    unmarked = served_model({**row, "metrics": None}, "genre")
    assert unmarked is not None and unmarked.thresholds is None and unmarked.likely([0.9, 0.9]) is None
