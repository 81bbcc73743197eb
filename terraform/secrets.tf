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
