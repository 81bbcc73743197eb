#!/usr/bin/env bash
# Run the sharded feature extraction on the cluster: N embed shards (Indexed Job), then build_index.
#
# Kubernetes Jobs have no "after" relation, so the sequence is made here: apply the Indexed Job, wait for its
# Complete condition (every index succeeded), then apply build-index. A failed shard fails the whole Job
# (maxFailedIndexes: 0) and this script stops before build-index, so an index is never built from half of
# the features. Re-running is safe: finished Jobs are deleted first and every shard resumes per chunk.
#
# RENDER_ONLY=1 renders without touching the cluster and prints the two manifest paths.
# usage: k8s/jobs/run-feature-extraction.sh IMAGE SHARDS   e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/clipsearch:3f2c1ab 8
set -euo pipefail

image="${1:?usage: $0 IMAGE SHARDS}"
shards="${2:?usage: $0 IMAGE SHARDS}"
namespace="${NAMESPACE:-clipsearch}"
timeout="${TIMEOUT:-6h}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "${shards}" in
  ''|*[!0-9]*|0) echo "SHARDS must be a positive integer, got '${shards}'" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

render() {  # render STAGE_DIR into $work/STAGE.yaml with the image (and, for embed, N) set
  local stage="$1"
  mkdir -p "${work}/${stage}"
  local rel  # kustomize takes only relative paths to other kustomizations
  rel="$(realpath --relative-to="${work}/${stage}" "${here}/${stage}")"
  cat > "${work}/${stage}/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ${rel}
images:
  - name: clipsearch
    newName: ${image%:*}
    newTag: ${image##*:}
YAML
  if [[ "${stage}" == embed ]]; then
    cat >> "${work}/${stage}/kustomization.yaml" <<YAML
patches:
  - target: {kind: Job, name: clipsearch-embed}
    patch: |-
      - {op: replace, path: /spec/completions, value: ${shards}}
      - {op: replace, path: /spec/parallelism, value: ${shards}}
      - {op: replace, path: /spec/template/spec/containers/0/env/0, value: {name: SHARDS, value: "${shards}"}}
YAML
  fi
  kubectl kustomize "${work}/${stage}" > "${work}/${stage}.yaml"
}

render embed
render build-index
if [[ -n "${RENDER_ONLY:-}" ]]; then  # print the rendered manifests' paths and stop (used by tests/infra)
  echo "${work}/embed.yaml ${work}/build-index.yaml"
  trap - EXIT
  exit 0
fi

kubectl -n "${namespace}" delete job clipsearch-embed clipsearch-build-index --ignore-not-found --wait=true
kubectl apply -f "${work}/embed.yaml"
echo "waiting for ${shards} embed shards (timeout ${timeout})..."
if ! kubectl -n "${namespace}" wait --for=condition=Complete "job/clipsearch-embed" --timeout="${timeout}"; then
  kubectl -n "${namespace}" describe job clipsearch-embed >&2
  echo "embed did not complete; build-index was not started. Fix the failed shard and re-run (shards resume)." >&2
  exit 1
fi
kubectl apply -f "${work}/build-index.yaml"
kubectl -n "${namespace}" wait --for=condition=Complete "job/clipsearch-build-index" --timeout="${timeout}"
echo "index artifact written to the clipsearch-pipeline-data volume (data/index)."
