"""Scrapy's files-store interface over the project's object store (local folder, S3 or MinIO).

:class:`PosterPipeline` hands it posters already validated and named by
:func:`shared.catalog.poster_key`; writes run in a worker thread so the crawl keeps going.
"""

from __future__ import annotations

import asyncio
import time
from io import BytesIO
from typing import Any

from shared.storage import ObjectStore


class ObjectFilesStore:
    """``persist_file`` / ``stat_file`` of Scrapy's ``FilesStoreProtocol``, writing to an ObjectStore."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def persist_file(self, path: str, buf: BytesIO, info: Any, meta: dict[str, Any] | None = None,
                           headers: dict[str, str] | None = None) -> None:
        content_type = (headers or {}).get("Content-Type", "application/octet-stream")
        await asyncio.to_thread(self.store.put, path, buf.getvalue(), content_type)

    async def stat_file(self, path: str, info: Any) -> dict[str, Any]:
        """``{}`` when absent; keys are content-addressed, so a present object is never stale."""
        exists = await asyncio.to_thread(self.store.exists, path)
        return {"last_modified": time.time(), "checksum": None} if exists else {}
