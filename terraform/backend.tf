# Remote state: one S3 object per environment, locked with S3 native locking (use_lockfile, Terraform >= 1.10;
# no DynamoDB table needed). The bucket is created once, by hand or by a bootstrap stack, with versioning,
# SSE-KMS and public access blocked. Values come from environments/<env>.s3.tfbackend:
#   terraform init -backend-config=environments/staging.s3.tfbackend
terraform {
  backend "s3" {}
}
