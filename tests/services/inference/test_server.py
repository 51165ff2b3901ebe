"""The embedded server over real gRPC (and REST), driven through the client the web service uses."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from shared.inference_client import (
    BaseInferenceClient,
    InferenceClient,
    InferenceError,
    InferenceUnavailable,
    InvalidInferenceInput,
    ModelNotFound,
    Prediction,
    RestInferenceClient,
    grpc_target,
)
from tests.services.inference.conftest import (
    GENRES,
    IMAGE_SIZE,
    YEARS,
    expected_scores,
    random_pixels,
    write_pixels_model,
)


def answered(result: Prediction | InferenceError) -> Prediction:
    assert isinstance(result, tuple), result
    return result


def test_every_year_is_answered_by_its_own_model(embedded, yearly_models):
    pixels = random_pixels(2)
    with InferenceClient(embedded.url, timeout=10) as client:
        results = client.predict_many(list(yearly_models), pixels)
    assert set(results) == set(yearly_models)
    for name, seed in yearly_models.items():
        scores, version = answered(results[name])
        assert version == 1
        assert scores.shape == (2, len(GENRES))
        np.testing.assert_allclose(scores, expected_scores(pixels, seed), atol=1e-5)
    # The models differ, so a mix-up between years would show.
    first, second = (answered(results[f"genre-{y}"])[0] for y in YEARS[:2])
    assert not np.allclose(first, second)


def test_shared_backbone_model_is_one_model_with_one_output_per_year(embedded, models_dir):
    write_pixels_model(models_dir / "genre-shared" / "1", seed=7, years=len(YEARS))
    embedded.manager.refresh()
    pixels = random_pixels(3, seed=1)
    with InferenceClient(embedded.url, timeout=10) as client:
        scores, version = client.predict("genre-shared", pixels)
    assert scores.shape == (3, len(YEARS), len(GENRES))
    np.testing.assert_allclose(scores, expected_scores(pixels, 7, years=len(YEARS)), atol=1e-5)


def test_missing_year_or_version_is_model_not_found(embedded, yearly_models):
    pixels = random_pixels(1)
    with InferenceClient(embedded.url, timeout=10) as client:
        with pytest.raises(ModelNotFound, match="genre-1999"):
            client.predict("genre-1999", pixels)
        with pytest.raises(ModelNotFound, match="version 7"):
            client.predict("genre-2000", pixels, version=7)
        with pytest.raises(ModelNotFound, match="canary"):
            client.predict("genre-2000", pixels, label="canary")
        results = client.predict_many(["genre-1999", *yearly_models], pixels)
    assert isinstance(results["genre-1999"], ModelNotFound)
    assert all(isinstance(results[name], tuple) for name in yearly_models)


def test_bad_input_is_invalid_argument(embedded):
    with InferenceClient(embedded.url, timeout=10) as client:
        with pytest.raises(InvalidInferenceInput, match=r"shape \[None, 16, 16, 3\]"):
            client.predict("genre-2000", random_pixels(1, image_size=IMAGE_SIZE * 2))
        with pytest.raises(InvalidInferenceInput, match="signature"):
            client.predict("genre-2000", random_pixels(1), signature="nope")
        with pytest.raises(InvalidInferenceInput, match="pixels must be"):
            client.predict("genre-2000", np.zeros((4, 4), np.float32))


def test_model_that_fails_to_load_is_reported_by_name_while_others_serve(settings, yearly_models, models_dir):
    from services.inference.server import start_server

    broken = models_dir / "genre-2003" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    server = start_server(models_dir, None, rest_port=0, poll_seconds=0)
    try:
        assert "genre-2003" in server.manager.failures()
        with InferenceClient(server.url, timeout=10) as client:
            [status] = client.model_status("genre-2003")
            assert (status.version, status.state) == (1, "END")
            assert status.error
            with pytest.raises(ModelNotFound, match="failed to load"):
                client.predict("genre-2003", random_pixels(1))
            results = client.predict_many(list(yearly_models), random_pixels(1))
            assert all(isinstance(result, tuple) for result in results.values())
            assert [s.state for s in client.model_status("genre-2000")] == ["AVAILABLE"]
        with RestInferenceClient(server.rest_url or "", timeout=10) as rest:
            [status] = rest.model_status("genre-2003")
            assert status.state == "END" and status.error
    finally:
        server.stop(grace=0.2)


def test_new_version_is_hot_reloaded_during_a_stream_of_requests(embedded, models_dir):
    pixels = random_pixels(1, seed=3)
    seen_versions: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def stream() -> None:
        with InferenceClient(embedded.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    scores, version = client.predict("genre-2000", pixels)
                except Exception as exc:
                    failures.append(exc)
                    continue
                seen_versions.append(version)
                if version == 2:
                    np.testing.assert_allclose(scores, expected_scores(pixels, 999), atol=1e-5)

    streams = [threading.Thread(target=stream) for _ in range(3)]
    for thread in streams:
        thread.start()
    try:
        while not seen_versions:
            time.sleep(0.01)
        # Written aside and renamed into place, as sync_models does: the poller never sees half a model.
        staging = models_dir / "genre-2000" / ".tmp-2"
        write_pixels_model(staging, seed=999)
        os.rename(staging, models_dir / "genre-2000" / "2")
        waited = 0.0
        while 2 not in seen_versions[-5:] and waited < 60:
            time.sleep(0.05)
            waited += 0.05
        count_at_switch = len(seen_versions)
        while len(seen_versions) < count_at_switch + 10 and not failures:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in streams:
            thread.join()
    assert failures == []
    assert 1 in seen_versions and seen_versions[-1] == 2
    # The old version is unloaded once the new one serves (latest-version policy).
    with InferenceClient(embedded.url, timeout=10) as client:
        assert [s.version for s in client.model_status("genre-2000")] == [2]


def test_stopped_server_gives_unavailable_within_the_deadline(settings, yearly_models, models_dir):
    from services.inference.server import start_server

    server = start_server(models_dir, None, poll_seconds=0)
    client = InferenceClient(server.url, timeout=2.0)
    client.predict("genre-2000", random_pixels(1))
    server.stop(grace=0)
    started = time.monotonic()
    with pytest.raises(InferenceUnavailable, match="unavailable"):
        client.predict("genre-2000", random_pixels(1))
    results = client.predict_many(["genre-2000", "genre-2001"], random_pixels(1))
    assert all(isinstance(result, InferenceUnavailable) for result in results.values())
    assert time.monotonic() - started < 2 * 2.0 + 2.0  # bounded by the deadlines, never a hang
    client.close()


def test_server_that_does_not_answer_gives_unavailable_after_the_deadline():
    # A listener that accepts connections and never speaks: the client must give up at its deadline.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with InferenceClient(f"grpc://127.0.0.1:{port}", timeout=1.0) as client:
            started = time.monotonic()
            with pytest.raises(InferenceUnavailable, match="deadline"):
                client.predict("genre-2000", random_pixels(1))
            assert time.monotonic() - started < 1.0 + 3.0


def test_concurrent_requests_are_batched_with_the_same_results_as_single_ones(embedded, yearly_models):
    rows = [random_pixels(1 + index % 3, seed=index) for index in range(12)]
    with InferenceClient(embedded.url, timeout=10) as client:
        single = [client.predict("genre-2001", pixels)[0] for pixels in rows]
        results: list[np.ndarray | None] = [None] * len(rows)

        def ask(index: int) -> None:
            results[index] = client.predict("genre-2001", rows[index])[0]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(rows))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for alone, together in zip(single, results, strict=True):
        assert together is not None and together.shape == alone.shape
        np.testing.assert_allclose(together, alone, atol=1e-6)


def test_rest_routes_match_grpc(embedded, yearly_models):
    pixels = random_pixels(2, seed=5)
    assert embedded.rest_url
    with (
        InferenceClient(embedded.url, timeout=10) as grpc_client,
        RestInferenceClient(embedded.rest_url, timeout=10) as rest_client,
    ):
        grpc_scores, grpc_version = grpc_client.predict("genre-2002", pixels)
        rest_scores, rest_version = rest_client.predict("genre-2002", pixels)
        labelled = rest_client.predict("genre-2002", pixels, version=1)
        assert rest_version == grpc_version == 1
        np.testing.assert_allclose(rest_scores, grpc_scores, atol=1e-6)
        np.testing.assert_allclose(labelled[0], grpc_scores, atol=1e-6)
        assert [s.state for s in rest_client.model_status("genre-2002")] == ["AVAILABLE"]
        with pytest.raises(ModelNotFound):
            rest_client.predict("genre-1999", pixels)
        with pytest.raises(InvalidInferenceInput):
            rest_client.predict("genre-2002", random_pixels(1, image_size=8))
        signature = grpc_client.signature_defs("genre-2002")["pixels"]
        assert [d.size for d in signature.inputs["pixels"].tensor_shape.dim] == [
            -1,
            IMAGE_SIZE,
            IMAGE_SIZE,
            3,
        ]


def test_both_clients_fan_out_alike_through_their_shared_base(embedded, yearly_models):
    """``predict_many`` is ``BaseInferenceClient``'s over gRPC (futures) and REST (a thread per model)
    alike: each name gets its scores or its own error, a one-model call the same, and pixels that are
    not ``[N,S,S,3]`` are refused before anything is sent."""
    pixels = random_pixels(2, seed=6)
    served = sorted(yearly_models)[:2]
    assert embedded.rest_url
    with (
        InferenceClient(embedded.url, timeout=10) as grpc_client,
        RestInferenceClient(embedded.rest_url, timeout=10) as rest_client,
    ):
        for client in (grpc_client, rest_client):
            assert isinstance(client, BaseInferenceClient)
            results = client.predict_many([*served, "genre-1999"], pixels)
            for name in served:
                scores, version = results[name]  # type: ignore[misc]
                assert version == 1
                np.testing.assert_allclose(scores, expected_scores(pixels, yearly_models[name]), atol=1e-5)
            assert isinstance(results["genre-1999"], ModelNotFound)
            [(name, alone)] = client.predict_many(["genre-1999"], pixels).items()
            assert name == "genre-1999" and isinstance(alone, ModelNotFound)
            with pytest.raises(InvalidInferenceInput, match=r"pixels must be float32 \[N, S, S, 3\]"):
                client.predict_many(served, np.zeros((2, IMAGE_SIZE, IMAGE_SIZE)))


def test_server_without_models_starts_and_picks_up_a_config_written_later(settings, models_dir):
    from services.inference.server import start_server

    server = start_server(models_dir, settings.models_config_path, poll_seconds=0)
    try:
        with InferenceClient(server.url, timeout=5) as client:
            with pytest.raises(ModelNotFound):
                client.predict("genre-2000", random_pixels(1))
            write_pixels_model(models_dir / "genre-2000" / "3", seed=3)
            write_pixels_model(models_dir / "genre-2000" / "4", seed=4)
            settings.models_config_path.write_text(
                'model_config_list { config { name: "genre-2000" base_path: "%s" model_platform: "tensorflow"'
                " model_version_policy { specific { versions: 3 versions: 4 } }"
                ' version_labels { key: "stable" value: 3 } version_labels { key: "canary" value: 4 } } }'
                % (models_dir / "genre-2000")
            )
            server.manager.refresh()
            assert client.predict("genre-2000", random_pixels(1), label="stable")[1] == 3
            assert client.predict("genre-2000", random_pixels(1), label="canary")[1] == 4
            assert client.predict("genre-2000", random_pixels(1), version=3)[1] == 3
    finally:
        server.stop(grace=0)
    shutil.rmtree(models_dir)


def test_calls_are_spread_over_every_replica_the_target_resolves_to(settings, yearly_models, models_dir):
    """Two replicas behind one target (as a headless Service's DNS name lists every TF Serving pod):
    the client's round-robin policy sends calls to both, where pick-first would pin them to one."""
    from services.inference.server import start_server

    first = start_server(models_dir, None, host="127.0.0.1", poll_seconds=0)
    try:
        second = start_server(models_dir, None, grpc_port=first.grpc_port, host="127.0.0.2", poll_seconds=0)
    except (OSError, RuntimeError) as exc:  # a loopback without 127.0.0.2 (not Linux)
        first.stop(grace=0)
        pytest.skip(f"cannot listen on 127.0.0.2: {exc}")
    replicas = (first, second)
    try:
        target = f"grpc://ipv4:127.0.0.1:{first.grpc_port},127.0.0.2:{first.grpc_port}"
        pixels = random_pixels(1)
        with InferenceClient(target, timeout=10) as client:
            for _ in range(20):
                scores, _ = client.predict("genre-2000", pixels)
                expected = expected_scores(pixels, yearly_models["genre-2000"])
                np.testing.assert_allclose(scores, expected, atol=1e-5)
        served = [replica.manager.resolve("genre-2000").signatures["pixels"].batcher.rows_run
                  for replica in replicas]
        assert sum(served) == 20
        assert min(served) >= 5, served  # round robin gives each 10; pick-first would give one all 20
    finally:
        for replica in replicas:
            replica.stop(grace=0)


@pytest.mark.parametrize(("url", "target"), [
    ("grpc://tfserving:8500", "tfserving:8500"),
    ("tfserving:8500", "tfserving:8500"),
    ("grpc://dns:///tfserving-pods:8500", "dns:///tfserving-pods:8500"),
    ("ipv4:10.0.0.1:8500,10.0.0.2:8500", "ipv4:10.0.0.1:8500,10.0.0.2:8500"),
])
def test_inference_urls_name_a_grpc_target(url, target):
    assert grpc_target(url) == target


@pytest.mark.parametrize("url", ["", "grpc://", "grpc://host:8500/v1/models"])
def test_an_inference_url_that_is_no_grpc_target_is_refused(url):
    with pytest.raises(ValueError, match="grpc://host:port"):
        grpc_target(url)
