"""Object store for posters, datasets and models: a local folder (embedded) or S3/MinIO (stack).

Both implement :class:`ObjectStore`. Writes are atomic: a reader never sees a half-written object
(temp file + rename locally; a single PUT on S3). ``put(..., overwrite=False)`` refuses to replace an
existing object, which is how immutable dataset and model versions are protected.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlparse


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
                 secure: bool = False, region: str = "us-east-1", prefix: str = "") -> None:
        from minio import Minio

        if not endpoint:
            raise ObjectStoreError("POSTERGENRE_S3_ENDPOINT must be set for an s3:// object store")
        endpoint = endpoint.removeprefix("http://").removeprefix("https://")
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                            region=region)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(bucket_name=self.bucket):
            self.client.make_bucket(bucket_name=self.bucket)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            overwrite: bool = True) -> None:
        if not overwrite and self.exists(key):
            raise ObjectExistsError(f"object exists and is immutable: {key}")
        self.client.put_object(bucket_name=self.bucket, object_name=self._name(key),
                               data=io.BytesIO(data), length=len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(bucket_name=self.bucket, object_name=self._name(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFoundError(key) from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def _stat(self, key: str) -> int | None:
        from minio.error import S3Error

        try:
            stat = self.client.stat_object(bucket_name=self.bucket, object_name=self._name(key))
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
        for obj in self.client.list_objects(bucket_name=self.bucket, prefix=self.prefix + prefix,
                                            recursive=True):
            name = obj.object_name or ""
            yield name[len(self.prefix):]

    def delete(self, key: str) -> None:
        self.client.remove_object(bucket_name=self.bucket, object_name=self._name(key))


def open_object_store(url: str, endpoint: str = "", access_key: str = "", secret_key: str = "",
                      secure: bool = False, region: str = "us-east-1") -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalObjectStore(Path(parsed.path))
    if parsed.scheme == "s3":
        store = S3ObjectStore(parsed.netloc, endpoint, access_key, secret_key, secure, region,
                              prefix=parsed.path)
        store.ensure_bucket()
        return store
    raise ObjectStoreError(f"POSTERGENRE_OBJECT_STORE must be file:///path or s3://bucket, not {url!r}")


def object_store_from_settings() -> ObjectStore:
    from shared.config import get_settings

    s = get_settings()
    return open_object_store(s.effective_object_store, s.s3_endpoint, s.s3_access_key, s.s3_secret_key,
                             s.s3_secure, s.s3_region)


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
