"""Model names per layout and the one rule that picks the model answering a year.

Every service reads and writes the same names, so they are formed and read here only:

| layout / dataset window | name | answers for |
| --- | --- | --- |
| independent (``--window year``) | ``<prefix>-<year>``, e.g. ``genre-2000`` | its year |
| window, ``--window rolling`` | ``<prefix>-rolling-<year>``, e.g. ``genre-rolling-2000`` | its centre year |
| window, ``--window decade`` | ``<prefix>-<decade>s``, e.g. ``genre-2000s`` | the ten years it lists |
| shared | ``<prefix>-shared`` | every year of its year axis (one head per year) |

A rolling-window model was once named like the independent model of its year; the Alembic revision
``0002`` renamed those rows, so two layouts never share a name in the registry or in TF Serving.

When several blessed models answer a year, the most specific wins: the year's own model, then the
rolling window centred on it, then the decade, then the shared model (:data:`PRECEDENCE`). The web
page, ``postergenre predict`` and ``postergenre evaluate`` all route through :func:`models_by_year`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import ModelVersion, get_engine, session_scope

ModelKind = Literal["year", "rolling", "decade", "shared"]
# Most specific first: a lower index wins a year that several models answer.
PRECEDENCE: tuple[ModelKind, ...] = ("year", "rolling", "decade", "shared")

SHARED_SUFFIX = "shared"
ROLLING_SUFFIX = "rolling"
YEAR_NAME = re.compile(r"^(\d{4})$")
ROLLING_NAME = re.compile(rf"^{ROLLING_SUFFIX}-(\d{{4}})$")
DECADE_NAME = re.compile(r"^(\d{3}0)s$")


def model_name(prefix: str, layout: str, window: str, target: str) -> str:
    """The registry name of the model trained for ``target`` (a dataset target: ``"2000"`` or
    ``"2000s"``) with ``layout`` on a dataset built with ``window``."""
    if layout == "shared":
        return f"{prefix}-{SHARED_SUFFIX}"
    if window == "rolling":
        return f"{prefix}-{ROLLING_SUFFIX}-{target}"
    return f"{prefix}-{target}"


def version_prefix(name: str, version: int, exports: Mapping[str, Any] | None) -> str:
    """Where a version's files lie in the object store (no trailing slash): the prefix its training
    recorded, else ``models/<name>/<version>``. A renamed model (revision ``0002``) keeps its objects
    where they were written, so every reader asks here instead of forming the key from the name."""
    recorded = (exports or {}).get("prefix")
    return str(recorded).rstrip("/") if recorded else f"models/{name}/{version}"


@dataclass(frozen=True)
class ServedModel:
    """A blessed model version, the years it answers and how to read its scores."""

    name: str
    version: int
    image_size: int
    genres: tuple[str, ...]
    # The year axis of a shared model's ``[batch, years, genres]`` scores; empty for ``[batch, genres]``.
    year_axis: tuple[int, ...]
    covered_years: tuple[int, ...]
    kind: ModelKind
    # Per-genre thresholds tuned on the version's validation split (``metrics.thresholds``), in the
    # order of ``genres``; ``None`` for a version trained before they were recorded.
    thresholds: tuple[float, ...] | None = None

    @property
    def specificity(self) -> int:
        """Lower wins (:data:`PRECEDENCE`)."""
        return PRECEDENCE.index(self.kind)

    def head(self, year: int) -> int | None:
        """The index of ``year`` on the year axis, or ``None`` for a model with one head."""
        return self.year_axis.index(year) if self.year_axis else None

    def likely(self, scores: list[float]) -> list[bool] | None:
        """Per genre: is the score at or above the genre's validation-tuned threshold (the F1 rule of
        ``services.trainer.metrics``)? ``None`` when the version has no thresholds."""
        if self.thresholds is None:
            return None
        return [score >= threshold for score, threshold in zip(scores, self.thresholds, strict=True)]

    def scores_for_year(self, scores: list[list[float]] | list[float], year: int) -> list[float]:
        """The genre scores of ``year`` out of one poster's scores (a row, or a years x genres matrix)."""
        head = self.head(year)
        if head is not None:
            return [float(value) for value in scores[head]]  # type: ignore[union-attr]
        return [float(value) for value in scores]  # type: ignore[arg-type]


