# Provider and module versions are pinned: providers by a pessimistic constraint here plus the hashes in
# .terraform.lock.hcl (commit it after the first `terraform init`), modules by exact version.
# Terraform >= 1.11: the S3 backend's native locking (`use_lockfile`, environments/*.s3.tfbackend) needs 1.10, and
# the MLflow database password is written through a write-only argument from an ephemeral resource (secrets.tf),
# which needs 1.11. An older binary would fail at `init` (1.9: unknown backend argument) or at `plan`.
terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
