"""``postergenre predict`` and ``postergenre serve inference`` end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.cli import main
from shared.db import ModelVersion, session_scope, upgrade_database
from shared.images import poster_pixels
from shared.inference_client import InferenceClient
from shared.storage import object_store_from_settings, upload_folder
from tests.conftest import make_poster
from tests.services.inference.conftest import GENRES, IMAGE_SIZE, expected_scores, write_pixels_model

SEEDS = {2000: 5, 2001: 6}


def blessed_models_and_a_poster(settings, tmp_path: Path) -> Path:
    """A blessed model for each year of ``SEEDS``; returns a poster to ask them about."""
    upgrade_database(settings.effective_database_url)
    store = object_store_from_settings()
    with session_scope() as session:
        for year, seed in SEEDS.items():
            name = f"genre-{year}"
            upload_folder(store, write_pixels_model(tmp_path / name, seed=seed), f"models/{name}/1")
            session.add(
                ModelVersion(
                    name=name, version=1, year=year, status="blessed", image_size=IMAGE_SIZE, genres=GENRES
                )
            )
    poster = tmp_path / "poster.jpg"
    poster.write_bytes(make_poster(3, size=(40, 60)))
    return poster


def test_predict_prints_each_years_best_genres_and_the_years_without_a_model(settings, tmp_path, capsys):
    poster = blessed_models_and_a_poster(settings, tmp_path)
    seeds = SEEDS

    assert main(["predict", str(poster), "--years", "2000-2002", "--k", "2"]) == 0

    output = capsys.readouterr().out
    pixels = poster_pixels(poster.read_bytes(), IMAGE_SIZE)[np.newaxis].astype(np.float32)
    for year, seed in seeds.items():
        scores = expected_scores(pixels, seed)[0]
        best = [GENRES[i] for i in np.argsort(-scores)[:2]]
        line = next(line for line in output.splitlines() if line.startswith(str(year)))
        assert re.search(rf"genre-{year}\s+1\s+{best[0]} {scores.max():.2f}, {best[1]} ", line), output
    assert "no model for: 2002" in output


def test_predict_json_is_the_api_answer_alone_on_stdout(settings, tmp_path, capsys):
    poster = blessed_models_and_a_poster(settings, tmp_path)

    assert main(["predict", str(poster), "--years", "2000-2002", "--k", "2", "--json"]) == 0

    answer = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    pixels = poster_pixels(poster.read_bytes(), IMAGE_SIZE)[np.newaxis].astype(np.float32)
    assert answer["k"] == 2 and answer["unavailable_years"] == [2002]
    assert answer["poster_sha256"] == hashlib.sha256(poster.read_bytes()).hexdigest()
    assert [(row["year"], row["model"], row["version"]) for row in answer["years"]] == [
        (2000, "genre-2000", 1), (2001, "genre-2001", 1)]
    for row in answer["years"]:
        scores = expected_scores(pixels, SEEDS[row["year"]])[0]
        assert [top["genre"] for top in row["top"]] == [GENRES[i] for i in np.argsort(-scores)[:2]]
        assert row["top"][0]["score"] == pytest.approx(scores.max(), abs=1e-5)


def test_predict_refuses_bad_input_clearly(settings, tmp_path, capsys):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    assert main(["predict", str(tmp_path / "missing.jpg")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["predict", str(not_an_image), "--years", "1800"]) == 2
    assert "bad years" in capsys.readouterr().err


def test_serve_inference_command_answers_until_terminated(settings, models_dir):
    write_pixels_model(models_dir / "genre-2000" / "1", seed=1)
    env = {**os.environ, "POSTERGENRE_HOME": str(settings.home_dir)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "inference",
            "--grpc-port",
            "0",
            "--rest-port",
            "0",
            "--poll-seconds",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(grpc://\S+) and REST on (http://\S+)", line)
        assert match, line
        with InferenceClient(match.group(1), timeout=10) as client:
            assert [s.state for s in client.model_status("genre-2000")] == ["AVAILABLE"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("argv", [["bench", "inference", "--help"], ["serve", "inference", "--help"]])
def test_subcommands_are_registered(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out
