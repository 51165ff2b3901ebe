# syntax=docker/dockerfile:1
# Web service: the poster page, the REST and admin APIs (`postergenre serve web`, port 8000).
# Build from the repository root: docker build -f docker/web.Dockerfile -t postergenre-web .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- tfjs: TF.js for the page's in-browser mode, from the npm registry by package-lock.json's
# integrity hash (the file is not committed; services/web/vendor.py does the same outside images) ---
FROM ${PYTHON_IMAGE} AS tfjs
ENV DEBIAN_FRONTEND=noninteractive \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts

# --- build: a virtual environment holding exactly the pinned packages ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The lock alone first: changing the code does not reinstall TensorFlow.
COPY docker/requirements.lock docker/requirements.lock
RUN pip install --no-cache-dir --requirement docker/requirements.lock

# --- runtime: no compiler, no pip cache, a non-root user ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POSTERGENRE_HOME=/var/lib/postergenre
# Fixed ids so volumes and Kubernetes' fsGroup agree with the image; the models folder exists with
# the right owner so a fresh named volume mounted there is writable.
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
# Into the package before it is installed: the page serves static/vendor/tf.min.js.
COPY --from=tfjs /src/node_modules/@tensorflow/tfjs/dist/tf.min.js /tmp/postergenre/services/web/static/vendor/tf.min.js
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/postergenre \
    && pip check \
    && rm -rf /tmp/postergenre
WORKDIR /var/lib/postergenre
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["postergenre"]
CMD ["serve", "web", "--host", "0.0.0.0", "--port", "8000"]
