"""The model registry (``ModelVersion`` rows): register, bless, reject, roll back, list.

Statuses: ``candidate`` (registered, not served), ``blessed`` (the served version of its name, at most
one per name), ``retired`` (served before, or rejected). ``status_reason`` says why a version is where
it is; a retired version that was once served has a reason starting with :data:`WAS_BLESSED`, which
is how a rollback finds the previous blessed version.

Bless rule: a new version is blessed when its macro mAP on test is not below the blessed version's by
more than ``tolerance``. Otherwise it stays a candidate and the reason is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import ModelVersion, session_scope

DEFAULT_TOLERANCE = 0.01
BLESS_METRIC = "macro_map"
WAS_BLESSED = "was blessed"
STATUSES = ("candidate", "blessed", "retired")


class RegistryError(LookupError):
    """Unknown model or version, or a change the registry refuses (the message says which)."""


@dataclass(frozen=True)
class BlessDecision:
    blessed: bool
    reason: str


def test_metric(metrics: dict[str, Any], name: str = BLESS_METRIC) -> float | None:
    """The test-split value of ``name`` in a version's stored metrics, if there is one."""
    value = (metrics.get("test") or {}).get(name)
    return None if value is None else float(value)


def bless_decision(candidate: dict[str, Any], blessed: dict[str, Any] | None,
                   tolerance: float = DEFAULT_TOLERANCE) -> BlessDecision:
    """Whether a candidate with ``candidate`` metrics may replace the blessed version's ``blessed``."""
    new = test_metric(candidate)
    if new is None or new != new:  # missing or NaN
        return BlessDecision(False, f"no test {BLESS_METRIC} to compare")
    if blessed is None:
        return BlessDecision(True, f"first version: test {BLESS_METRIC} {new:.4f}")
    old = test_metric(blessed)
    if old is None or old != old:
        return BlessDecision(True, f"blessed version has no test {BLESS_METRIC}; new one has {new:.4f}")
    if new < old - tolerance:
        return BlessDecision(False, f"test {BLESS_METRIC} {new:.4f} is below the blessed {old:.4f} "
                                    f"by more than the tolerance {tolerance}")
    return BlessDecision(True, f"test {BLESS_METRIC} {new:.4f} vs blessed {old:.4f} "
                               f"(tolerance {tolerance})")


def version_as_dict(row: ModelVersion) -> dict[str, Any]:
    return {
        "name": row.name, "version": row.version, "status": row.status, "status_reason": row.status_reason,
        "year": row.year, "window": row.window, "layout": row.layout, "architecture": row.architecture,
        "image_size": row.image_size, "dataset_version": row.dataset_version, "task_id": row.task_id,
        "genres": list(row.genres or []), "years": list(row.years or []), "metrics": row.metrics,
        "exports": row.exports, "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def _get(session: Session, name: str, version: int, lock: bool = False) -> ModelVersion:
    query = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).first()
    if row is None:
        raise RegistryError(f"model {name!r} has no version {version}")
    return row


def _blessed(session: Session, name: str, lock: bool = False) -> ModelVersion | None:
    query = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.status == "blessed")
    if lock:
        query = query.with_for_update()
    return session.scalars(query.order_by(ModelVersion.version.desc())).first()


def find_by_task(task_id: str, url: str | None = None) -> dict[str, Any] | None:
    """The version a training task registered, if it did (a redelivered task checks this first)."""
    with session_scope(url) as session:
        row = session.scalars(select(ModelVersion).where(ModelVersion.task_id == task_id)).first()
        return version_as_dict(row) if row is not None else None


