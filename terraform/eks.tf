# EKS with two managed node groups:
#   gpu: AL2023 NVIDIA AMI (driver + container toolkit baked in), labels clipsearch.io/node-class=gpu and
#        nvidia.com/gpu.present=true, taint nvidia.com/gpu=true:NoSchedule, so only pods that ask for a GPU (search
#        service, embed shards) land there. nvidia.com/gpu.present is the label the NVIDIA device plugin's node
#        affinity requires (k8s/addons/nvidia-device-plugin/values.yaml); without it the plugin runs nowhere and
#        no node advertises nvidia.com/gpu.
#   cpu: everything else (MLflow, drift CronJob, download/build-index, add-ons, Prometheus, deploy runners).
# Both groups are scaled by the Cluster Autoscaler (k8s/addons/cluster-autoscaler, role in autoscaling.tf), which
# finds their Auto Scaling groups by the tags EKS puts on managed node groups. Root volumes are sized through the
# launch template the module builds (the node group's own disk size is ignored when a launch template is used).
# Add-ons that are not EKS add-ons are installed with Helm from committed values: k8s/addons/install.sh.
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
    # Resource metrics API (metrics.k8s.io): without it the search HPA reads no CPU utilisation and never scales.
    metrics-server = {}
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

      block_device_mappings = {
        root = {
          device_name = "/dev/xvda" # AL2023 root device
          ebs = {
            volume_size           = var.gpu_root_volume_gb
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }

      labels = {
        "clipsearch.io/node-class" = "gpu"
        "nvidia.com/gpu.present"   = "true"
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

      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.cpu_root_volume_gb
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }

      labels = {
        "clipsearch.io/node-class" = "cpu"
      }
    }
  }
}
