# EKS with two managed node groups:
#   gpu: AL2023 NVIDIA AMI (driver + container toolkit baked in), label clipsearch.io/node-class=gpu and taint
#        nvidia.com/gpu=true:NoSchedule, so only pods that ask for a GPU (search service, embed shards) land there.
#   cpu: everything else (MLflow, drift CronJob, build-index, add-ons, Prometheus).
# The NVIDIA device plugin (which advertises nvidia.com/gpu) is installed with Helm after apply: docs/DEPLOY.md.
module "eks" {
  # checkov:skip=CKV_TF_1:Registry module pinned to an exact released version (registry versions are immutable); a git commit hash would bypass the registry.
  source  = "terraform-aws-modules/eks/aws"
  version = "21.0.0"

  name               = local.name
  kubernetes_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  endpoint_private_access      = true
  endpoint_public_access       = length(var.cluster_endpoint_public_access_cidrs) > 0
  endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  enable_irsa                              = true
  enable_cluster_creator_admin_permissions = true
  enabled_log_types                        = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  addons = {
    coredns                = {}
    kube-proxy             = {}
    eks-pod-identity-agent = { before_compute = true }
    vpc-cni = {
      before_compute = true
      # Enforce the NetworkPolicies in k8s/ (the VPC CNI's network policy agent).
      configuration_values = jsonencode({ enableNetworkPolicy = "true" })
    }
    aws-efs-csi-driver = {
      service_account_role_arn = aws_iam_role.efs_csi.arn
    }
  }

  # The deploy workflow's role (GitHub OIDC) may apply the kustomize overlays.
  access_entries = {
    github_deploy = {
      principal_arn = aws_iam_role.github_deploy.arn
      policy_associations = {
        admin = {
          policy_arn = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
          access_scope = {
            type = "cluster"
          }
        }
      }
    }
  }

  eks_managed_node_groups = {
    gpu = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      capacity_type  = "ON_DEMAND"
      min_size       = var.gpu_node_count.min
      desired_size   = var.gpu_node_count.desired
      max_size       = var.gpu_node_count.max
      disk_size      = 100

      labels = {
        "clipsearch.io/node-class" = "gpu"
      }
      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }
    }

    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_instance_types
      min_size       = var.cpu_node_count.min
      desired_size   = var.cpu_node_count.desired
      max_size       = var.cpu_node_count.max
      disk_size      = 50

      labels = {
        "clipsearch.io/node-class" = "cpu"
      }
    }
  }
}
