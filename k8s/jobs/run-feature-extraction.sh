#!/usr/bin/env bash
# Run the feature extraction on the cluster: download (stage the images into the shared workspace), N embed
# shards (Indexed Job, P at a time on GPU nodes), then build_index.
#
# Kubernetes Jobs have no "after" relation, so the sequence is made here: apply a Job, wait for its Complete
# condition, then apply the next. A failed shard fails the whole embed Job (maxFailedIndexes: 0) and this script
# stops before build-index, so an index is never built from half of the features. Re-running is safe: finished
# Jobs are deleted first, the download skips verified files and every shard resumes per chunk.
#
# IMAGE is the GPU image (<registry>/clipsearch:<sha>); the CPU steps run IMAGE-cpu (the `cpu` target CI pushes
# beside it). PARALLELISM (default 1) is how many GPUs the shards may hold at once: at most the GPU node group's
# max minus the search replicas, or they wait for a node the autoscaler may not add.
#
# RENDER_ONLY=1 renders without touching the cluster and prints the three manifest paths.
# usage: k8s/jobs/run-feature-extraction.sh IMAGE SHARDS [PARALLELISM]
#   e.g. k8s/jobs/run-feature-extraction.sh 123456789012.dkr.ecr.eu-west-1.amazonaws.com/clipsearch:3f2c1ab 8 2
set -euo pipefail

usage="usage: $0 IMAGE SHARDS [PARALLELISM]"
image="${1:?${usage}}"
shards="${2:?${usage}}"
parallelism="${3:-1}"
cpu_image="${image}-cpu"
namespace="${NAMESPACE:-clipsearch}"
timeout="${TIMEOUT:-6h}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "${shards}" in
  ''|*[!0-9]*|0) echo "SHARDS must be a positive integer, got '${shards}'" >&2; exit 2 ;;
esac
case "${parallelism}" in
  ''|*[!0-9]*|0) echo "PARALLELISM must be a positive integer, got '${parallelism}'" >&2; exit 2 ;;
esac
if (( parallelism > shards )); then parallelism="${shards}"; fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

render() {  # render STAGE_DIR into $work/STAGE.yaml with its image (and, for embed, N and P) set
  local stage="$1" name="$2" ref="$3"
  mkdir -p "${work}/${stage}"
  local rel  # kustomize takes only relative paths to other kustomizations
  rel="$(realpath --relative-to="${work}/${stage}" "${here}/${stage}")"
  cat > "${work}/${stage}/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ${rel}
images:
  - name: ${name}
    newName: ${ref%:*}
    newTag: ${ref##*:}
YAML
  if [[ "${stage}" == embed ]]; then
    cat >> "${work}/${stage}/kustomization.yaml" <<YAML
patches:
  - target: {kind: Job, name: clipsearch-embed}
    patch: |-
      - {op: replace, path: /spec/completions, value: ${shards}}
      - {op: replace, path: /spec/parallelism, value: ${parallelism}}
      - {op: replace, path: /spec/template/spec/containers/0/env/0, value: {name: SHARDS, value: "${shards}"}}
YAML
  fi
  kubectl kustomize "${work}/${stage}" > "${work}/${stage}.yaml"
}

render download clipsearch-cpu "${cpu_image}"
render embed clipsearch "${image}"
render build-index clipsearch-cpu "${cpu_image}"
if [[ -n "${RENDER_ONLY:-}" ]]; then  # print the rendered manifests' paths and stop (used by tests/infra)
  echo "${work}/download.yaml ${work}/embed.yaml ${work}/build-index.yaml"
  trap - EXIT
  exit 0
fi

kubectl -n "${namespace}" delete job clipsearch-download clipsearch-embed clipsearch-build-index --ignore-not-found --wait=true
kubectl apply -f "${work}/download.yaml"
echo "staging Unsplash Lite and the images into the workspace (timeout ${timeout})..."
if ! kubectl -n "${namespace}" wait --for=condition=Complete "job/clipsearch-download" --timeout="${timeout}"; then
  kubectl -n "${namespace}" describe job clipsearch-download >&2
  echo "download did not complete; embed was not started. Re-run to resume." >&2
  exit 1
fi
kubectl apply -f "${work}/embed.yaml"
echo "waiting for ${shards} embed shards, ${parallelism} at a time (timeout ${timeout})..."
if ! kubectl -n "${namespace}" wait --for=condition=Complete "job/clipsearch-embed" --timeout="${timeout}"; then
  kubectl -n "${namespace}" describe job clipsearch-embed >&2
  echo "embed did not complete; build-index was not started. Fix the failed shard and re-run (shards resume)." >&2
  exit 1
fi
kubectl apply -f "${work}/build-index.yaml"
kubectl -n "${namespace}" wait --for=condition=Complete "job/clipsearch-build-index" --timeout="${timeout}"
echo "index artifact written to the clipsearch-pipeline-data volume (data/index)."
