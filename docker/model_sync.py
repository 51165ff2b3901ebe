#!/opt/venv/bin/python
"""Keep a TF Serving model folder in step with the model registry.

Runs ``services.inference.repository.sync_models`` once (``--once``: the init container / one-shot
service that must write ``models.config`` before TF Serving starts, since TF Serving refuses to
start without it) or every ``--interval`` seconds (the sidecar beside each TF Serving replica on
Kubernetes, where replicas on different nodes cannot share one writable volume). TF Serving polls
the config file it writes, so a blessing or a rollback reaches every replica without a restart.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("postergenre.model_sync")


def sync_once() -> bool:
    """One sync from the registry; False (logged) when the database or object store failed."""
    from services.inference.repository import sync_models
    from shared.config import get_settings

    try:
        path = sync_models(get_settings())
    except Exception:  # a sidecar outlives an unreachable store: log it and try again next round
        log.exception("model sync failed")
        return False
    log.info("models in step with the registry: %s", path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--once", action="store_true", help="sync once and exit (non-zero on failure)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between two syncs")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.once:
        return 0 if sync_once() else 1
    while True:
        sync_once()
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
