data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_availability_zones" "selected" {
  state = "available"

  filter {
    name   = "zone-name"
    values = [for z in var.availability_zone_suffixes : "${var.region}${z}"]
  }
}

locals {
  name       = "clipsearch-${var.environment}"
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  azs        = data.aws_availability_zones.selected.names

  tags = merge(
    {
      Project     = "clipsearch"
      Environment = var.environment
      ManagedBy   = "terraform"
    },
    var.tags,
  )

  # Kubernetes namespaces/service accounts that get IAM roles (k8s/base/serviceaccounts.yaml, k8s/mlflow).
  search_service_account   = "system:serviceaccount:clipsearch:clipsearch-search"
  pipeline_service_account = "system:serviceaccount:clipsearch:clipsearch-pipeline"
  mlflow_service_account   = "system:serviceaccount:mlflow:mlflow"

  # The dedicated PostgreSQL role of the MLflow server (created by the mlflow-db-bootstrap Job).
  mlflow_db_user = "mlflow_app"
}
