#!/usr/bin/env bash
# `make stack-test`: the Compose system for real on this machine. Installs Docker's engine and
# mmdebstrap from Debian's packages when missing, starts a Docker daemon only when none answers (and
# stops only that one, by its PID), builds every image (scripts/stack_images.sh), then runs the stack
# test (tests/stack, pytest -m stack): compose.yaml with tests/stack/compose.override.yaml, the main
# job through the containers, faults injected into containers. See docs/deploy.md.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export PATH="/usr/bin:/usr/sbin:$PATH"
python_bin="${PYTHON:-$repo_root/.venv/bin/python}"
sudo=""
[[ "$(id -u)" == 0 ]] || sudo="sudo"
mkdir -p var/stack

missing=""
command -v dockerd >/dev/null || missing="$missing docker.io"
command -v mmdebstrap >/dev/null || missing="$missing mmdebstrap"
if [[ -n "$missing" ]]; then
    echo "installing from Debian's packages:$missing"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
fi

daemon_pid=""
stop_daemon() {
    if [[ -n "$daemon_pid" ]]; then
        echo "stopping the Docker daemon this test started (PID $daemon_pid)"
        $sudo kill "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 1; done
    fi
}
if ! docker info >/dev/null 2>&1; then
    echo "starting a Docker daemon (log: var/stack/dockerd.log)"
    $sudo dockerd >var/stack/dockerd.log 2>&1 &
    daemon_pid=$!
    trap stop_daemon EXIT
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "the Docker daemon did not start:"; tail -20 var/stack/dockerd.log; exit 1; }
fi

start=$(date +%s)
bash scripts/stack_images.sh
echo "images ready in $(( $(date +%s) - start )) s (var/stack/build-times.tsv)"
"$python_bin" -m pytest -m stack tests/stack -v -p no:cacheprovider --timeout 3600 "$@"
