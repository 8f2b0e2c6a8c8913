#!/usr/bin/env bash
# Writes the development secrets that docker/docker-compose.yml (docker/.env) and the dev overlay
# (kubernetes/overlays/dev/secrets.env) read, once, with a fresh random JWT_SECRET: the repository
# holds no key (sessiond refuses the example values it shows). Both files are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

key() { head -c 48 /dev/urandom | base64 | tr -d '\n'; }

if [ ! -f docker/.env ]; then
  printf 'JWT_SECRET=%s\n' "$(key)" >docker/.env
  echo "dev-secrets: wrote docker/.env"
fi
if [ ! -f kubernetes/overlays/dev/secrets.env ]; then
  cat >kubernetes/overlays/dev/secrets.env <<ENV
DB_URL=postgres://sessiond:sessiond-dev-only@postgres:5432/sessiond
REDIS_URL=redis://redis:6379
JWT_SECRET=$(key)
ENV
  echo "dev-secrets: wrote kubernetes/overlays/dev/secrets.env"
fi
