"""Upload size limits, enforced while the bytes arrive rather than after they are all in memory.

Two guards: :class:`UploadLimitMiddleware` refuses a prediction request whose body (declared by
``Content-Length`` or counted as it streams in) exceeds what the allowed files can take, before the
multipart parser spools it; :func:`read_upload` then reads each file in chunks and stops at the
per-file limit. Nothing is written anywhere but the parser's temporary spool, which is discarded.
"""

from __future__ import annotations

from fastapi import UploadFile
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.web.errors import ApiError

CHUNK_BYTES = 256 * 1024
# Room for the multipart boundaries, part headers and the small form fields (years, k).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Every other body is a small JSON request (admin starts, rollbacks): refused past this, unread.
JSON_BODY_BYTES = 64 * 1024


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The file's bytes, read in chunks; 413 as soon as they pass ``limit``."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "file_too_large",
                           f"{upload.filename or 'the file'} is larger than the {limit} byte upload limit")
        chunks.append(chunk)
    return b"".join(chunks)


def body_limit(path: str, max_upload_bytes: int, max_files: int) -> int | None:
    """The largest request body a path accepts: uploads on the prediction and explanation paths,
    small JSON elsewhere."""
    if path.endswith("/predictions:batch"):
        return max_upload_bytes * max_files + MULTIPART_OVERHEAD_BYTES
    if path.endswith(("/predictions", "/explanations")):
        return max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    return JSON_BODY_BYTES


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_files: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_files = max_files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = body_limit(scope.get("path", ""), self.max_upload_bytes, self.max_files) \
            if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        too_large = HTTPException(413, f"the request is larger than the {self.max_upload_bytes} byte "
                                       "upload limit allows" if limit > JSON_BODY_BYTES
                                  else f"the request body is larger than {limit} bytes")
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise too_large  # refused before a byte of the body is read
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, receive_with_limit, send)
