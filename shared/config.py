"""One typed settings class for every service, read from ``POSTERGENRE_*`` environment variables.

Nothing configured means *embedded* mode: SQLite and a local folder under ``POSTERGENRE_HOME``,
Celery on kombu's filesystem transport, and the embedded inference server on loopback.
Every setting is documented in ``.env.example``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
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
    broker_visibility_timeout: int = Field(
        default=3600, description="Seconds before a Redis broker redelivers an unacknowledged task "
                                  "(a killed worker's); keep it above the longest training.")
    inference_url: str = Field(
        default="",
        description="grpc://host:port of TF Serving or the embedded server; empty starts one in-process.",
    )
    inference_timeout_s: float = Field(default=10.0, description="Deadline of one inference call.")
    inference_rest_url: str = Field(default="", description="http://host:port of TF Serving's REST API.")
    inference_max_batch_size: int = Field(default=32, description="Largest batch the inference server forms.")
    inference_batch_timeout_ms: float = Field(
        default=2.0, description="How long the inference server waits to fill a batch.")
    inference_poll_seconds: float = Field(
        default=1.0, description="How often the embedded inference server looks for new model versions.")
    admin_token: str = Field(default="", description="Bearer token of the admin API.")
    model_prefix: str = Field(default="genre", description="Yearly models are named <prefix>-<year>.")
    image_size: int = Field(default=128, description="Side of the square model input, in pixels.")
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, description="Largest accepted upload.")
    redis_url: str = Field(default="", description="Redis for the prediction cache (stack mode).")
    tmdb_api_key: str = Field(default="", validation_alias="TMDB_API_KEY")
    tmdb_bearer_token: str = Field(default="", validation_alias="TMDB_BEARER_TOKEN")
    tmdb_api_url: str = Field(default="https://api.themoviedb.org/3", validation_alias="TMDB_API_URL")

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
