"""``postergenre bench inference`` at toy scale: both layouts, served as deployed (their own processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.inference import BenchConfig, format_markdown, run_benchmark


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
    assert set(report["aims"]) == {
        "shared_p50_over_bare_backbone",
        "independent_p50_over_sum_of_single_passes",
        "independent_concurrent_over_offline",
        "shared_concurrent_over_offline",
    }
    table = format_markdown(report)
    assert "| measure | independent models | shared backbone |" in table
    assert "concurrent / offline" in table


def test_bench_layouts_option_refuses_an_unknown_layout(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "inference", "--layouts", "shared,sideways"])
    assert "layouts are independent and shared" in capsys.readouterr().err
