"""The files a training leaves for people in its work folder: ``history.json``, ``metrics.json`` and
PNG plots of the history, the test ROC-AUC per year and the test average precision per genre."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_reports(work_dir: Path, history: dict[str, list[float]], evaluation: dict[str, Any],
                  genres: list[str], targets: list[str]) -> dict[str, str]:
    """``history.json``, ``metrics.json`` and PNG plots in ``work_dir``; returns name -> file name."""
    (work_dir / "history.json").write_text(json.dumps(history, indent=1))
    (work_dir / "metrics.json").write_text(json.dumps(json_safe(evaluation), indent=1))
    files = {"history": "history.json", "metrics": "metrics.json"}
    if history:
        plot_history(history, work_dir / "history.png")
        files["history_plot"] = "history.png"
    if "per_target_test" in evaluation:
        plot_per_target(evaluation["per_target_test"], evaluation["baselines"]["test"],
                        work_dir / "per_year.png")
        files["per_year_plot"] = "per_year.png"
    plot_per_genre(evaluation["test"].get("per_genre", {}), work_dir / "per_genre.png")
    files["per_genre_plot"] = "per_genre.png"
    return files


def json_safe(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become ``null``."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.floating | np.integer):
        return json_safe(value.item())
    return value


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in ("loss", "auc", "binary_accuracy", "top3_accuracy") if name in history]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, name in zip(axes[0], panels, strict=True):
        epochs = range(1, len(history[name]) + 1)
        axis.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            axis.plot(range(1, len(history[f"val_{name}"]) + 1), history[f"val_{name}"], label="validation")
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_per_target(per_target: dict[str, Any], baselines: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_target)
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(names)), 3.2))
    axis.bar(names, [per_target[n].get("macro_auc", 0) for n in names], label="model macro ROC-AUC")
    axis.axhline(0.5, color="grey", linestyle="--", label="chance")
    axis.set_ylim(0.3, 1.0)
    axis.tick_params(axis="x", rotation=90)
    axis.set_title("test macro ROC-AUC per year")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_per_genre(per_genre: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_genre)
    figure, axis = plt.subplots(figsize=(max(6, 0.4 * len(names)), 3.2))
    axis.bar(names, [per_genre[n]["average_precision"] for n in names])
    axis.tick_params(axis="x", rotation=90)
    axis.set_title("test average precision per genre")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
