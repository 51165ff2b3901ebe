# Stand-in for redis:7.4.2-bookworm, which cannot be pulled here: Debian's redis-server with the
# official image's interface that compose.yaml uses (`redis-server ARGS` as the command, /data as the
# working directory for the append-only file, redis-cli for the health check).
ARG BASE_IMAGE=postergenre-base:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["sh", "/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
