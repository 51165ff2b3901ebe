"""The bucket-creating one-shot beside the S3 stand-in (what `mc mb --ignore-existing` does)."""

from __future__ import annotations

import os
import sys

import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=os.environ.get("POSTERGENRE_S3_ACCESS_KEY", "local"),
                  aws_secret_access_key=os.environ.get("POSTERGENRE_S3_SECRET_KEY", "local"))
existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
if bucket not in existing:
    s3.create_bucket(Bucket=bucket)
print(f"bucket {bucket}: {'exists' if bucket in existing else 'created'}")
