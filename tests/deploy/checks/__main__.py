"""``python -m tests.deploy.checks`` (scripts/validate_deploy.sh): every check of every target at
once, each problem printed for a person.
"""

from __future__ import annotations

import argparse
import sys

from tests.deploy.checks.compose import check_compose_config, check_compose_schema, check_compose_semantics
from tests.deploy.checks.dockerfiles import DOCKER_DIR, check_dockerfile, check_lock, check_trainer_dockerfile
from tests.deploy.checks.env_example import check_env_example
from tests.deploy.checks.k8s import check_k8s_schemas, check_k8s_semantics
from tests.deploy.checks.k8s_objects import K8S_DIR, OVERLAYS, read_secret_example, render_overlay


def all_problems() -> list[str]:
    problems = (
        check_env_example() + check_compose_schema() + check_compose_config() + check_compose_semantics()
    )
    from tests.deploy.keda import check_keda_schemas, check_keda_semantics
    from tests.deploy.monitors import check_monitor_schemas, check_monitor_semantics
    from tests.deploy.observability import DASHBOARDS_DIR, check_dashboard, check_prometheus_config

    secrets = read_secret_example()
    for overlay in OVERLAYS:
        docs = render_overlay(K8S_DIR / "overlays" / overlay)
        problems += check_k8s_schemas(docs) + check_k8s_semantics(docs, overlay, secrets)
        problems += check_keda_schemas(docs) + check_monitor_schemas(docs) + check_monitor_semantics(docs)
        if overlay == "prod":  # the overlay that scales with KEDA
            problems += check_keda_semantics(docs, secrets)
    problems += check_prometheus_config()
    for dashboard in sorted(DASHBOARDS_DIR.glob("*.json")):
        problems += check_dashboard(dashboard)
    for dockerfile in sorted(DOCKER_DIR.glob("*.Dockerfile")):
        problems += check_dockerfile(dockerfile)
    return problems + check_trainer_dockerfile() + check_lock()


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m tests.deploy.checks",
                            description="Validate compose.yaml, k8s/ and docker/ offline.").parse_args(argv)
    problems = all_problems()
    for problem in problems:
        print(f"- {problem}")
    print("deployment files: " + (f"{len(problems)} problems" if problems else "all checks passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
