"""``postergenre bench inference`` at toy scale: both layouts, served as deployed (their own processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.inference import BenchConfig, format_markdown, placement_of, run_benchmark


@pytest.mark.slow
def test_bench_inference_measures_both_layouts_through_the_web_api(tmp_path: Path) -> None:
    environment = dict(os.environ)
    config = BenchConfig(models=2, repeats=2, image_size=32, concurrency=3, rounds=1, genres=3,
                         workdir=str(tmp_path / "bench"))
    report = run_benchmark(config)
    assert dict(os.environ) == environment  # later tests must not talk to the bench's stopped servers

    assert set(report["layouts"]) == {"independent", "shared"}
    for layout in report["layouts"].values():
        # Every served table was complete (the bench checks each answer) and every time was taken.
        assert len(layout["table_times_s"]) == config.repeats
        assert len(layout["round_ratios"]) == config.rounds
        assert layout["table_p50_s"] > 0 and layout["floor_p50_s"] > 0
        assert layout["concurrent_posters_per_s"] > 0 and layout["offline_posters_per_s"] > 0
        # Both services ran as processes of their own: each one's CPU per poster was read.
        assert layout["web_cpu_ms_per_poster"] is not None and layout["web_cpu_ms_per_poster"] >= 0
        assert layout["inference_cpu_ms_per_poster"] is not None
        # The benchmark's own clients too (a few posters may take less than one clock tick: >= 0).
        assert layout["bench_cpu_ms_per_poster"] is not None and layout["bench_cpu_ms_per_poster"] >= 0
    assert set(report["aims"]) == {
        "shared_p50_over_bare_backbone",
        "independent_p50_over_sum_of_single_passes",
        "independent_concurrent_over_offline",
        "shared_concurrent_over_offline",
    }
    table = format_markdown(report)
    assert "| measure | independent models | shared backbone |" in table
    assert "concurrent / offline" in table
    assert "web service CPU per poster, bursts (ms)" in table


@pytest.mark.slow
def test_bench_inference_serves_an_export_with_its_own_shape(tmp_path: Path) -> None:
    """``--export``: a shared-layout version folder is served as it is; the table asks for its years
    (3 here, not the default 20) at its input size, and the floor is a pass of that model."""
    from benchmarks.models import export_pixels_signature, shared_model

    version = tmp_path / "trained" / "genre-shared" / "7"
    export_pixels_signature(shared_model(32, 2, 3, seed=0), version, 32)
    config = BenchConfig(repeats=2, concurrency=2, rounds=1, layouts=("shared",), export=str(version),
                         workdir=str(tmp_path / "bench"))
    report = run_benchmark(config)

    shape = report["config"]
    assert (shape["models"], shape["genres"], shape["image_size"]) == (3, 2, 32)
    shared = report["layouts"]["shared"]
    assert len(shared["table_times_s"]) == config.repeats  # each table answered all three years
    assert shared["floor_p50_s"] > 0
    assert "one pass of the exported model" in format_markdown(report)


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="an inference CPU and a client CPU")
def test_bench_inference_puts_the_inference_server_on_cpus_of_its_own(tmp_path: Path) -> None:
    """``--inference-cpus``: the inference server on its CPU, the web service and the clients on the
    others, and the benchmark's process as it was afterwards."""
    from benchmarks.models import export_pixels_signature, shared_model

    own = os.sched_getaffinity(0)
    inference_cpu = max(own)
    version = tmp_path / "trained" / "genre-shared" / "1"
    export_pixels_signature(shared_model(32, 2, 3, seed=0), version, 32)
    config = BenchConfig(repeats=2, concurrency=2, rounds=1, layouts=("shared",), export=str(version),
                         workdir=str(tmp_path / "bench"), inference_cpus=(inference_cpu,))
    report = run_benchmark(config)

    cpus = report["layouts"]["shared"]["cpus"]
    assert cpus["inference"] == [inference_cpu]
    assert cpus["web"] == cpus["bench"] == sorted(own - {inference_cpu})
    assert os.sched_getaffinity(0) == own
    assert f"offline batch on CPU(s) {inference_cpu}" in format_markdown(report)


def test_inference_cpus_are_refused_where_they_cannot_apply() -> None:
    available = sorted(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="only use CPUs"):
        placement_of(BenchConfig(inference_cpus=(max(available) + 1000,)))
    with pytest.raises(ValueError, match="leave at least one CPU"):
        placement_of(BenchConfig(inference_cpus=tuple(available)))
    with pytest.raises(ValueError, match="processes of their own"):
        placement_of(BenchConfig(inference_cpus=(available[0],), processes="one"))
    assert placement_of(BenchConfig()).inference == frozenset()


def test_inference_cpus_option_refuses_what_is_not_a_cpu_list(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "inference", "--inference-cpus", "one"])
    assert "CPUs are comma-separated numbers" in capsys.readouterr().err


def test_bench_export_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a model version folder"):
        run_benchmark(BenchConfig(layouts=("shared",), export=str(tmp_path), workdir=str(tmp_path / "b")))


def test_bench_layouts_option_refuses_an_unknown_layout(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "inference", "--layouts", "shared,sideways"])
    assert "layouts are independent and shared" in capsys.readouterr().err
