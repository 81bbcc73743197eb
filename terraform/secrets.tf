# The Gemini API key. Terraform creates the (KMS-encrypted) entry only; its value is put out of band, so it
# never appears in code, plan output or state:
#   aws secretsmanager put-secret-value --secret-id <gemini_secret_arn> --secret-string "$GEMINI_API_KEY"
resource "aws_secretsmanager_secret" "gemini" {
  # checkov:skip=CKV2_AWS_57:A third-party API key cannot be rotated by a Lambda; it is rotated in Google AI Studio and re-put by hand (docs/DEPLOY.md).
  name                    = "${local.name}/gemini-api-key"
  description             = "Gemini API key for the clipsearch re-ranker (GEMINI_API_KEY)"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 30
}

# The MLflow server's own database user (not the RDS master user, whose password RDS rotates every 7 days).
# Terraform generates the password in an ephemeral resource and writes it through a write-only argument, so it is
# never in the plan or the state (Terraform >= 1.11). The secret holds everything the backend store URI needs;
# the ExternalSecret in k8s/mlflow builds the `mlflow-backend` Secret from it, and the mlflow-db-bootstrap Job
# creates the role in PostgreSQL (as the master user) with this password. To change it: bump
# mlflow_db_password_version, apply, re-run the bootstrap Job; Reloader then restarts MLflow on the new Secret.
ephemeral "random_password" "mlflow_db" {
  length  = 40
  special = false # URL-safe: it goes into a postgresql:// URI without escaping
}

resource "aws_secretsmanager_secret" "mlflow_db" {
  # checkov:skip=CKV2_AWS_57:Rotated by bumping mlflow_db_password_version and re-running the bootstrap Job (docs/DEPLOY.md); a rotation Lambda would race the ExternalSecret refresh and MLflow's open connections.
  name                    = "${local.name}/mlflow-db"
  description             = "Dedicated MLflow database user: username, password, host, port, dbname"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 30
}

resource "aws_secretsmanager_secret_version" "mlflow_db" {
  secret_id = aws_secretsmanager_secret.mlflow_db.id
  secret_string_wo = jsonencode({
    username = local.mlflow_db_user
    password = ephemeral.random_password.mlflow_db.result
    host     = aws_db_instance.mlflow.address
    port     = aws_db_instance.mlflow.port
    dbname   = aws_db_instance.mlflow.db_name
  })
  secret_string_wo_version = var.mlflow_db_password_version
}
