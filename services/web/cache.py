"""Cache of model scores per (poster sha256, model name, model version).

A result depends only on the poster bytes and the model version, so scores are cached per model and
any ``years``/``k`` request reuses them. Redis when ``settings.redis_url`` is set (shared by every
web process), else an in-process LRU. The cache is an optimisation: a cache that fails is logged and
skipped, never a failed prediction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from typing import Any, Protocol

log = logging.getLogger(__name__)

KEY_PREFIX = "postergenre:scores:"
DEFAULT_TTL_S = 7 * 24 * 3600


def cache_namespace(database_url: str) -> str:
    """Model names and versions are unique within one registry (database), so its URL scopes the keys:
    two deployments (or test databases) sharing a Redis never read each other's scores."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:12]


def cache_key(namespace: str, poster_sha256: str, model: str, version: int) -> str:
    return f"{KEY_PREFIX}{namespace}:{poster_sha256}:{model}:{version}"


class ScoreCache(Protocol):
    kind: str

    def get_many(self, keys: list[str]) -> dict[str, Any]: ...

    def set_many(self, values: dict[str, Any]) -> None: ...


class LruScoreCache:
    """In-process cache of the most recent ``capacity`` entries (embedded mode)."""

    kind = "memory"

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found = {}
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    found[key] = self._entries[key]
        return found

    def set_many(self, values: dict[str, Any]) -> None:
        with self._lock:
            for key, value in values.items():
                self._entries[key] = value
                self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


class RedisScoreCache:
    """Scores as JSON strings in Redis with a TTL (stack mode: shared by every web replica)."""

    kind = "redis"

    def __init__(self, url: str, ttl_s: int = DEFAULT_TTL_S) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.ttl_s = ttl_s

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        if not keys:
            return {}
        try:
            values = self.client.mget(keys)
        except Exception as exc:  # the cache must never fail a prediction
            log.warning("prediction cache read failed: %s", exc)
            return {}
        return {key: json.loads(value) for key, value in zip(keys, values, strict=True) if value is not None}

    def set_many(self, values: dict[str, Any]) -> None:
        if not values:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in values.items():
                pipe.set(key, json.dumps(value), ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:
            log.warning("prediction cache write failed: %s", exc)


def open_score_cache(redis_url: str) -> ScoreCache:
    return RedisScoreCache(redis_url) if redis_url else LruScoreCache()
