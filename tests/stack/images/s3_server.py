"""moto's S3 server, standing in for MinIO in the stack test, with its objects kept in a folder.

moto keeps objects in memory while MinIO keeps them on its volume. So that a restart or a
`compose down` / `up` behaves as with MinIO, every object is loaded from ``DATA_DIR`` at start and
written back on SIGTERM (docker stop, compose down). A SIGKILL loses what was written since the
start: the one way this differs from MinIO, and no test kills this container.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import quote, unquote

import boto3
from moto.server import ThreadedMotoServer

DATA_DIR = Path(os.environ.get("S3_DATA_DIR", "/data"))
READY_FILE = Path(os.environ.get("S3_READY_FILE", "/tmp/s3-ready"))
PORT = int(os.environ.get("S3_PORT", "9000"))


def client():  # type: ignore[no-untyped-def]
    # moto accepts any credentials; the region matches POSTERGENRE_S3_REGION's default.
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{PORT}", region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def load(s3, snapshot: Path) -> int:  # type: ignore[no-untyped-def]
    """Every ``snapshot/<bucket>/<quoted key>`` file back into the server; the object count."""
    count = 0
    if not snapshot.is_dir():
        return count
    for bucket_dir in sorted(p for p in snapshot.iterdir() if p.is_dir()):
        s3.create_bucket(Bucket=bucket_dir.name)
        for path in bucket_dir.iterdir():
            s3.put_object(Bucket=bucket_dir.name, Key=unquote(path.name), Body=path.read_bytes())
            count += 1
    return count


def dump(s3, snapshot: Path) -> int:  # type: ignore[no-untyped-def]
    """Every object into a new snapshot folder, swapped in whole; the object count.

    Keys are quoted into flat file names, so a key and a "folder" of the same name cannot clash.
    """
    fresh = snapshot.with_name(snapshot.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    count = 0
    for bucket in s3.list_buckets()["Buckets"]:
        bucket_dir = fresh / bucket["Name"]
        bucket_dir.mkdir(parents=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for entry in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket["Name"], Key=entry["Key"])["Body"].read()
                (bucket_dir / quote(entry["Key"], safe="")).write_bytes(body)
                count += 1
    fresh.mkdir(parents=True, exist_ok=True)
    old = snapshot.with_name(snapshot.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if snapshot.exists():
        snapshot.rename(old)
    fresh.rename(snapshot)
    shutil.rmtree(old, ignore_errors=True)
    return count


def main() -> int:
    snapshot = DATA_DIR / "snapshot"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=PORT, verbose=False)
    server.start()
    s3 = client()
    print(f"S3 stand-in on :{PORT}, {load(s3, snapshot)} objects loaded from {snapshot}", flush=True)
    READY_FILE.touch()
    stop.wait()
    READY_FILE.unlink(missing_ok=True)
    print(f"{dump(s3, snapshot)} objects written to {snapshot}", flush=True)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
