"""Progress of long-running jobs, kept in the ``jobs`` table so every service can read it."""

from __future__ import annotations

from typing import Any

from shared.db import Job, session_scope


def create_job(job_id: str, kind: str, params: dict[str, Any], url: str | None = None) -> None:
    with session_scope(url) as session:
        if session.get(Job, job_id) is None:
            session.add(Job(id=job_id, kind=kind, params=params, state="PENDING"))


def update_job(job_id: str, *, state: str | None = None, progress: float | None = None,
               counts: dict[str, Any] | None = None, error: str | None = None,
               result: dict[str, Any] | None = None, url: str | None = None) -> None:
    """Record progress (0-100), counts, an error or the result of a job; unknown ids are created."""
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is None:
            job = Job(id=job_id, kind="unknown", params={})
            session.add(job)
        if state is not None:
            job.state = state
        if progress is not None:
            job.progress = max(0.0, min(100.0, float(progress)))
        if counts is not None:
            job.counts = {**(job.counts or {}), **counts}
        if error is not None:
            job.errors = [*(job.errors or []), error]
        if result is not None:
            job.result = result


def job_as_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "kind": job.kind, "state": job.state, "progress": job.progress,
        "params": job.params, "counts": job.counts, "errors": job.errors, "result": job.result,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "updated_at": job.updated_at.isoformat() if job.updated_at else None,
    }
