# syntax=docker/dockerfile:1
# Inference service: keeps a TF Serving model folder in step with the registry
# (`postergenre-model-sync`, the init/sidecar container beside tensorflow/serving) and can itself
# serve that folder with the protocol-compatible embedded server (`postergenre serve inference`,
# gRPC 8500, REST 8501) where the tensorflow/serving image cannot run.
# Build from the repository root: docker build -f docker/inference.Dockerfile -t postergenre-inference .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a virtual environment holding exactly the pinned packages ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/requirements.lock docker/requirements.lock
RUN pip install --no-cache-dir --requirement docker/requirements.lock

# --- runtime ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POSTERGENRE_HOME=/var/lib/postergenre
RUN groupadd --system --gid 10001 postergenre \
    && useradd --system --uid 10001 --gid postergenre --home-dir /var/lib/postergenre --shell /usr/sbin/nologin postergenre \
    && mkdir -p /var/lib/postergenre/models \
    && chown -R postergenre:postergenre /var/lib/postergenre
# The pinned packages (2.7 GB) in a layer of their own, cached while the lock is unchanged; the
# project on top, a small layer that a code change rebuilds alone.
COPY --from=build /opt/venv /opt/venv
COPY pyproject.toml README.md /tmp/postergenre/
COPY shared /tmp/postergenre/shared
COPY services /tmp/postergenre/services
# services/cli.py registers the `bench` subcommands from it.
COPY benchmarks /tmp/postergenre/benchmarks
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/postergenre \
    && pip check \
    && rm -rf /tmp/postergenre
# COPY then chmod, not COPY --chmod: the classic builder (no BuildKit) refuses --chmod.
COPY docker/model_sync.py /usr/local/bin/postergenre-model-sync
RUN chmod 0755 /usr/local/bin/postergenre-model-sync
WORKDIR /var/lib/postergenre
USER 10001:10001
EXPOSE 8500 8501
# The gRPC port accepting connections means the server is up (TF Serving has no health route);
# bash's /dev/tcp, so a probe starts no Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8500"]
ENTRYPOINT ["postergenre"]
# Every interface: the server is reached from the other containers, not from loopback.
CMD ["serve", "inference", "--host", "0.0.0.0", "--grpc-port", "8500", "--rest-port", "8501"]
