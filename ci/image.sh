#!/usr/bin/env bash
# Builds the container image and, with --push, pushes it. Used by the Makefile, Jenkins, GitHub
# Actions and .ci/compose-checks. The registry and its credentials come from the caller.
#   IMAGE=registry.example.com/sessiond:TAG bash ci/image.sh [--push]
#   IMAGE=sessiond:local bash ci/image.sh --prebuilt    # after cargo build --release --locked
# --prebuilt packages ${CARGO_TARGET_DIR:-target}/release/sessiond with docker/Dockerfile.prebuilt
# (no Rust toolchain in Docker; the legacy builder is enough) instead of compiling in
# docker/Dockerfile. BUILD_IMAGE and RUNTIME_IMAGE, when set, replace the Dockerfiles' base
# images (a mirror, or an offline base as in CI). IMAGE defaults to sessiond:<git revision>.
# Prints the image reference on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

revision="${GIT_REVISION:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
image="${IMAGE:-sessiond:$revision}"
bases=()
[ -n "${BUILD_IMAGE:-}" ] && bases+=(--build-arg "BUILD_IMAGE=$BUILD_IMAGE")
[ -n "${RUNTIME_IMAGE:-}" ] && bases+=(--build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE")

if [ "${1:-}" = "--prebuilt" ]; then
  shift
  binary="${CARGO_TARGET_DIR:-target}/release/sessiond"
  [ -x "$binary" ] || { echo "image.sh: $binary missing: cargo build --release --locked first" >&2; exit 1; }
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  cp "$binary" "$context/sessiond"
  install -d -m 0700 "$context/data"
  DOCKER_BUILDKIT=0 docker build --quiet \
    --file docker/Dockerfile.prebuilt \
    --build-arg GIT_REVISION="$revision" \
    "${bases[@]}" \
    --tag "$image" \
    "$context" >/dev/null
else
  DOCKER_BUILDKIT=1 docker build \
    --file docker/Dockerfile \
    --build-arg GIT_REVISION="$revision" \
    "${bases[@]}" \
    --tag "$image" \
    .
fi
if [ "${1:-}" = "--push" ]; then
  docker push "$image"
fi
echo "$image"
