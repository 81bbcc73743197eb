# Image repositories: the service/pipeline image (targets gpu and cpu, tags <sha> and <sha>-cpu) and the
# MLflow server image. Tags are immutable, so a deployed tag always names the same bytes.
locals {
  ecr_repositories = ["clipsearch", "clipsearch-mlflow"]
}

resource "aws_ecr_repository" "this" {
  for_each             = toset(local.ecr_repositories)
  name                 = each.value
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.data.arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each   = aws_ecr_repository.this
  repository = each.value.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images after 14 days"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 14
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest 200 tagged images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = 200
        }
        action = { type = "expire" }
      },
    ]
  })
}

# Every environment's cluster pulls from the ECR of its own account. CI pushes once, to the account it runs
# against (staging); ECR replicates each pushed image to the registries listed in ecr_replication_destinations
# (prod), whose registry policy admits this account (ecr_replication_source_account_ids over there).
resource "aws_ecr_replication_configuration" "this" {
  count = length(var.ecr_replication_destinations) > 0 ? 1 : 0

  replication_configuration {
    rule {
      dynamic "destination" {
        for_each = var.ecr_replication_destinations
        content {
          region      = destination.value.region
          registry_id = destination.value.registry_id
        }
      }
      repository_filter {
        filter      = "clipsearch"
        filter_type = "PREFIX_MATCH"
      }
    }
  }
}

data "aws_iam_policy_document" "ecr_replication_target" {
  count = length(var.ecr_replication_source_account_ids) > 0 ? 1 : 0

  statement {
    sid     = "ReplicationFromSourceAccounts"
    actions = ["ecr:CreateRepository", "ecr:ReplicateImage"]
    principals {
      type        = "AWS"
      identifiers = [for a in var.ecr_replication_source_account_ids : "arn:${local.partition}:iam::${a}:root"]
    }
    resources = ["arn:${local.partition}:ecr:${var.region}:${local.account_id}:repository/clipsearch*"]
  }
}

resource "aws_ecr_registry_policy" "replication_target" {
  count  = length(var.ecr_replication_source_account_ids) > 0 ? 1 : 0
  policy = data.aws_iam_policy_document.ecr_replication_target[0].json
}
