#!/usr/bin/env bash
# Builds the container image and, with --push, pushes it. Used by the Makefile, Jenkins and
# GitHub Actions. The registry and its credentials come from the caller (docker login before).
#   IMAGE=registry.example.com/sessiond:TAG bash ci/image.sh [--push]
# IMAGE defaults to sessiond:<git revision>. Prints the image reference on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

revision="${GIT_REVISION:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
image="${IMAGE:-sessiond:$revision}"

DOCKER_BUILDKIT=1 docker build \
  --file docker/Dockerfile \
  --build-arg GIT_REVISION="$revision" \
  --tag "$image" \
  .
if [ "${1:-}" = "--push" ]; then
  docker push "$image"
fi
echo "$image"
