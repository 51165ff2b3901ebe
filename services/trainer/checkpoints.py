"""A training task's checkpoint: the files that let a task resume from its last epoch, here or on
another worker.

``last.keras`` (weights and optimizer state), ``best.weights.h5`` (the best epoch by the monitored
metric) and ``state.json`` (epoch, history, early-stopping counters) live in
``$POSTERGENRE_HOME/checkpoints/<task_id>/`` and are uploaded under ``checkpoints/<task_id>/`` in the
object store after every epoch, so that a worker that dies leaves its task to another.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from shared.files import replace_atomically, write_bytes_atomically, write_text_atomically
from shared.hyperparameters import Hyperparameters
from shared.storage import ObjectNotFoundError, ObjectStore

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.keras"
BEST_WEIGHTS = "best.weights.h5"
STATE_FILE = "state.json"
CHECKPOINT_FILES = (LAST_CHECKPOINT, BEST_WEIGHTS, STATE_FILE)


def checkpoint_dir(home: Path, task_id: str) -> Path:
    return home / "checkpoints" / task_id


def checkpoint_key(task_id: str, filename: str) -> str:
    return f"checkpoints/{task_id}/{filename}"


def upload_checkpoint(store: ObjectStore, folder: Path, task_id: str) -> None:
    # state.json last: a reader that sees the new state also finds the files it names.
    for name in CHECKPOINT_FILES:
        path = folder / name
        if path.is_file():
            content_type = "application/json" if name.endswith(".json") else "application/octet-stream"
            store.put(checkpoint_key(task_id, name), path.read_bytes(), content_type=content_type)


def fetch_checkpoint(store: ObjectStore, folder: Path, task_id: str) -> dict[str, Any] | None:
    """The newest checkpoint state of ``task_id``: the local one, else the object store's (downloaded).

    The local copy wins only when it is at least as far as the stored one (another worker may have
    gone further since this machine last ran the task).
    """
    local = _read_state(folder / STATE_FILE)
    try:
        remote = json.loads(store.get(checkpoint_key(task_id, STATE_FILE)))
    except ObjectNotFoundError:
        remote = None
    if remote is not None and (local is None or remote.get("epoch", 0) > local.get("epoch", 0)):
        for name in (LAST_CHECKPOINT, BEST_WEIGHTS):
            try:
                write_bytes_atomically(folder / name, store.get(checkpoint_key(task_id, name)))
            except ObjectNotFoundError:
                pass
        write_text_atomically(folder / STATE_FILE, json.dumps(remote))
        return dict(remote)
    return local


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def delete_checkpoint(store: ObjectStore, folder: Path, task_id: str) -> None:
    """Drop a finished task's checkpoint (its model version now lives in the registry)."""
    for name in CHECKPOINT_FILES:
        store.delete(checkpoint_key(task_id, name))
    shutil.rmtree(folder, ignore_errors=True)


def make_epoch_checkpoint(store: ObjectStore, folder: Path, task_id: str, hp: Hyperparameters,
                          state: dict[str, Any]) -> Any:
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        """Checkpoint, best-model tracking and early stopping, with state that survives a restart.

        Keras' own ModelCheckpoint/EarlyStopping forget their counters when a new process resumes;
        this keeps them in ``state.json`` next to the weights.
        """

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = {key: float(value) for key, value in (logs or {}).items()}
            history = state.setdefault("history", {})
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            monitored = logs.get(hp.monitor)
            higher_is_better = not hp.monitor.endswith("loss")
            best = state.get("best_value")
            improved = monitored is not None and (
                best is None or (monitored > best if higher_is_better else monitored < best))
            if improved or not (folder / BEST_WEIGHTS).is_file():
                state["best_value"], state["best_epoch"] = monitored, epoch + 1
                replace_atomically(folder / BEST_WEIGHTS, self.model.save_weights)
            val_loss = logs.get("val_loss")
            best_loss = state.get("best_val_loss")
            if val_loss is not None and (best_loss is None or val_loss < best_loss):
                state["best_val_loss"], state["wait"] = val_loss, 0
            else:
                state["wait"] = int(state.get("wait", 0)) + 1
            state["epoch"] = epoch + 1
            if state["wait"] >= hp.patience:
                logger.info("early stop after epoch %d: val_loss has not improved for %d epochs",
                            epoch + 1, hp.patience)
                state["stopped_early"] = True
                self.model.stop_training = True
            # Each file replaced whole and state.json last: a worker killed mid-save leaves the previous
            # epoch's checkpoint loadable, and the state never names an epoch the weights have not reached.
            replace_atomically(folder / LAST_CHECKPOINT, self.model.save)
            write_text_atomically(folder / STATE_FILE, json.dumps(state))
            upload_checkpoint(store, folder, task_id)

    return EpochCheckpoint()
