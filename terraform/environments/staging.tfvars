# terraform init -backend-config=environments/staging.s3.tfbackend
# terraform apply -var-file=environments/staging.tfvars
environment        = "staging"
region             = "eu-west-1"
kubernetes_version = "1.33"
github_repository  = "clipsearch/clipsearch"

# CI runners and operators reach the API endpoint from here (replace with your egress CIDRs).
cluster_endpoint_public_access_cidrs = ["203.0.113.0/24"]

gpu_instance_types = ["g6.xlarge"]
gpu_node_count     = { min = 1, desired = 1, max = 2 }
cpu_node_count     = { min = 2, desired = 2, max = 3 }

rds_instance_class        = "db.t4g.small"
rds_multi_az              = false
rds_backup_retention_days = 3

tags = {
  CostCenter = "ml-staging"
}
