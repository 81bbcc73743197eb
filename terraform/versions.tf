# Provider and module versions are pinned: providers by a pessimistic constraint here plus the hashes in
# .terraform.lock.hcl (commit it after the first `terraform init`), modules by exact version.
terraform {
  required_version = ">= 1.9.0, < 2.0.0"

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
