# One customer-managed key for the project's data at rest: S3, RDS (+ Performance Insights), ECR, Secrets
# Manager, CloudWatch logs. Rotation on.
data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:Key policies must grant the account root kms:* (AWS's default key policy); IAM policies then scope access.
  # checkov:skip=CKV_AWS_111:Same: resource "*" in a key policy means "this key" only.
  # checkov:skip=CKV_AWS_356:Same: resource "*" in a key policy means "this key" only.
  statement {
    sid       = "AccountRoot"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogs"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    # Readers of the DVC remote in other accounts decrypt its objects (the bucket policy in s3.tf admits them).
    for_each = length(var.dvc_remote_reader_role_arns) > 0 ? [1] : []
    content {
      sid       = "CrossAccountDvcDecrypt"
      actions   = ["kms:Decrypt", "kms:DescribeKey"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = var.dvc_remote_reader_role_arns
      }
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${var.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_kms_key" "data" {
  description             = "${local.name}: S3, RDS, ECR, Secrets Manager and logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${local.name}-data"
  target_key_id = aws_kms_key.data.key_id
}
