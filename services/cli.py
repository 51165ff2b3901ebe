"""The ``postergenre`` command: one subcommand per job.

Each service registers its own subcommands (``services/<name>/cli.py``) and the benchmarks package
the ``bench`` ones (``benchmarks/cli.py``: this module, the composition root, is the only service
module that imports ``benchmarks``); those modules import their heavy dependencies (TensorFlow,
Scrapy) inside the handlers so that ``postergenre --help`` is fast.
Every parser is a :class:`services.cli_support.Parser`, whose help shows the options' defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from services.cli_support import Parser
from shared.queues import TASK_QUEUES

Handler = Callable[[argparse.Namespace], int]

EXIT_CODES = """exit codes:
  0    done
  1    the work failed (a rejected row, an incomplete crawl, a failed training, an unreachable
       inference server or database)
  2    bad input or usage (unknown years, a missing file or dataset, a bad option, an out-of-date
       database schema)
  130  interrupted (Ctrl-C; a stopped crawl, which can be resumed)"""


def version_text() -> str:
    """This package's version, with Python's and the installed TensorFlow's (read from the package
    metadata: TensorFlow is not imported)."""
    from importlib import metadata

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    parts = [f"postergenre {installed('postergenre') or 'unknown'}", f"Python {sys.version.split()[0]}"]
    tensorflow = next((version for name in ("tensorflow", "tensorflow-cpu")
                       if (version := installed(name))), None)
    if tensorflow:
        parts.append(f"TensorFlow {tensorflow}")
    return ", ".join(parts)


class _VersionAction(argparse.Action):
    """``--version``, its text computed only when asked for (metadata look-ups cost a little)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def _db(args: argparse.Namespace) -> int:
    from shared.config import get_settings
    from shared.db import upgrade_database

    url = get_settings().effective_database_url
    # The one command that migrates a database (with `demo`); the others refuse an old schema.
    upgrade_database(url)
    print(f"database is at the latest schema: {url.split('@')[-1]}")
    return 0


def _db_check(args: argparse.Namespace) -> int:
    """Exit 0 when the database's Alembic revision is the code's head; never changes the database
    (the Kubernetes init containers wait on it while the migrate Job upgrades)."""
    from sqlalchemy.exc import SQLAlchemyError

    from shared.config import get_settings
    from shared.db import current_revision, head_revision

    url = get_settings().effective_database_url
    head = head_revision()
    try:
        current = current_revision(url)
    except SQLAlchemyError as exc:
        print(f"database not reachable: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    if current != head:
        print(f"database schema is at {current or 'empty'}, the code needs {head}", file=sys.stderr)
        return 1
    print(f"database schema is at head {head}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from shared.celery_app import celery_app
    from shared.tracing import trace_worker_processes

    trace_worker_processes(args.pool)
    argv = ["worker", f"--queues={args.queues}", f"--concurrency={args.concurrency}",
            f"--loglevel={args.loglevel}", f"--pool={args.pool}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    celery_app.worker_main(argv)
    return 0


def _completion(args: argparse.Namespace) -> int:
    from services.completion import SHELLS

    sys.stdout.write(SHELLS[args.shell](build_parser()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from benchmarks import cli as benchmarks_cli
    from services import demo, embedded
    from services.crawler import cli as crawler_cli
    from services.dataset import cli as dataset_cli
    from services.inference import cli as inference_cli
    from services.trainer import cli as trainer_cli
    from services.web import cli as web_cli

    parser = Parser(prog="postergenre", description=__doc__.splitlines()[0], epilog=EXIT_CODES)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version (with Python's and TensorFlow's) and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="database schema (Alembic)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply every migration").set_defaults(handler=_db)
    db_commands.add_parser(
        "check", help="exit 0 when the schema is at head, else print both revisions and exit 1"
    ).set_defaults(handler=_db_check)

    worker = commands.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default=",".join([*TASK_QUEUES.values(), "default"]))
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--hostname", default="")
    worker.set_defaults(handler=_worker)

    serve = commands.add_parser("serve", help="run a server (web, inference)")
    serve_commands = serve.add_subparsers(dest="serve_command", required=True)
    bench = commands.add_parser("bench", help="benchmarks (see docs/benchmarks.md)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)

    crawler_cli.register(commands)
    dataset_cli.register(commands)
    trainer_cli.register(commands)
    inference_cli.register(commands, serve_commands)
    web_cli.register(commands, serve_commands, embedded.create_app)
    benchmarks_cli.register(bench_commands)
    demo.register(commands)

    completion = commands.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for bash or zsh, e.g. `source <(postergenre completion "
        "bash)` in ~/.bashrc, or `postergenre completion zsh > ~/.zfunc/_postergenre` with ~/.zfunc "
        "in fpath.")
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler=_completion)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from shared.logs import configure_logging

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    handler: Handler = args.handler
    from shared.db import SchemaOutOfDateError

    try:
        return handler(args)
    except SchemaOutOfDateError as exc:  # a deployment step was missed, not a bug: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m services.cli`, used by the demo
    sys.exit(main())
