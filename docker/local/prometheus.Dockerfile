# Prometheus on the local Debian base, for compose.yaml's PROMETHEUS_IMAGE where prom/prometheus
# cannot be pulled (an offline machine, the stack test): Debian's `prometheus` package is upstream
# Prometheus (2.42 in bookworm), given the interface of the official image that compose.yaml uses:
# the binary as the entrypoint (compose.yaml's `command` is its flags), /prometheus as the data
# folder (the prometheus-data volume takes its owner from here), wget for the health check.
# Build from the repository root:
#   docker build -f docker/local/prometheus.Dockerfile --build-arg BASE_IMAGE=postergenre-base:bookworm \
#       -t postergenre-prometheus:2.42 docker/local
# (it copies nothing: compose.yaml mounts docker/observability/prometheus.yml over the package's).
ARG BASE_IMAGE=postergenre-base:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The package's postinst creates the `prometheus` system user; its service is never started here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
WORKDIR /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
