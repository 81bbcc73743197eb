output "cluster_name" {
  description = "EKS cluster name: aws eks update-kubeconfig --name <this> --region <region>."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "EKS API endpoint."
  value       = module.eks.cluster_endpoint
}

output "region" {
  description = "AWS region of the stack."
  value       = var.region
}

output "ecr_repository_urls" {
  description = "ECR repository URLs by name (clipsearch, clipsearch-mlflow): the images kustomize sets."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}

output "bucket_names" {
  description = "S3 bucket names by purpose (dvc, mlflow-artifacts, image-cache)."
  value       = local.bucket_names
}

output "dvc_remote_url" {
  description = "DVC remote URL: dvc remote add -d s3 <this>."
  value       = "s3://${aws_s3_bucket.dvc.id}/dvc"
}

output "mlflow_artifacts_destination" {
  description = "MLFLOW_ARTIFACTS_DESTINATION for the MLflow server (k8s/overlays/<env>/kustomization.yaml)."
  value       = "s3://${aws_s3_bucket.mlflow_artifacts.id}/artifacts"
}

output "mlflow_db_endpoint" {
  description = "host:port of the MLflow PostgreSQL database."
  value       = aws_db_instance.mlflow.endpoint
}

output "mlflow_db_master_secret_arn" {
  description = "Secrets Manager ARN of the RDS-managed (rotated) master credentials: the ExternalSecret mlflow-db-admin of the bootstrap Job (k8s/overlays/<env>/kustomization.yaml)."
  value       = aws_db_instance.mlflow.master_user_secret[0].secret_arn
}

output "mlflow_db_secret_name" {
  description = "Secrets Manager name of the dedicated MLflow database user's credentials (ExternalSecret mlflow-db)."
  value       = aws_secretsmanager_secret.mlflow_db.name
}

output "dvc_remote_bucket_arn" {
  description = "ARN of the DVC remote bucket: dvc_source_remote.bucket_arn of an environment that promotes from this one."
  value       = aws_s3_bucket.dvc.arn
}

output "kms_key_arn" {
  description = "ARN of the project's KMS key: dvc_source_remote.kms_key_arn of an environment that promotes from this one."
  value       = aws_kms_key.data.arn
}

output "gemini_secret_arn" {
  description = "Secrets Manager ARN for the Gemini API key (value put out of band)."
  value       = aws_secretsmanager_secret.gemini.arn
}

output "efs_file_system_id" {
  description = "EFS file system for the efs-sc StorageClass (ReadWriteMany pipeline workspace)."
  value       = aws_efs_file_system.pipeline.id
}

output "search_role_arn" {
  description = "IRSA role for the clipsearch/clipsearch-search service account."
  value       = aws_iam_role.irsa["search"].arn
}

output "pipeline_role_arn" {
  description = "IRSA role for the clipsearch/clipsearch-pipeline service account."
  value       = aws_iam_role.irsa["pipeline"].arn
}

output "mlflow_role_arn" {
  description = "IRSA role for the mlflow/mlflow service account."
  value       = aws_iam_role.irsa["mlflow"].arn
}

output "github_ci_role_arn" {
  description = "Role for ci.yml (ECR push): repository variable AWS_CI_ROLE_ARN."
  value       = aws_iam_role.github["ci"].arn
}

output "github_deploy_role_arn" {
  description = "Role for deploy.yml (EKS apply): environment variable AWS_DEPLOY_ROLE_ARN."
  value       = aws_iam_role.github_deploy.arn
}

output "github_pipeline_role_arn" {
  description = "Role for ml-pipeline.yml (DVC remote): repository variable AWS_PIPELINE_ROLE_ARN."
  value       = aws_iam_role.github["pipeline"].arn
}
