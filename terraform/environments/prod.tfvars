# terraform init -backend-config=environments/prod.s3.tfbackend
# terraform apply -var-file=environments/prod.tfvars
environment        = "prod"
region             = "eu-west-1"
kubernetes_version = "1.33"
github_repository  = "clipsearch/clipsearch"

cluster_endpoint_public_access_cidrs = ["203.0.113.0/24"]

# Prod runs in its own AWS account; the GitHub OIDC provider is created there too.
create_github_oidc_provider = true

gpu_instance_types = ["g6.xlarge", "g5.xlarge"]
gpu_node_count     = { min = 2, desired = 2, max = 5 }
cpu_node_count     = { min = 3, desired = 3, max = 6 }

rds_instance_class        = "db.t4g.medium"
rds_multi_az              = true
rds_backup_retention_days = 14

tags = {
  CostCenter = "ml-prod"
}
