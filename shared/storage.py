"""Object store for posters, datasets and models: a local folder (embedded) or S3/MinIO (stack).

Both implement :class:`ObjectStore`. Writes are atomic: a reader never sees a half-written object
(temp file + rename locally; a single PUT on S3). ``put(..., overwrite=False)`` refuses to replace an
existing object, which is how immutable dataset and model versions are protected.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urlparse

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ObjectStoreError(ValueError):
    pass


class ObjectExistsError(ObjectStoreError):
    pass


class ObjectNotFoundError(ObjectStoreError):
    pass


def check_key(key: str) -> str:
    """Refuse keys that could escape the store (``..``, absolute paths, backslashes, NUL)."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key: {key!r}")
    parts = PurePosixPath(key).parts
    if any(part in ("..", ".", "") for part in parts) or key.endswith("/"):
        raise ValueError(f"invalid object key: {key!r}")
    return key


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            overwrite: bool = True) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...


class LocalObjectStore:
    """Objects as files under a root folder; keys are relative POSIX paths."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            overwrite: bool = True) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    raise ObjectExistsError(f"object exists and is immutable: {key}") from None
                finally:
                    os.unlink(tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3ObjectStore:
    """Objects in one bucket of an S3-protocol server (MinIO in deployment), through the ``minio`` client."""

    def __init__(self, bucket: str, endpoint: str, access_key: str, secret_key: str,
                 secure: bool = False, region: str = "us-east-1", prefix: str = "",
                 retry_seconds: float = 30.0) -> None:
        from minio import Minio

        if not endpoint:
            raise ObjectStoreError("POSTERGENRE_S3_ENDPOINT must be set for an s3:// object store")
        endpoint = endpoint.removeprefix("http://").removeprefix("https://")
        import urllib3

        # Short connect timeout and few internal retries: _retry owns the waiting, with a deadline.
        http_client = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=120), maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                            region=region, http_client=http_client)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.retry_seconds = retry_seconds

    def _retry(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying with exponential backoff while the server is unreachable.

        A server that is down for a while (a MinIO restart) must not fail a crawl or a dataset
        build; S3 errors (no such key, access denied) are answers and are not retried.
        """
        from urllib3.exceptions import HTTPError as Urllib3Error

        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return operation()
            except (Urllib3Error, ConnectionError, TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise ObjectStoreError(f"object store {self.url} unreachable: {exc}") from exc
                log.warning("object store unreachable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def ensure_bucket(self) -> None:
        def create() -> None:
            if not self.client.bucket_exists(bucket_name=self.bucket):
                self.client.make_bucket(bucket_name=self.bucket)

        self._retry(create)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            overwrite: bool = True) -> None:
        if not overwrite and self.exists(key):
            raise ObjectExistsError(f"object exists and is immutable: {key}")
        # One PUT: the object appears whole or not at all.
        self._retry(lambda: self.client.put_object(
            bucket_name=self.bucket, object_name=self._name(key), data=io.BytesIO(data),
            length=len(data), content_type=content_type))

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        def read() -> bytes:
            response = self.client.get_object(bucket_name=self.bucket, object_name=self._name(key))
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        try:
            return self._retry(read)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFoundError(key) from None
            raise

    def _stat(self, key: str) -> int | None:
        from minio.error import S3Error

        try:
            stat = self._retry(lambda: self.client.stat_object(bucket_name=self.bucket,
                                                               object_name=self._name(key)))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise
        return int(stat.size or 0)

    def exists(self, key: str) -> bool:
        return self._stat(key) is not None

    def size(self, key: str) -> int:
        size = self._stat(key)
        if size is None:
            raise ObjectNotFoundError(key)
        return size

    def list(self, prefix: str = "") -> Iterator[str]:
        objects = self._retry(lambda: list(self.client.list_objects(
            bucket_name=self.bucket, prefix=self.prefix + prefix, recursive=True)))
        for obj in objects:
            name = obj.object_name or ""
            yield name[len(self.prefix):]

    def delete(self, key: str) -> None:
        self._retry(lambda: self.client.remove_object(bucket_name=self.bucket, object_name=self._name(key)))


def open_object_store(url: str, endpoint: str = "", access_key: str = "", secret_key: str = "",
                      secure: bool = False, region: str = "us-east-1",
                      retry_seconds: float = 30.0) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalObjectStore(Path(parsed.path))
    if parsed.scheme == "s3":
        store = S3ObjectStore(parsed.netloc, endpoint, access_key, secret_key, secure, region,
                              prefix=parsed.path, retry_seconds=retry_seconds)
        store.ensure_bucket()
        return store
    raise ObjectStoreError(f"POSTERGENRE_OBJECT_STORE must be file:///path or s3://bucket, not {url!r}")


def object_store_from_settings(settings: Settings | None = None) -> ObjectStore:
    """THE way a service opens the object store: every store setting of ``settings`` (the process'
    settings by default), the retry window (``POSTERGENRE_S3_RETRY_SECONDS``) included."""
    from shared.config import get_settings

    s = settings or get_settings()
    return open_object_store(s.effective_object_store, s.s3_endpoint, s.s3_access_key, s.s3_secret_key,
                             s.s3_secure, s.s3_region, s.s3_retry_seconds)


def download_prefix(store: ObjectStore, prefix: str, dest: Path) -> list[Path]:
    """Copy every object under ``prefix`` into ``dest`` (keeping the relative layout)."""
    written = []
    for key in store.list(prefix):
        rel = key[len(prefix):].lstrip("/")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get(key))
        written.append(target)
    return written


def upload_folder(store: ObjectStore, folder: Path, prefix: str, overwrite: bool = False) -> list[str]:
    """Store every file under ``folder`` as ``prefix/<relative path>``."""
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
            store.put(key, path.read_bytes(), overwrite=overwrite)
            keys.append(key)
    return keys
