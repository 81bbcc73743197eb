# IAM roles for service accounts (IRSA): each Kubernetes service account may assume exactly one role, and
# each role reaches only the buckets its workload uses.
data "aws_iam_policy_document" "irsa_assume" {
  for_each = {
    search   = local.search_service_account
    pipeline = local.pipeline_service_account
    mlflow   = local.mlflow_service_account
    efs-csi  = "system:serviceaccount:kube-system:efs-csi-controller-sa"
  }

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [module.eks.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_provider}:sub"
      values   = [each.value]
    }
    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_provider}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

locals {
  bucket_arn = { for k, b in local.data_buckets : k => b.arn }
}

# search service: read registered index artifacts; read/write the image cache.
data "aws_iam_policy_document" "search" {
  statement {
    sid       = "ReadArtifacts"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = [local.bucket_arn["mlflow-artifacts"], "${local.bucket_arn["mlflow-artifacts"]}/*"]
  }
  statement {
    sid       = "ImageCache"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
    resources = [local.bucket_arn["image-cache"], "${local.bucket_arn["image-cache"]}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

# pipeline jobs (embed, build-index, drift): DVC remote and MLflow artifacts read/write, image cache read.
data "aws_iam_policy_document" "pipeline" {
  statement {
    sid     = "DvcAndArtifacts"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [
      local.bucket_arn["dvc"], "${local.bucket_arn["dvc"]}/*",
      local.bucket_arn["mlflow-artifacts"], "${local.bucket_arn["mlflow-artifacts"]}/*",
    ]
  }
  statement {
    sid       = "ImageCacheRead"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = [local.bucket_arn["image-cache"], "${local.bucket_arn["image-cache"]}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

# MLflow server (proxied artifact store): read/write the artifacts bucket.
data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "Artifacts"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [local.bucket_arn["mlflow-artifacts"], "${local.bucket_arn["mlflow-artifacts"]}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

locals {
  irsa_policies = {
    search   = data.aws_iam_policy_document.search.json
    pipeline = data.aws_iam_policy_document.pipeline.json
    mlflow   = data.aws_iam_policy_document.mlflow.json
  }
}

resource "aws_iam_role" "irsa" {
  for_each           = local.irsa_policies
  name               = "${local.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.irsa_assume[each.key].json
}

resource "aws_iam_role_policy" "irsa" {
  for_each = local.irsa_policies
  name     = "${local.name}-${each.key}"
  role     = aws_iam_role.irsa[each.key].id
  policy   = each.value
}

resource "aws_iam_role" "efs_csi" {
  name               = "${local.name}-efs-csi"
  assume_role_policy = data.aws_iam_policy_document.irsa_assume["efs-csi"].json
}

resource "aws_iam_role_policy_attachment" "efs_csi" {
  role       = aws_iam_role.efs_csi.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEFSCSIDriverPolicy"
}
