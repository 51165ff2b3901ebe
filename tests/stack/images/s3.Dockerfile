# Stand-in for minio/minio and minio/mc, which cannot be pulled here: moto's S3 server (the same
# S3 protocol on port 9000) with its objects kept on the /data volume across restarts (s3_server.py),
# and the bucket-creating one-shot (s3_make_bucket.py) in the same image.
ARG BASE_IMAGE=postergenre-base:bookworm
FROM ${BASE_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv && pip install --no-cache-dir "moto[server]==5.2.5" "boto3==1.44.8" \
    && mkdir -p /data
COPY s3_server.py s3_make_bucket.py /opt/s3/
EXPOSE 9000
ENTRYPOINT ["python", "/opt/s3/s3_server.py"]
