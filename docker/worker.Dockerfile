# syntax=docker/dockerfile:1
# Celery workers of the CPU queues: crawler (`crawl`) and dataset builder (`dataset`).
# Build from the repository root: docker build -f docker/worker.Dockerfile -t postergenre-worker .
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
WORKDIR /var/lib/postergenre
USER 10001:10001
# Alive while the main process touches its heartbeat file (a thread): no broker round trip, no Python start.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "test $(( $(date +%s) - $(stat -c %Y /tmp/postergenre-worker.heartbeat) )) -lt 120"]
ENTRYPOINT ["postergenre"]
CMD ["worker", "--queues", "crawl,dataset", "--concurrency", "2"]
