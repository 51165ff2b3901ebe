#!/usr/bin/env bash
# Creates .venv-tfjs, a separate Python 3.11 environment holding tensorflowjs 4.22.0.
# Why separate: tensorflowjs 4.22.0 pins tensorflow<2.19 (and jax/flax versions) that cannot
# live beside the project's TF 2.21 in .venv. services/trainer/export.py runs its
# tensorflowjs_converter as a subprocess. Idempotent: a marker file records a finished install
# of exactly these pins; re-running with the marker present does nothing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="${POSTERGENRE_TFJS_VENV:-$repo_root/.venv-tfjs}"
python_bin="${POSTERGENRE_TFJS_PYTHON:-python3.11}"

pins=(
  "tensorflow==2.18.0"
  "tensorflow-decision-forests==1.11.0"
  "ydf==0.15.0"
  "tensorflowjs==4.22.0"
  "jax==0.5.3"
  "jaxlib==0.5.3"
  "flax==0.10.6"
)
marker="$venv_dir/.postergenre-tfjs-installed"
expected="${pins[*]}"

if [[ -f "$marker" && "$(cat "$marker")" == "$expected" && -x "$venv_dir/bin/tensorflowjs_converter" ]]; then
  echo "tfjs environment ready: $venv_dir"
  exit 0
fi

if ! command -v "$python_bin" >/dev/null 2>&1; then
  echo "error: $python_bin not found; tensorflowjs 4.22.0 needs Python 3.9-3.11 (set POSTERGENRE_TFJS_PYTHON)" >&2
  exit 1
fi

rm -f "$marker"
"$python_bin" -m venv "$venv_dir"
"$venv_dir/bin/python" -m pip install --quiet --upgrade pip
"$venv_dir/bin/python" -m pip install --quiet "${pins[@]}"
# The converter must import cleanly before the environment is declared ready.
"$venv_dir/bin/tensorflowjs_converter" --version >/dev/null
printf '%s' "$expected" >"$marker"
echo "tfjs environment ready: $venv_dir"
