# GitHub Actions reach AWS through OIDC: short-lived credentials, no stored keys. Each workflow gets a role
# whose trust policy names the repository and the ref or environment it runs for.
locals {
  github_oidc_url = "token.actions.githubusercontent.com"
  github_oidc_arn = var.create_github_oidc_provider ? aws_iam_openid_connect_provider.github[0].arn : "arn:${local.partition}:iam::${local.account_id}:oidc-provider/${local.github_oidc_url}"
}

resource "aws_iam_openid_connect_provider" "github" {
  count          = var.create_github_oidc_provider ? 1 : 0
  url            = "https://${local.github_oidc_url}"
  client_id_list = ["sts.amazonaws.com"]
}

data "aws_iam_policy_document" "github_assume" {
  for_each = {
    # ci.yml pushes images only from main (pushes of PRs are disabled in the workflow too).
    ci = ["repo:${var.github_repository}:ref:refs/heads/main"]
    # deploy.yml jobs run in the GitHub environment named after this stack (protected for prod).
    deploy = ["repo:${var.github_repository}:environment:${var.environment}"]
    # ml-pipeline.yml's jobs run in the GitHub environment of this stack (staging builds, prod promotes).
    pipeline = ["repo:${var.github_repository}:environment:${var.environment}"]
  }

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_url}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_url}:sub"
      values   = each.value
    }
  }
}

# ci: push images to the two ECR repositories.
data "aws_iam_policy_document" "github_ci" {
  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }
  statement {
    sid = "EcrPush"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [for r in aws_ecr_repository.this : r.arn]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

# deploy: find the cluster (kubectl access comes from the EKS access entry in eks.tf) and read image digests.
data "aws_iam_policy_document" "github_deploy" {
  statement {
    sid       = "DescribeCluster"
    actions   = ["eks:DescribeCluster"]
    resources = [module.eks.cluster_arn]
  }
  statement {
    sid       = "ReadImages"
    actions   = ["ecr:DescribeImages"]
    resources = [for r in aws_ecr_repository.this : r.arn]
  }
}

# pipeline: DVC remote read/write (the in-VPC runner reaches MLflow in-cluster); where this environment
# promotes from another one (dvc_source_remote), read access to that remote and its key as well.
data "aws_iam_policy_document" "github_pipeline" {
  statement {
    sid       = "Dvc"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
    resources = [local.bucket_arn["dvc"], "${local.bucket_arn["dvc"]}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
  dynamic "statement" {
    for_each = var.dvc_source_remote == null ? [] : [var.dvc_source_remote]
    content {
      sid       = "SourceDvcRead"
      actions   = ["s3:GetObject", "s3:ListBucket"]
      resources = [statement.value.bucket_arn, "${statement.value.bucket_arn}/*"]
    }
  }
  dynamic "statement" {
    for_each = var.dvc_source_remote == null ? [] : [var.dvc_source_remote]
    content {
      sid       = "SourceDvcKms"
      actions   = ["kms:Decrypt"]
      resources = [statement.value.kms_key_arn]
    }
  }
}

locals {
  # deploy's role is aws_iam_role.github_deploy below (the EKS access entry references it).
  github_policies = {
    ci       = data.aws_iam_policy_document.github_ci.json
    pipeline = data.aws_iam_policy_document.github_pipeline.json
  }
}

resource "aws_iam_role" "github" {
  for_each             = local.github_policies
  name                 = "${local.name}-github-${each.key}"
  assume_role_policy   = data.aws_iam_policy_document.github_assume[each.key].json
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "github" {
  for_each = local.github_policies
  name     = "${local.name}-github-${each.key}"
  role     = aws_iam_role.github[each.key].id
  policy   = each.value
}

# deploy: its own resource because module.eks (access_entries) references it.
resource "aws_iam_role" "github_deploy" {
  name                 = "${local.name}-github-deploy"
  assume_role_policy   = data.aws_iam_policy_document.github_assume["deploy"].json
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "github_deploy" {
  name   = "${local.name}-github-deploy"
  role   = aws_iam_role.github_deploy.id
  policy = data.aws_iam_policy_document.github_deploy.json
}
