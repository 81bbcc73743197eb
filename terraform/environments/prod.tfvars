# terraform init -backend-config=environments/prod.s3.tfbackend
# terraform apply -var-file=environments/prod.tfvars
environment        = "prod"
region             = "eu-west-1"
kubernetes_version = "1.35"
github_repository  = "clipsearch/clipsearch"

# Private API endpoint only: deploys run on a self-hosted runner inside this VPC (docs/DEPLOY.md, "Deploy path").
cluster_endpoint_public_access_cidrs = []

# Prod runs in its own AWS account; the GitHub OIDC provider is created there too.
create_github_oidc_provider = true

gpu_instance_types = ["g6.xlarge", "g5.xlarge"]
# 2 search replicas at rest; max = HPA maxReplicas (5) + 1 rollout surge; the Cluster Autoscaler adds nodes.
gpu_node_count = { min = 2, desired = 2, max = 6 }
cpu_node_count     = { min = 3, desired = 3, max = 6 }

rds_instance_class        = "db.t4g.medium"
rds_multi_az              = true
rds_backup_retention_days = 14

# Images arrive by ECR replication from the staging account, where CI pushes them.
ecr_replication_source_account_ids = ["111111111111"]

# The index prod serves is the one staging evaluated: prod's pipeline job reads staging's DVC remote and registers
# it in prod's MLflow. kms_key_arn: `terraform output -raw kms_key_arn` in staging.
dvc_source_remote = {
  bucket_arn  = "arn:aws:s3:::clipsearch-staging-dvc-111111111111"
  kms_key_arn = "arn:aws:kms:eu-west-1:111111111111:key/00000000-0000-0000-0000-000000000000"
}

tags = {
  CostCenter = "ml-prod"
}
