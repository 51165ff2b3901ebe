#!/opt/venv/bin/python
"""Keep a TF Serving model folder in step with the model registry.

Runs ``services.inference.repository.sync_models`` once (``--once``: the init container / one-shot
service that must write ``models.config`` before TF Serving starts, since TF Serving refuses to
start without it) or in a loop (the sidecar beside each TF Serving replica on Kubernetes, where
replicas on different nodes cannot share one writable volume, and the ``model-sync`` service of
compose.yaml): every ``--interval`` seconds (default ``POSTERGENRE_MODEL_SYNC_INTERVAL_S``) one small
registry query, and a sync only when the served versions changed
(``services.inference.repository.RegistryWatcher``). TF Serving polls the config file it writes, so
a blessing or a rollback reaches every replica without a restart, and without the trainer or the web
service syncing anything (docs/architecture.md, "The model sync").

In the loop (the sidecar), each round also:

- touches ``--heartbeat-file`` (default ``/tmp/postergenre-model-sync.heartbeat``), before the sync,
  after each model copied and after the round, from the loop itself (no thread), so a hung sync
  stops it; the liveness probe is ``test $(( $(date +%s) - $(stat -c %Y FILE) )) -lt 120``;
- asks the model server beside it (``--rest-url``, default ``POSTERGENRE_INFERENCE_REST_URL``; in a
  pod, the replica's own ``http://127.0.0.1:8501``) for ``GET /v1/models/<name>`` of every model in
  ``models.config`` and writes ``--ready-file`` (default ``/tmp/postergenre-model-sync.ready``)
  when each has an ``AVAILABLE`` version, removing it otherwise: the pod's readiness probe
  (``test -f FILE``) then means "the server beside me serves every registered model". With no
  model configured the server is ready; with no ``models.config`` yet, it is not.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.inference.repository import RegistryWatcher

log = logging.getLogger("postergenre.model_sync")

HEARTBEAT_FILE = Path("/tmp/postergenre-model-sync.heartbeat")
READY_FILE = Path("/tmp/postergenre-model-sync.ready")


def touch(path: Path) -> None:
    """Set ``path``'s mtime to now (creating it); a failure is logged: the probe will say the rest."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.warning("cannot touch %s: %s", path, exc)


def sync_once(heartbeat: Path | None = None) -> bool:
    """One sync from the registry; False (logged) when the database or object store failed."""
    from services.inference.repository import sync_models
    from shared.config import get_settings

    progress = (lambda: touch(heartbeat)) if heartbeat is not None else None
    try:
        path = sync_models(get_settings(), progress=progress)
    except Exception:  # a sidecar outlives an unreachable store: log it and try again next round
        log.exception("model sync failed")
        return False
    log.info("models in step with the registry: %s", path)
    return True


def configured_models(config_path: Path) -> list[str] | None:
    """The model names ``models.config`` lists; None when there is no readable config."""
    from services.inference.repository import parse_model_server_config

    try:
        config = parse_model_server_config(config_path.read_text())
    except Exception as exc:  # missing, or half-written by hand: not ready, say why
        log.warning("no usable model config at %s: %s", config_path, exc)
        return None
    return [entry.name for entry in config.model_config_list.config]  # type: ignore[attr-defined]


def unavailable_models(rest_url: str, names: list[str], timeout: float) -> list[str]:
    """The names among ``names`` that the server at ``rest_url`` has no AVAILABLE version of."""
    from shared.inference_client import InferenceError, RestInferenceClient

    missing = []
    with RestInferenceClient(rest_url, timeout) as client:
        for name in names:
            try:
                states = client.model_status(name)
            except InferenceError as exc:
                log.info("model %s not served at %s: %s", name, rest_url, exc)
                missing.append(name)
                continue
            if not any(state.state == "AVAILABLE" for state in states):
                missing.append(name)
    return missing


def server_is_ready(rest_url: str, config_path: Path, timeout: float) -> bool:
    """Whether the server serves every model of ``config_path`` (logged when it does not)."""
    names = configured_models(config_path)
    if names is None:
        return False
    if not names:
        return True
    if not rest_url:
        log.warning("cannot check the model server: POSTERGENRE_INFERENCE_REST_URL (or --rest-url) is empty")
        return False
    missing = unavailable_models(rest_url, names, timeout)
    if missing:
        log.warning("the model server at %s does not serve %d of %d models yet: %s", rest_url,
                    len(missing), len(names), ", ".join(missing))
    return not missing


def mark_ready(ready_file: Path, ready: bool) -> None:
    """Create or remove the readiness file, logging only the transitions."""
    was_ready = ready_file.exists()
    try:
        if ready:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.touch()
        else:
            ready_file.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot update %s: %s", ready_file, exc)
        return
    if ready != was_ready:
        log.info("the model server is %s",
                 "ready: it serves every configured model" if ready else "not ready")


def sync_if_changed(watcher: RegistryWatcher, heartbeat: Path) -> bool:
    """A sync when the registry's served versions changed since the last good one; False (logged)
    when the database or object store failed (the next round tries again)."""
    try:
        if watcher.sync_if_changed(progress=lambda: touch(heartbeat)):
            log.info("models in step with the registry: %s", watcher.settings.models_config_path)
    except Exception:  # a sidecar outlives an unreachable store: log it and try again next round
        log.exception("model sync failed")
        return False
    return True


def sidecar_round(rest_url: str, heartbeat: Path, ready_file: Path, watcher: RegistryWatcher) -> None:
    """One round of the loop: heartbeat, sync if the registry changed, readiness of the server
    beside, heartbeat."""
    touch(heartbeat)
    sync_if_changed(watcher, heartbeat)
    settings = watcher.settings
    # Checked even when this round's sync failed: the server still serves the last models.config.
    try:
        ready = server_is_ready(rest_url, settings.models_config_path, settings.inference_timeout_s)
    except Exception:  # an odd answer must not end the loop: not ready, and said why
        log.exception("cannot check the model server at %s", rest_url)
        ready = False
    mark_ready(ready_file, ready)
    touch(heartbeat)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--once", action="store_true", help="sync once and exit (non-zero on failure)")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between two looks at the registry "
                             "(default: POSTERGENRE_MODEL_SYNC_INTERVAL_S)")
    parser.add_argument("--heartbeat-file", type=Path, default=HEARTBEAT_FILE,
                        help="touched every round of the loop (liveness)")
    parser.add_argument("--ready-file", type=Path, default=READY_FILE,
                        help="present while the model server serves every configured model (readiness)")
    parser.add_argument("--rest-url", default=None,
                        help="REST address of the model server to check "
                             "(default: POSTERGENRE_INFERENCE_REST_URL)")
    args = parser.parse_args(argv)
    if args.interval is not None and args.interval <= 0:
        parser.error("--interval must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.once:
        return 0 if sync_once() else 1
    from services.inference.repository import RegistryWatcher
    from shared.config import get_settings

    settings = get_settings()
    watcher = RegistryWatcher(settings, args.interval)
    rest_url = args.rest_url if args.rest_url is not None else settings.inference_rest_url
    while True:
        sidecar_round(rest_url, args.heartbeat_file, args.ready_file, watcher)
        time.sleep(watcher.interval_s)


if __name__ == "__main__":
    sys.exit(main())
