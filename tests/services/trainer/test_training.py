"""Training in-process on a tiny dataset version: metrics, reports, checkpoints and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.trainer import checkpoints, training
from shared.hyperparameters import Hyperparameters, default_hyperparameters
from shared.storage import object_store_from_settings
from tests.services.trainer.datasets import GENRES, write_dataset


def tiny_hp(epochs: int) -> Hyperparameters:
    return default_hyperparameters("smallcnn", epochs=epochs, batch_size=8, width=4, resolution=32,
                                   weights="none", patience=10)


def test_independent_model_trains_resumes_from_its_checkpoint_and_reports(settings: object, tmp_path: Path
                                                                          ) -> None:
    store = object_store_from_settings()
    write_dataset(store, "tiny", [2000], per_year=12)
    home = settings.home_dir  # type: ignore[attr-defined]
    first = training.TrainRequest("task-1", "tiny", ["2000"], "independent", "genre-2000", tiny_hp(1))
    outcome = training.train(first, store, home, tmp_path / "work1")
    assert outcome.epochs_run == 1 and outcome.resumed_from_epoch == 0
    # The checkpoint is in the object store too, so another worker could resume it.
    keys = set(store.list("checkpoints/task-1/"))
    assert {f"checkpoints/task-1/{name}" for name in checkpoints.CHECKPOINT_FILES} <= keys

    # The same task asked for 2 epochs (a redelivery) continues at epoch 2, from the store's copy.
    (home / "checkpoints" / "task-1" / checkpoints.LAST_CHECKPOINT).unlink()
    (home / "checkpoints" / "task-1" / checkpoints.STATE_FILE).unlink()
    second = training.TrainRequest("task-1", "tiny", ["2000"], "independent", "genre-2000", tiny_hp(2))
    progress: list[tuple[int, int]] = []
    outcome = training.train(second, store, home, tmp_path / "work2",
                             progress=lambda epoch, batch, batches, logs: progress.append((epoch, batch)))
    assert outcome.resumed_from_epoch == 1 and outcome.epochs_run == 2
    assert {epoch for epoch, _ in progress} == {2}
    assert len(outcome.history["loss"]) == 2

    scores = outcome.model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert scores.shape == (2, len(GENRES))
    test = outcome.metrics["test"]
    for name in ("macro_map", "macro_auc", "micro_f1", "recall_at_6", "precision_at_3", "top1_hit",
                 "binary_accuracy", "top3_accuracy", "true_share_at_6"):
        assert name in test
    assert set(outcome.metrics["baselines"]["test"]) == {"no_genre", "year_prior"}
    assert outcome.metrics["resumed_from_epochs"] == [1]
    written = json.loads((tmp_path / "work2" / "metrics.json").read_text())
    assert written["test"]["examples"] == 3
    for name in ("history.json", "history.png", "per_genre.png"):
        assert (tmp_path / "work2" / name).stat().st_size > 0
    assert any((tmp_path / "work2" / "tensorboard").rglob("*tfevents*"))


def test_shared_model_has_one_head_per_year(settings: object, tmp_path: Path) -> None:
    store = object_store_from_settings()
    write_dataset(store, "tiny2", [2000, 2001, 2002], per_year=8)
    request = training.TrainRequest("task-2", "tiny2", ["2000", "2001", "2002"], "shared", "genre-shared",
                                    tiny_hp(1))
    outcome = training.train(request, store, settings.home_dir, tmp_path / "work")  # type: ignore[attr-defined]
    assert outcome.years == [2000, 2001, 2002]
    assert outcome.model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0).shape == (2, 3, len(GENRES))
    assert set(outcome.metrics["per_target_test"]) == {"2000", "2001", "2002"}
    assert (tmp_path / "work" / "per_year.png").is_file()


def test_bad_requests_are_refused_with_a_reason(settings: object, tmp_path: Path) -> None:
    store = object_store_from_settings()
    write_dataset(store, "tiny3", [2000], per_year=8)
    with pytest.raises(training.TrainingInputError, match="not in dataset"):
        training.train(training.TrainRequest("t", "tiny3", ["1999"], "independent", "genre-1999", tiny_hp(1)),
                       store, settings.home_dir, tmp_path)  # type: ignore[attr-defined]
    with pytest.raises(training.TrainingInputError, match="unknown layout"):
        training.train(training.TrainRequest("t", "tiny3", ["2000"], "stacked", "genre-2000", tiny_hp(1)),
                       store, settings.home_dir, tmp_path)  # type: ignore[attr-defined]
