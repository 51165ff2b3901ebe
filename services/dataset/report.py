"""The report of a dataset version: JSON and a PNG chart, stored next to its manifest.

``report.json`` holds, per target, the genre counts of the train split before and after balancing,
the composite-genre histogram before and after, and the split sizes; and for the whole version the
posters per year, the vocabulary (with dropped genres), duplicates and skipped targets.
``report.png`` draws the totals over all targets. The web admin page calls :func:`load_report`
(and :func:`load_report_png` for the image).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from services.dataset.balance import composite_codes
from shared.storage import ObjectExistsError, ObjectNotFoundError, ObjectStore

if TYPE_CHECKING:
    from services.dataset.pipeline import DatasetPlan

TOP_COMPOSITES = 25


def report_key(dataset_id: str, extension: str) -> str:
    return f"datasets/{dataset_id}/report.{extension}"


def composite_name(code: int, genres: list[str]) -> str:
    """``Drama|Romance`` for the composite whose bits are Drama's and Romance's."""
    return "|".join(name for bit, name in enumerate(genres) if code >> bit & 1)


def composite_histogram(
    codes: np.ndarray, genres: list[str], weights: np.ndarray | None = None
) -> dict[str, int]:
    """Examples per composite, most frequent first."""
    counts: Counter[int] = Counter()
    for code, weight in zip(
        codes.tolist(), (weights if weights is not None else np.ones(len(codes))).tolist(), strict=True
    ):
        if weight:
            counts[int(code)] += int(weight)
    return {
        composite_name(code, genres): n for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    }


def build_report(plan: DatasetPlan, manifest: dict[str, Any]) -> dict[str, Any]:
    genres = plan.vocabulary.genres
    targets = {}
    for name, target in plan.targets.items():
        train = target.rows["train"]
        codes = composite_codes(plan.labels[train])
        counts = manifest["targets"][name]["counts"]
        targets[name] = {
            "years": target.years,
            "movies": counts["movies"],
            "genres_before": counts["genres"]["train"],
            "genres_after": counts["genres"]["train_balanced"],
            "genres_by_split": {split: counts["genres"][split] for split in ("train", "validation", "test")},
            "bounds": counts["bounds"],
            "composites_before": composite_histogram(codes, genres),
            "composites_after": composite_histogram(codes, genres, target.copies),
        }
    years, per_year = np.unique(plan.table.years, return_counts=True)
    before = Counter[str]()
    after = Counter[str]()
    for info in targets.values():
        before.update(info["genres_before"])
        after.update(info["genres_after"])
    return {
        "id": plan.dataset_id,
        "window": plan.params.window,
        "genres": genres,
        "genre_posters": plan.vocabulary.poster_counts,
        "dropped_genres": plan.vocabulary.dropped,
        "excluded_movies": plan.excluded,
        "posters_per_year": {str(int(y)): int(n) for y, n in zip(years, per_year, strict=True)},
        "duplicates": manifest["duplicates"],
        "skipped": plan.skipped,
        "targets": targets,
        "summary": {
            "targets": sorted(targets),
            "skipped": plan.skipped,
            "movies": len(plan.table),
            "genres_before": {g: before[g] for g in genres},
            "genres_after": {g: after[g] for g in genres},
            "duplicates": manifest["duplicates"],
        },
    }


def render_png(report: dict[str, Any]) -> bytes:
    """Three charts: genre counts before/after balancing (train, all targets), the most frequent
    composites before/after, and posters per year."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    summary = report["summary"]
    genres: list[str] = report["genres"]
    figure = Figure(figsize=(12, 13), dpi=80)
    axes = figure.subplots(3, 1)
    positions = np.arange(len(genres))
    width = 0.4
    axes[0].bar(positions - width / 2, [summary["genres_before"][g] for g in genres], width, label="before")
    axes[0].bar(positions + width / 2, [summary["genres_after"][g] for g in genres], width, label="after")
    axes[0].set_xticks(positions, genres, rotation=60, ha="right")
    axes[0].set_title(f"{report['id']}: train examples per genre, before and after balancing (all targets)")
    axes[0].legend()
    composites_before: Counter[str] = Counter()
    composites_after: Counter[str] = Counter()
    for info in report["targets"].values():
        composites_before.update(info["composites_before"])
        composites_after.update(info["composites_after"])
    top = [name for name, _ in composites_before.most_common(TOP_COMPOSITES)]
    positions = np.arange(len(top))
    axes[1].bar(positions - width / 2, [composites_before[c] for c in top], width, label="before")
    axes[1].bar(positions + width / 2, [composites_after[c] for c in top], width, label="after")
    axes[1].set_xticks(positions, top, rotation=60, ha="right", fontsize=7)
    axes[1].set_title(
        f"composite genres: the {len(top)} most frequent of {len(composites_before)} (train, all targets)"
    )
    axes[1].legend()
    per_year = report["posters_per_year"]
    positions = np.arange(len(per_year))
    axes[2].bar(positions, list(per_year.values()))
    axes[2].set_xticks(positions, list(per_year), rotation=90)
    axes[2].set_title("posters per release year in the selection")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def store_report(store: ObjectStore, dataset_id: str, report: dict[str, Any]) -> None:
    """Write ``report.json`` and ``report.png`` once (a resumed build keeps the first ones)."""
    for extension, data, content_type in (
        ("json", json.dumps(report, indent=1, sort_keys=True).encode(), "application/json"),
        ("png", render_png(report), "image/png"),
    ):
        try:
            store.put(report_key(dataset_id, extension), data, content_type=content_type, overwrite=False)
        except ObjectExistsError:
            pass


class ReportNotFoundError(LookupError):
    pass


def load_report(store: ObjectStore, dataset_id: str) -> dict[str, Any]:
    """The report of a version, for the web admin page."""
    try:
        return dict(json.loads(store.get(report_key(dataset_id, "json"))))
    except ObjectNotFoundError:
        raise ReportNotFoundError(f"no report for dataset {dataset_id!r}") from None


def load_report_png(store: ObjectStore, dataset_id: str) -> bytes:
    """The PNG chart of a version's report (``image/png``)."""
    try:
        return store.get(report_key(dataset_id, "png"))
    except ObjectNotFoundError:
        raise ReportNotFoundError(f"no report chart for dataset {dataset_id!r}") from None
