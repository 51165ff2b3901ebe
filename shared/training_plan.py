"""Planning a ``train`` request into tasks, one per model: the contract between who asks for a
training (``postergenre train``, the admin API) and the trainer that runs it.

One task per target for the ``independent`` and ``window`` layouts, one for all selected years for the
``shared`` layout; a task's id is its job id. Plain data only: no Keras, no Celery.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.hyperparameters import LAYOUTS, LITE_ARCHITECTURES, Hyperparameters
from shared.models import model_name

# The exports a training can ask for, in the order they are written. ``tflite-full-int8`` is the
# full-integer LiteRT model, calibrated on training posters and checked against the float model on
# the test posters before the server may choose it: the slowest export by far, so a request can
# leave it out (the demo does; its model is served in float anyway).
FULL_INT8_FORMAT = "tflite-full-int8"
EXPORT_FORMATS = ("savedmodel", "tflite", FULL_INT8_FORMAT, "tfjs")


class TrainInputError(ValueError):
    """The training request does not fit the dataset (message says why)."""


def check_formats(formats: Sequence[str]) -> list[str]:
    """The requested export formats without repeats, or :class:`TrainInputError` saying what is wrong."""
    names = list(dict.fromkeys(formats))
    unknown = [name for name in names if name not in EXPORT_FORMATS]
    if unknown or not names:
        raise TrainInputError(f"export formats are a list of {', '.join(EXPORT_FORMATS)}; "
                              f"not {', '.join(unknown) if unknown else 'an empty list'}")
    if "tfjs" in names and "savedmodel" not in names:
        raise TrainInputError("the TF.js export is converted from the SavedModel: include savedmodel")
    return names


@dataclass(frozen=True)
class PlannedTask:
    task_id: str
    params: dict[str, Any]

    @property
    def model_name(self) -> str:
        return str(self.params["model_name"])


def select_targets(manifest: dict[str, Any], years: range) -> list[str]:
    """Targets of the dataset whose years meet ``years`` (a year target inside it, a decade overlapping)."""
    wanted = set(years)
    selected = []
    for target, info in manifest["targets"].items():
        if target.isdigit():
            if int(target) in wanted:
                selected.append(target)
        elif wanted & {int(y) for y in info.get("years", [])}:
            selected.append(target)
    return sorted(selected)


def check_weights(hp: Hyperparameters) -> None:
    """``--weights package``: the pinned package's file is there, intact and of the right shapes, checked
    before anything is queued (a training would otherwise fail only once a worker builds its model)."""
    from shared import pretrained

    if hp.weights == "imagenet" and hp.architecture in LITE_ARCHITECTURES:
        raise TrainInputError(pretrained.imagenet_download_refusal(hp.architecture))
    if hp.weights != "package":
        return
    from shared.config import get_settings

    configured = get_settings().backbone_weights_file
    try:
        pretrained.check_package_weights(hp.architecture, configured.expanduser() if configured else None)
    except pretrained.PretrainedWeightsError as exc:
        raise TrainInputError(str(exc)) from exc


def plan_tasks(manifest: dict[str, Any], years: range, layout: str, hp: Hyperparameters, prefix: str,
               formats: list[str] | None = None, bless: bool = True, tolerance: float | None = None
               ) -> list[PlannedTask]:
    """The tasks of one ``train`` request (ids decided here: a task's id is its job id)."""
    if layout not in LAYOUTS:
        raise TrainInputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    window = str(manifest.get("window", "year"))
    if layout == "independent" and window != "year":
        raise TrainInputError(f"dataset {manifest['id']} has {window} windows: use --layout window "
                              "(independent models need a dataset built with --window year)")
    if layout == "window" and window == "year":
        raise TrainInputError(f"dataset {manifest['id']} has one target per year: use --layout independent, "
                              "or build it with --window decade or rolling")
    if layout == "shared" and window == "decade":
        raise TrainInputError("the shared layout has one head per year: build the dataset with --window year")
    check_weights(hp)
    targets = select_targets(manifest, years)
    if not targets:
        raise TrainInputError(f"dataset {manifest['id']} has no target in {years[0]}-{years[-1]} "
                              f"(its targets: {', '.join(sorted(manifest['targets'])) or 'none'})")
    common: dict[str, Any] = {"dataset_id": manifest["id"], "layout": layout, "hyperparameters": hp.as_dict(),
                              "formats": None if formats is None else check_formats(formats), "bless": bless}
    if tolerance is not None:
        common["tolerance"] = tolerance
    if layout == "shared":
        groups = [(model_name(prefix, layout, window, targets[0]), targets)]
    else:
        groups = [(model_name(prefix, layout, window, target), [target]) for target in targets]
    return [PlannedTask(str(uuid.uuid4()), {**common, "model_name": name, "targets": group})
            for name, group in groups]