def register(*, name: str, task_id: str | None, year: int | None, window: str, layout: str,
             architecture: str, image_size: int, dataset_version: str | None, genres: list[str],
             years: list[int], metrics: dict[str, Any] | None = None, exports: dict[str, Any] | None = None,
             status_reason: str = "registered", url: str | None = None) -> dict[str, Any]:
    """Add the next version of ``name`` as a candidate and return it.

    Idempotent per ``task_id`` (unique in the table): a task that registers twice, or two deliveries of
    one task racing, get the same single version back.
    """
    for _attempt in range(5):
        if task_id is not None:
            existing = find_by_task(task_id, url)
            if existing is not None:
                return existing
        try:
            with session_scope(url) as session:
                latest = session.scalar(
                    select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
                row = ModelVersion(
                    name=name, version=(latest or 0) + 1, task_id=task_id, year=year, window=window,
                    layout=layout, architecture=architecture, image_size=image_size,
                    dataset_version=dataset_version, genres=list(genres), years=[int(y) for y in years],
                    metrics=metrics or {}, exports=exports or {}, status="candidate",
                    status_reason=status_reason)
                session.add(row)
                session.flush()
                return version_as_dict(row)
        except IntegrityError:
            continue  # another registration took this version number (or this task id): look again
    raise RegistryError(f"could not register a version of {name!r}: too many concurrent registrations")


def update(name: str, version: int, *, metrics: dict[str, Any] | None = None,
           exports: dict[str, Any] | None = None, status_reason: str | None = None,
           url: str | None = None) -> dict[str, Any]:
    """Record a version's metrics / exports once they exist (the files are immutable, the row is not)."""
    with session_scope(url) as session:
        row = _get(session, name, version, lock=True)
        if metrics is not None:
            row.metrics = metrics
        if exports is not None:
            row.exports = exports
        if status_reason is not None:
            row.status_reason = status_reason
        session.flush()
        return version_as_dict(row)


def bless(name: str, version: int, tolerance: float = DEFAULT_TOLERANCE, force: bool = False,
          url: str | None = None) -> dict[str, Any]:
    """Serve ``version`` if the bless rule (or ``force``) allows; else it stays a candidate with the reason.

    The previously blessed version is retired in the same transaction. Returns the version's row.
    """
    with session_scope(url) as session:
        row = _get(session, name, version, lock=True)
        if row.status == "blessed":
            return version_as_dict(row)
        current = _blessed(session, name, lock=True)
        decision = bless_decision(row.metrics or {}, current.metrics if current else None, tolerance)
        if not decision.blessed and not force:
            row.status = "candidate" if row.status == "candidate" else row.status
            row.status_reason = f"not blessed: {decision.reason}"
            session.flush()
            return version_as_dict(row)
        if current is not None:
            current.status = "retired"
            current.status_reason = f"{WAS_BLESSED}; superseded by version {version}"
        row.status = "blessed"
        row.status_reason = ("blessed by force: " if force and not decision.blessed else "blessed: ") + \
            decision.reason
        session.flush()
        return version_as_dict(row)


def reject(name: str, version: int, reason: str, url: str | None = None) -> dict[str, Any]:
    """Retire a candidate that must never be served. The blessed version is rolled back, not rejected."""
    with session_scope(url) as session:
        row = _get(session, name, version, lock=True)
        if row.status == "blessed":
            raise RegistryError(f"{name} version {version} is being served: roll back instead of rejecting")
        row.status = "retired"
        row.status_reason = f"rejected: {reason}"
        session.flush()
        return version_as_dict(row)


def rollback(name: str, to_version: int | None = None, url: str | None = None) -> dict[str, Any]:
    """Serve the previous blessed version of ``name`` (or ``to_version``) again; retire the current one.

    One call, one transaction. Returns the version now blessed.
    """
    with session_scope(url) as session:
        current = _blessed(session, name, lock=True)
        if to_version is None:
            if current is None:
                raise RegistryError(f"model {name!r} has no blessed version to roll back from")
            query = (select(ModelVersion)
                     .where(ModelVersion.name == name, ModelVersion.version < current.version,
                            ModelVersion.status == "retired",
                            ModelVersion.status_reason.startswith(WAS_BLESSED))
                     .order_by(ModelVersion.version.desc()))
            target = session.scalars(query).first()
            if target is None:
                raise RegistryError(f"model {name!r} has no earlier blessed version than {current.version}")
        else:
            target = _get(session, name, to_version, lock=True)
            if current is not None and target.version == current.version:
                return version_as_dict(target)
            if not target.exports:
                raise RegistryError(f"{name} version {to_version} has no exports to serve")
        if current is not None:
            current.status = "retired"
            current.status_reason = f"{WAS_BLESSED}; rolled back to version {target.version}"
        target.status = "blessed"
        target.status_reason = "blessed again by rollback" + (f" from version {current.version}"
                                                               if current is not None else "")
        session.flush()
        return version_as_dict(target)


def list_versions(name: str | None = None, status: str | None = None,
                  url: str | None = None) -> list[dict[str, Any]]:
    """Every version (of ``name``, with ``status``), by name then version."""
    with session_scope(url) as session:
        query = select(ModelVersion)
        if name is not None:
            query = query.where(ModelVersion.name == name)
        if status is not None:
            query = query.where(ModelVersion.status == status)
        rows = session.scalars(query.order_by(ModelVersion.name, ModelVersion.version)).all()
        return [version_as_dict(row) for row in rows]


def blessed_versions(url: str | None = None) -> list[dict[str, Any]]:
    return list_versions(status="blessed", url=url)
