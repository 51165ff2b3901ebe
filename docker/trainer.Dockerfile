# syntax=docker/dockerfile:1
# Trainer: the Celery worker of the `gpu` queue, on TensorFlow's CUDA image, with the TF.js
# converter in its own environment beside it (tensorflowjs 4.22.0 cannot live beside TF 2.21;
# scripts/make_tfjs_env.sh pins the combination that converts a TF 2.21 SavedModel).
# Build from the repository root: docker build -f docker/trainer.Dockerfile -t postergenre-trainer .
ARG TF_IMAGE=tensorflow/tensorflow:2.21.0-gpu

# --- venv-base: the base image plus Python's venv module, shared by the two build stages ---
FROM ${TF_IMAGE} AS venv-base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

# --- tfjs: the converter's pinned environment, built by the project's own script ---
FROM venv-base AS tfjs
COPY scripts/make_tfjs_env.sh /src/scripts/make_tfjs_env.sh
RUN POSTERGENRE_TFJS_VENV=/opt/venv-tfjs POSTERGENRE_TFJS_PYTHON=python3.11 bash /src/scripts/make_tfjs_env.sh

# --- build: the pinned packages over the base image's TensorFlow (system site packages) ---
FROM venv-base AS build
RUN python3.11 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/requirements.lock docker/requirements.lock
RUN pip install --no-cache-dir --requirement docker/requirements.lock

# --- runtime: same base as the build stages, so both environments' interpreter links resolve ---
FROM ${TF_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POSTERGENRE_HOME=/var/lib/postergenre \
    POSTERGENRE_TFJS_CONVERTER=/opt/venv-tfjs/bin/tensorflowjs_converter
RUN groupadd --system --gid 10001 postergenre \
    && useradd --system --uid 10001 --gid postergenre --home-dir /var/lib/postergenre --shell /usr/sbin/nologin postergenre \
    && mkdir -p /var/lib/postergenre/models \
    && chown -R postergenre:postergenre /var/lib/postergenre
COPY --from=tfjs /opt/venv-tfjs /opt/venv-tfjs
# The pinned packages in a layer of their own, cached while the lock is unchanged; the project on
# top, a small layer that a code change rebuilds alone.
COPY --from=build /opt/venv /opt/venv
COPY pyproject.toml README.md /tmp/postergenre/
COPY shared /tmp/postergenre/shared
COPY services /tmp/postergenre/services
# services/cli.py registers the `bench` subcommands from it.
COPY benchmarks /tmp/postergenre/benchmarks
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/postergenre \
    && pip check \
    && rm -rf /tmp/postergenre
WORKDIR /var/lib/postergenre
USER 10001:10001
# Alive while the main process touches its heartbeat file (a thread): no broker round trip, no Python start.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "test $(( $(date +%s) - $(stat -c %Y /tmp/postergenre-worker.heartbeat) )) -lt 120"]
ENTRYPOINT ["postergenre"]
# One training task at a time per GPU; prefork keeps the parent answering pings during a task.
CMD ["worker", "--queues", "gpu", "--concurrency", "1", "--pool", "prefork"]
