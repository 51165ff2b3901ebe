"""Planning the tasks of one ``postergenre train``: one per model, names, layouts against windows."""

from __future__ import annotations

import pytest

from shared import training_plan
from shared.hyperparameters import default_hyperparameters


def manifest(window: str, targets: dict[str, list[int]]) -> dict:
    return {"id": f"d-{window}", "window": window,
            "targets": {name: {"years": years} for name, years in targets.items()}}


YEARS = manifest("year", {"1999": [1999], "2000": [2000], "2001": [2001]})
DECADES = manifest("decade", {"1990s": list(range(1990, 2000)), "2000s": list(range(2000, 2010))})
HP = default_hyperparameters("smallcnn", epochs=1)


def test_independent_is_one_task_per_year_in_the_range() -> None:
    tasks = training_plan.plan_tasks(YEARS, range(2000, 2002), "independent", HP, "genre")
    assert [t.model_name for t in tasks] == ["genre-2000", "genre-2001"]
    assert [t.params["targets"] for t in tasks] == [["2000"], ["2001"]]
    assert len({t.task_id for t in tasks}) == 2
    assert tasks[0].params["hyperparameters"]["epochs"] == 1


def test_shared_is_one_task_for_every_year() -> None:
    [task] = training_plan.plan_tasks(YEARS, range(1990, 2030), "shared", HP, "genre")
    assert task.model_name == "genre-shared" and task.params["targets"] == ["1999", "2000", "2001"]


def test_window_is_one_task_per_decade_overlapping_the_range() -> None:
    tasks = training_plan.plan_tasks(DECADES, range(1998, 2002), "window", HP, "genre")
    assert [t.model_name for t in tasks] == ["genre-1990s", "genre-2000s"]


@pytest.mark.parametrize(("dataset", "layout", "message"), [
    (DECADES, "independent", "use --layout window"),
    (YEARS, "window", "use --layout independent"),
    (DECADES, "shared", "one head per year"),
    (YEARS, "stacked", "unknown layout"),
])
def test_layouts_that_do_not_fit_the_dataset_are_refused(dataset: dict, layout: str, message: str) -> None:
    with pytest.raises(training_plan.TrainInputError, match=message):
        training_plan.plan_tasks(dataset, range(1990, 2010), layout, HP, "genre")


def test_years_outside_the_dataset_are_refused() -> None:
    with pytest.raises(training_plan.TrainInputError, match="no target in 1980-1985"):
        training_plan.plan_tasks(YEARS, range(1980, 1986), "independent", HP, "genre")


def test_export_formats_are_checked_and_kept_in_order() -> None:
    [task] = training_plan.plan_tasks(YEARS, range(2000, 2001), "shared", HP, "genre",
                                      formats=["savedmodel", "tfjs", "savedmodel", "tflite-full-int8"])
    assert task.params["formats"] == ["savedmodel", "tfjs", "tflite-full-int8"]
    [default] = training_plan.plan_tasks(YEARS, range(2000, 2001), "shared", HP, "genre")
    assert default.params["formats"] is None  # the worker's default: every format it can write


@pytest.mark.parametrize(("formats", "message"), [
    (["onnx"], "not onnx"),
    ([], "not an empty list"),
    (["tfjs"], "include savedmodel"),
])
def test_bad_export_formats_are_refused(formats: list[str], message: str) -> None:
    with pytest.raises(training_plan.TrainInputError, match=message):
        training_plan.plan_tasks(YEARS, range(2000, 2001), "shared", HP, "genre", formats=formats)
