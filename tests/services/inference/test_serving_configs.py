"""The start-up files sync_models writes beside models.config: batching.config from the settings and
monitoring.config (Prometheus metrics on TF Serving's REST port)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from services.inference.repository import (
    BATCHING_CONFIG_NAME,
    MONITORING_CONFIG_NAME,
    parse_model_server_config,
    sync_models,
)
from shared.config import Settings, get_settings
from shared.db import upgrade_database


def monitoring_config_class() -> Any:
    """``tensorflow.serving.MonitoringConfig``, built from its .proto definition.

    The tensorflow-serving-api wheel ships no ``monitoring_config_pb2``, so the message is declared
    here exactly as tensorflow_serving/config/monitoring_config.proto declares it (names, numbers,
    types), and the text is parsed strictly against it: an unknown or misspelt field fails.
    """
    proto = descriptor_pb2.FileDescriptorProto(
        name="postergenre_test/monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1,
                         type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


@pytest.fixture
def synced(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("POSTERGENRE_INFERENCE_BATCH_THREADS", "5")
    get_settings.cache_clear()
    configured = get_settings()
    upgrade_database(configured.effective_database_url)
    sync_models(configured)
    return configured


def test_monitoring_config_enables_prometheus_on_the_rest_port(synced: Settings) -> None:
    path = synced.models_dir / MONITORING_CONFIG_NAME
    assert path.parent == synced.models_config_path.parent
    config = text_format.Parse(path.read_text(), monitoring_config_class()())
    assert config.prometheus_config.enable is True
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_batching_threads_come_from_the_settings(synced: Settings) -> None:
    text = (synced.models_dir / BATCHING_CONFIG_NAME).read_text()
    assert "num_batch_threads { value: 5 }" in text
    assert "max_batch_size { value: 32 }" in text


def test_a_misspelt_monitoring_field_would_not_parse() -> None:
    with pytest.raises(text_format.ParseError):
        text_format.Parse('prometheus_config { enabled: true }', monitoring_config_class()())


def test_unchanged_files_are_not_rewritten_and_changed_ones_are(synced: Settings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    files = [synced.models_dir / name for name in (MONITORING_CONFIG_NAME, BATCHING_CONFIG_NAME)]
    files.append(synced.models_config_path)
    past = 1_000_000_000  # an mtime a rewrite would replace
    for path in files:
        os.utime(path, (past, past))
    sync_models(synced)
    assert [path.stat().st_mtime for path in files] == [past] * 3  # TF Serving's pollers see no change

    monkeypatch.setenv("POSTERGENRE_INFERENCE_BATCH_THREADS", "3")
    get_settings.cache_clear()
    sync_models(get_settings())
    assert "num_batch_threads { value: 3 }" in (synced.models_dir / BATCHING_CONFIG_NAME).read_text()
    assert (synced.models_dir / MONITORING_CONFIG_NAME).stat().st_mtime == past
    assert len(parse_model_server_config(synced.models_config_path.read_text())
               .model_config_list.config) == 0  # type: ignore[attr-defined]