def _field(row: ModelVersion | Mapping[str, Any], name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def served_model(row: ModelVersion | Mapping[str, Any], prefix: str) -> ServedModel | None:
    """How a registry row (or its dict, as ``registry.version_as_dict`` gives it) answers, or ``None``
    when its name is not one of ``prefix``'s models."""
    name = str(_field(row, "name"))
    if not name.startswith(prefix + "-"):
        return None
    suffix = name[len(prefix) + 1:]
    listed_years = tuple(int(year) for year in (_field(row, "years") or []))
    genres = tuple(str(genre) for genre in (_field(row, "genres") or []))
    covered: tuple[int, ...]
    axis: tuple[int, ...] = ()
    kind: ModelKind
    if match := YEAR_NAME.match(suffix):
        covered, kind = (int(match.group(1)),), "year"
    elif match := ROLLING_NAME.match(suffix):
        covered, kind = (int(match.group(1)),), "rolling"
    elif match := DECADE_NAME.match(suffix):
        start = int(match.group(1))
        covered, kind = listed_years or tuple(range(start, start + 10)), "decade"
    elif suffix == SHARED_SUFFIX or _field(row, "layout") == "shared":
        covered, axis, kind = listed_years, listed_years, "shared"
    else:
        return None
    return ServedModel(name, int(_field(row, "version")), int(_field(row, "image_size")), genres, axis,
                       covered, kind, genre_thresholds(
        row.get("metrics") if isinstance(row, Mapping) else row.metrics, genres))


def genre_thresholds(metrics: Mapping[str, Any] | None, genres: tuple[str, ...]) -> tuple[float, ...] | None:
    """A version's per-genre thresholds (``metrics.thresholds``, by genre) in the order of ``genres``;
    ``None`` unless every genre has a number (a partial set would mark some genres and not others)."""
    recorded = (metrics or {}).get("thresholds") if isinstance(metrics, Mapping) else None
    if not isinstance(recorded, Mapping) or not genres:
        return None
    values = [recorded.get(genre) for genre in genres]
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
        return None
    return tuple(float(value) for value in values)  # type: ignore[arg-type]


def blessed_models(session: Session, prefix: str) -> list[ServedModel]:
    """Every blessed model of ``prefix``; a name with several blessed rows keeps its newest version."""
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.status == "blessed").order_by(ModelVersion.version)
    ).all()
    return newest_served(rows, prefix)


RegistryFingerprint = frozenset[tuple[str, int, str]]


def registry_fingerprint(url: str, with_canary: bool = False) -> RegistryFingerprint:
    """What the served models are decided from, read in one small query: the (name, version, status)
    of every blessed version (and candidate, ``with_canary``). Two equal fingerprints mean the same
    versions are served, so a reader can keep what it built from the last one. On a pooled connection
    without an ORM session: the web asks it once per request (about 0.2 ms against 0.8 ms for a session
    and its rows on the development machine)."""
    statuses = ["blessed", "candidate"] if with_canary else ["blessed"]
    query = select(ModelVersion.name, ModelVersion.version, ModelVersion.status).where(
        ModelVersion.status.in_(statuses))
    with get_engine(url).connect() as connection:
        return frozenset((name, version, status) for name, version, status in connection.execute(query))


class BlessedModels:
    """:func:`blessed_models` of ``prefix``, read again only when :func:`registry_fingerprint` changes
    (a blessing, a rollback, a rejection, a new version blessed): every call still asks the
    fingerprint, so a change is seen by the next call, in this process or made by another.

    A version's row is only edited in place before it is blessed (its metrics and exports, by the
    trainer), so the served rows change exactly when the fingerprint does.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._lock = threading.Lock()
        self._fingerprint: RegistryFingerprint | None = None
        self._models: list[ServedModel] = []

    def get(self) -> list[ServedModel]:
        # The fingerprint is read before the rows: a change between the two leaves newer rows under
        # the older fingerprint, which the next call sees differ and reads again (never the reverse).
        fingerprint = registry_fingerprint(self.url)
        with self._lock:
            if fingerprint == self._fingerprint:
                return list(self._models)
        with session_scope(self.url) as session:
            models = blessed_models(session, self.prefix)
        with self._lock:
            self._fingerprint, self._models = fingerprint, models
        return list(models)


def newest_served(rows: Iterable[ModelVersion | Mapping[str, Any]], prefix: str) -> list[ServedModel]:
    """The served models of ``rows`` (blessed, in version order): the newest version of each name."""
    newest: dict[str, ServedModel] = {}
    for row in rows:
        model = served_model(row, prefix)
        if model is not None:
            newest[model.name] = model
    return sorted(newest.values(), key=lambda model: model.name)


def models_by_year(models: Iterable[ServedModel], years: Iterable[int] | None = None
                   ) -> dict[int, ServedModel]:
    """THE rule: the model answering each year (of ``years``, or every covered year) that has one,
    the most specific first (:data:`PRECEDENCE`), ties broken by name so the choice is stable."""
    wanted = None if years is None else set(years)
    chosen: dict[int, ServedModel] = {}
    for model in sorted(models, key=lambda m: (m.specificity, m.name)):
        for year in model.covered_years:
            if (wanted is None or year in wanted) and year not in chosen:
                chosen[year] = model
    return chosen
