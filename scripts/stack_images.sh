#!/usr/bin/env bash
# Builds every image the Compose stack needs on a machine that reaches Debian's mirror and PyPI but
# no container registry (this project's CI, an offline site): a Debian base image made by mmdebstrap,
# a CPU TensorFlow layer on it, the project's images from docker/*.Dockerfile through their own build
# arguments (PYTHON_IMAGE, TF_IMAGE), Prometheus from Debian's package (docker/local), and the
# stand-ins of tests/stack/images for the images that cannot be built from packages here (MinIO,
# PostgreSQL's and Redis' official images).
#
#   scripts/stack_images.sh            # build what is missing or changed (Docker's layer cache)
#
# Needs a running Docker daemon (scripts/stack_test.sh starts one) and mmdebstrap. Writes one line per
# image to $STACK_TIMINGS (default var/stack/build-times.tsv): image, seconds, bytes.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# Debian's docker client first: another one earlier in PATH may lack the classic builder's defaults.
export PATH="/usr/bin:/usr/sbin:$PATH"
# The classic builder: BuildKit would fetch the `# syntax=` frontend image from a registry.
export DOCKER_BUILDKIT=0

base_image="${STACK_BASE_IMAGE:-postergenre-base:bookworm}"
tf_image="${STACK_TF_IMAGE:-postergenre-tensorflow:2.21.0}"
timings="${STACK_TIMINGS:-$repo_root/var/stack/build-times.tsv}"
mkdir -p "$(dirname "$timings")"
: > "$timings"

now() { date +%s.%N; }

record() {  # image, start time
    local size seconds
    size=$(docker image inspect --format '{{.Size}}' "$1")
    seconds=$(awk -v end="$(now)" -v start="$2" 'BEGIN { printf "%.1f", end - start }')
    printf '%s\t%s\t%s\n' "$1" "$seconds" "$size" >> "$timings"
    printf '%-36s %7s s %6d MB\n' "$1" "$seconds" "$((size / 1000000))"
}

build() {  # tag, then docker build arguments
    local tag=$1 start previous
    shift
    start=$(now)
    previous=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    if ! docker build --quiet --tag "$tag" "$@" >/dev/null 2>"$repo_root/var/stack/build-error.log"; then
        # Again with the output, so the failing step and its message are on the screen.
        docker build --tag "$tag" "$@"
        exit 1
    fi
    # The image this build replaced (about 3 GB) goes, with the layers only it used; layers the new
    # image shares, and the build stages' cache, stay. A container still using it keeps it.
    if [[ -n "$previous" && "$previous" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]]; then
        docker rmi "$previous" >/dev/null 2>&1 || true
    fi
    record "$tag" "$start"
}

# --- the base: Debian of this host's release, Python 3.11 and its venv module, the host's extra CA
# certificates (TLS to the package registries may go through a proxy that presents its own CA).
. /etc/os-release
suite="${STACK_DEBIAN_SUITE:-${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}}"
packages="python3,python3-venv,python-is-python3,ca-certificates"
shopt -s nullglob
extra_certs=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob
inputs="$suite $packages $(cat "${extra_certs[@]}" /dev/null | sha256sum | cut -c1-16)"
if [[ "$(docker image inspect --format '{{index .Config.Labels "org.postergenre.base-inputs"}}' "$base_image" 2>/dev/null)" != "$inputs" ]]; then
    start=$(now)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    hooks=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"')
    for cert in "${extra_certs[@]}"; do
        hooks+=(--customize-hook="copy-in $cert /usr/local/share/ca-certificates/")
    done
    hooks+=(--customize-hook='chroot "$1" update-ca-certificates')
    mmdebstrap --quiet --variant=minbase --include="$packages" "${hooks[@]}" "$suite" "$work/base.tar"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL org.postergenre.base-inputs=\"$inputs\"" \
        --change 'CMD ["bash"]' \
        "$work/base.tar" "$base_image" >/dev/null
    rm -rf "$work"
    trap - EXIT
    record "$base_image" "$start"
fi

# --- the project's images, as compose.yaml names them
build postergenre-web:0.1.0 -f docker/web.Dockerfile --build-arg PYTHON_IMAGE="$base_image" .
build postergenre-worker:0.1.0 -f docker/worker.Dockerfile --build-arg PYTHON_IMAGE="$base_image" .
build postergenre-inference:0.1.0 -f docker/inference.Dockerfile --build-arg PYTHON_IMAGE="$base_image" .
build "$tf_image" -f docker/local/tensorflow-cpu.Dockerfile --build-arg BASE_IMAGE="$base_image" .
build postergenre-trainer-cpu:0.1.0 -f docker/trainer.Dockerfile --build-arg TF_IMAGE="$tf_image" .

# --- third-party servers from Debian's packages: the real software, in the image compose.yaml's
# service expects (tests/stack/compose.override.yaml names it)
build postergenre-prometheus:2.42 -f docker/local/prometheus.Dockerfile \
    --build-arg BASE_IMAGE="$base_image" docker/local

# --- the stand-ins (tests/stack/compose.override.yaml says what each replaces)
build postergenre-stack-postgres:15 -f tests/stack/images/postgres.Dockerfile \
    --build-arg BASE_IMAGE="$base_image" tests/stack/images
build postergenre-stack-redis:7 -f tests/stack/images/redis.Dockerfile \
    --build-arg BASE_IMAGE="$base_image" tests/stack/images
build postergenre-stack-s3:moto -f tests/stack/images/s3.Dockerfile \
    --build-arg BASE_IMAGE="$base_image" tests/stack/images
