# AWS permissions of the cluster add-ons that k8s/addons/install.sh installs with Helm. They reach AWS through
# EKS Pod Identity (the eks-pod-identity-agent add-on in eks.tf): the association below names the namespace and
# service account, so the Helm values need no per-account role ARN.
#   cluster-autoscaler (kube-system): scales the managed node groups' Auto Scaling groups, which EKS tags with
#     k8s.io/cluster-autoscaler/<cluster>=owned; it may only change groups that carry that tag.
#   external-secrets (external-secrets): reads the MLflow database secrets (and the Gemini key) for the
#     ExternalSecrets in k8s/mlflow and k8s/base.
data "aws_iam_policy_document" "pod_identity_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "cluster_autoscaler" {
  # checkov:skip=CKV_AWS_356:Describe* calls of Auto Scaling and EC2 support no resource-level permissions; the write actions are limited by the owned-tag condition below.
  # checkov:skip=CKV_AWS_111:SetDesiredCapacity/TerminateInstanceInAutoScalingGroup are limited by the aws:ResourceTag condition to this cluster's node groups.
  statement {
    sid = "Discover"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "NodeGroupTemplates" # labels/taints of a group scaled from zero
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${var.region}:${local.account_id}:nodegroup/${local.name}/*/*"]
  }
  statement {
    sid       = "ScaleOwnedGroups"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${local.name}"
      values   = ["owned"]
    }
  }
}

data "aws_iam_policy_document" "external_secrets" {
  statement {
    sid     = "ReadSecrets"
    actions = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [
      aws_secretsmanager_secret.mlflow_db.arn,
      aws_secretsmanager_secret.gemini.arn,
      aws_db_instance.mlflow.master_user_secret[0].secret_arn,
    ]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]
  }
}

locals {
  addon_identities = {
    cluster-autoscaler = {
      namespace       = "kube-system"
      service_account = "cluster-autoscaler"
      policy          = data.aws_iam_policy_document.cluster_autoscaler.json
    }
    external-secrets = {
      namespace       = "external-secrets"
      service_account = "external-secrets"
      policy          = data.aws_iam_policy_document.external_secrets.json
    }
  }
}

resource "aws_iam_role" "addons" {
  for_each           = local.addon_identities
  name               = "${local.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_assume.json
}

resource "aws_iam_role_policy" "addons" {
  for_each = local.addon_identities
  name     = "${local.name}-${each.key}"
  role     = aws_iam_role.addons[each.key].id
  policy   = each.value.policy
}

resource "aws_eks_pod_identity_association" "addons" {
  for_each        = local.addon_identities
  cluster_name    = module.eks.cluster_name
  namespace       = each.value.namespace
  service_account = each.value.service_account
  role_arn        = aws_iam_role.addons[each.key].arn
}
