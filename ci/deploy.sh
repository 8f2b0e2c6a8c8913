#!/usr/bin/env bash
# Deploys an overlay with kustomize to the cluster of the current kubectl context:
#   bash ci/deploy.sh OVERLAY IMAGE        e.g. bash ci/deploy.sh eks 1234.dkr.ecr.eu-west-1.amazonaws.com/sessiond:abc123
# Order: everything but the server (namespace, config, backing services in dev), then the
# migration Job (`sessiond migrate`), waited for; then the server Deployment, waited for.
# Needs only kubectl (its built-in kustomize); used by the Makefile, Jenkins and GitHub Actions.
set -euo pipefail
cd "$(dirname "$0")/.."

overlay="${1:?usage: ci/deploy.sh OVERLAY IMAGE}"
image="${2:?usage: ci/deploy.sh OVERLAY IMAGE}"
timeout="${DEPLOY_TIMEOUT:-300s}"
[ -d "kubernetes/overlays/$overlay" ] || { echo "deploy: no overlay kubernetes/overlays/$overlay" >&2; exit 2; }

# The dev overlay reads its (random, git-ignored) secrets from a file written once.
[ "$overlay" != dev ] || bash ci/dev-secrets.sh

# A throw-away overlay on top of the chosen one sets the image (no `kustomize edit` needed).
work="$(mktemp -d "$PWD/kubernetes/.deploy-XXXXXX")"
trap 'rm -rf "$work"' EXIT
cat >"$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../overlays/$overlay
images:
  - name: sessiond
    newName: ${image%:*}
    newTag: ${image##*:}
YAML
[ "${image##*:}" != "$image" ] || { echo "deploy: IMAGE must carry a tag (name:tag)" >&2; exit 2; }
kubectl kustomize "$work" >"$work/rendered.yaml"
namespace="$(sed -n 's/^  namespace: //p' "$work/rendered.yaml" | head -n1)"

echo "deploy: $overlay -> namespace $namespace, image $image"
kubectl apply -f "$work/rendered.yaml" --selector 'app.kubernetes.io/component notin (server,migration)'
# A Job's template cannot change: the previous run is replaced.
kubectl -n "$namespace" delete job sessiond-migrate --ignore-not-found --wait=true
kubectl apply -f "$work/rendered.yaml" --selector 'app.kubernetes.io/component=migration'
if ! kubectl -n "$namespace" wait --for=condition=complete job/sessiond-migrate --timeout="$timeout"; then
  kubectl -n "$namespace" logs job/sessiond-migrate --tail=50 || true
  echo "deploy: the migration did not complete; the server was not rolled" >&2
  exit 1
fi
kubectl apply -f "$work/rendered.yaml"
kubectl -n "$namespace" rollout status deployment/sessiond --timeout="$timeout"
echo "deploy: done"
