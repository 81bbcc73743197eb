# terraform init -backend-config=environments/staging.s3.tfbackend
# terraform apply -var-file=environments/staging.tfvars
environment        = "staging"
region             = "eu-west-1"
kubernetes_version = "1.35"
github_repository  = "clipsearch/clipsearch"

# Private API endpoint only: deploys run on a self-hosted runner inside this VPC (docs/DEPLOY.md, "Deploy path").
cluster_endpoint_public_access_cidrs = []

gpu_instance_types = ["g6.xlarge"]
# 1 search replica at rest; max = HPA maxReplicas (2) + 1 rollout surge; the Cluster Autoscaler adds nodes.
gpu_node_count = { min = 1, desired = 1, max = 3 }
cpu_node_count     = { min = 2, desired = 2, max = 3 }

rds_instance_class        = "db.t4g.small"
rds_multi_az              = false
rds_backup_retention_days = 3

# CI pushes images to this account's ECR; ECR replicates them to prod's registry (prod lists this account in
# ecr_replication_source_account_ids).
ecr_replication_destinations = [{ region = "eu-west-1", registry_id = "222222222222" }]

# prod's pipeline role reads this DVC remote to register the index staging evaluated (ml-pipeline.yml, job prod).
dvc_remote_reader_role_arns = ["arn:aws:iam::222222222222:role/clipsearch-prod-github-pipeline"]

tags = {
  CostCenter = "ml-staging"
}
