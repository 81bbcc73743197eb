# Buckets: DVC remote, MLflow artifacts, image cache, plus one for their server access logs. Every bucket:
# SSE-KMS with the project key, versioning, all public access blocked, owner-enforced ACLs, TLS-only access,
# lifecycle rules for old versions and abandoned multipart uploads.
resource "aws_s3_bucket" "logs" {
  # checkov:skip=CKV_AWS_18:This is the access-log target bucket; logging it into itself would loop.
  # checkov:skip=CKV_AWS_144:Access logs are operational data, kept in-region; no cross-region replica.
  # checkov:skip=CKV2_AWS_62:Nothing consumes events for log objects.
  bucket = "${local.name}-s3-access-logs-${local.account_id}"
}

resource "aws_s3_bucket" "dvc" {
  # checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice per deployment; the data is versioned and reproducible (dvc repro).
  # checkov:skip=CKV2_AWS_62:No consumer for S3 event notifications: DVC pulls and pushes, nothing reacts to object events.
  bucket = "${local.name}-dvc-${local.account_id}"
  tags   = { Purpose = "DVC remote: raw data, images, features, index" }
}

resource "aws_s3_bucket" "mlflow_artifacts" {
  # checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice per deployment; artifacts are versioned and re-creatable from the DVC remote.
  # checkov:skip=CKV2_AWS_62:No consumer for S3 event notifications: MLflow reads through its own API.
  bucket = "${local.name}-mlflow-artifacts-${local.account_id}"
  tags   = { Purpose = "MLflow artifact store: index artifacts, evaluation and drift reports" }
}

resource "aws_s3_bucket" "image_cache" {
  # checkov:skip=CKV_AWS_144:A cache of public Unsplash images; re-downloadable, so no replica.
  # checkov:skip=CKV2_AWS_62:No consumer for S3 event notifications on cached images.
  bucket = "${local.name}-image-cache-${local.account_id}"
  tags   = { Purpose = "Resized Unsplash images and re-rank thumbnails" }
}

locals {
  data_buckets = {
    dvc              = aws_s3_bucket.dvc
    mlflow-artifacts = aws_s3_bucket.mlflow_artifacts
    image-cache      = aws_s3_bucket.image_cache
  }
  all_buckets  = merge(local.data_buckets, { logs = aws_s3_bucket.logs })
  bucket_names = { for k, b in local.data_buckets : k => b.id }
}

resource "aws_s3_bucket_versioning" "all" {
  for_each = local.all_buckets
  bucket   = each.value.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "all" {
  for_each = local.all_buckets
  bucket   = each.value.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "all" {
  for_each = local.all_buckets
  bucket   = each.value.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "all" {
  for_each = local.all_buckets
  bucket   = each.value.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "all" {
  for_each = local.all_buckets
  bucket   = each.value.id

  rule {
    id     = "expire-noncurrent-and-abort-multipart"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.all]
}

resource "aws_s3_bucket_logging" "data" {
  for_each = local.data_buckets
  bucket   = each.value.id

  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "${each.key}/"
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.all_buckets

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      each.value.arn,
      "${each.value.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  dynamic "statement" {
    # Other environments' pipeline roles read the DVC remote (prod registers staging's evaluated index).
    for_each = each.key == "dvc" && length(var.dvc_remote_reader_role_arns) > 0 ? [1] : []
    content {
      sid       = "CrossAccountDvcRead"
      actions   = ["s3:GetObject", "s3:ListBucket"]
      resources = [each.value.arn, "${each.value.arn}/*"]
      principals {
        type        = "AWS"
        identifiers = var.dvc_remote_reader_role_arns
      }
    }
  }

  dynamic "statement" {
    # The log bucket accepts server access logs from the data buckets of this account.
    for_each = each.key == "logs" ? [1] : []
    content {
      sid       = "S3ServerAccessLogs"
      actions   = ["s3:PutObject"]
      resources = ["${each.value.arn}/*"]
      principals {
        type        = "Service"
        identifiers = ["logging.s3.amazonaws.com"]
      }
      condition {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [local.account_id]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "all" {
  for_each = local.all_buckets
  bucket   = each.value.id
  policy   = data.aws_iam_policy_document.tls_only[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.all]
}
