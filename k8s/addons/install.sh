#!/usr/bin/env bash
# Cluster add-ons with pinned chart versions and the committed values files next to this script. Idempotent
# (helm upgrade --install); run once per cluster after `terraform apply`, and again after changing a version.
# metrics-server is an EKS add-on (terraform/eks.tf), not installed here.
#
# usage: k8s/addons/install.sh CLUSTER_NAME REGION
#   e.g. k8s/addons/install.sh "$(terraform -chdir=terraform output -raw cluster_name)" eu-west-1
set -euo pipefail

cluster="${1:?usage: $0 CLUSTER_NAME REGION}"
region="${2:?usage: $0 CLUSTER_NAME REGION}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Chart versions (bump deliberately; the Cluster Autoscaler image tag in its values follows the cluster minor).
NVIDIA_DEVICE_PLUGIN_VERSION=0.17.1
CLUSTER_AUTOSCALER_VERSION=9.46.6
EXTERNAL_SECRETS_VERSION=0.20.1
RELOADER_VERSION=2.1.4
KUBE_PROMETHEUS_STACK_VERSION=75.15.1

helm repo add nvdp https://nvidia.github.io/k8s-device-plugin --force-update
helm repo add autoscaler https://kubernetes.github.io/autoscaler --force-update
helm repo add external-secrets https://charts.external-secrets.io --force-update
helm repo add stakater https://stakater.github.io/stakater-charts --force-update
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
helm repo update

helm upgrade --install nvdp nvdp/nvidia-device-plugin --version "${NVIDIA_DEVICE_PLUGIN_VERSION}" \
  --namespace nvidia-device-plugin --create-namespace --wait \
  --values "${here}/nvidia-device-plugin/values.yaml"

helm upgrade --install cluster-autoscaler autoscaler/cluster-autoscaler --version "${CLUSTER_AUTOSCALER_VERSION}" \
  --namespace kube-system --wait \
  --values "${here}/cluster-autoscaler/values.yaml" \
  --set "autoDiscovery.clusterName=${cluster}" --set "awsRegion=${region}"

helm upgrade --install external-secrets external-secrets/external-secrets --version "${EXTERNAL_SECRETS_VERSION}" \
  --namespace external-secrets --create-namespace --wait \
  --values "${here}/external-secrets/values.yaml"

helm upgrade --install reloader stakater/reloader --version "${RELOADER_VERSION}" \
  --namespace reloader --create-namespace --wait \
  --values "${here}/reloader/values.yaml"

helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --version "${KUBE_PROMETHEUS_STACK_VERSION}" --namespace monitoring --create-namespace --wait \
  --values "${here}/kube-prometheus-stack/values.yaml"

echo "add-ons installed on ${cluster}; GPU nodes now advertise nvidia.com/gpu:"
kubectl get nodes -l nvidia.com/gpu.present=true -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu'
