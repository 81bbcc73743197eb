variable "environment" {
  description = "Deployment environment; part of every resource name (clipsearch-<environment>-...)."
  type        = string

  validation {
    condition     = contains(["staging", "prod"], var.environment)
    error_message = "environment must be \"staging\" or \"prod\"."
  }
}

variable "region" {
  description = "AWS region of the whole stack."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC; /16 leaves room for 3 private, 3 public and 3 database subnets."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid IPv4 CIDR of /20 or larger."
  }
}

variable "availability_zone_suffixes" {
  description = "Zones the VPC and node groups span, as suffixes of the region (a, b, c -> eu-west-1a ...). Listed explicitly so a zone AWS adds later never changes the subnet layout."
  type        = list(string)
  default     = ["a", "b", "c"]

  validation {
    condition     = length(var.availability_zone_suffixes) >= 2 && length(var.availability_zone_suffixes) <= 3 && alltrue([for z in var.availability_zone_suffixes : can(regex("^[a-z]$", z))])
    error_message = "availability_zone_suffixes must list 2 or 3 single letters (EKS needs at least two zones)."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version. Must be in EKS standard support (terraform/data/eks-versions.yaml; tests/infra checks it on the day they run); the manifests in k8s/ are validated against this version."
  type        = string
  default     = "1.35"

  validation {
    condition     = can(regex("^1\\.(3[0-9])$", var.kubernetes_version))
    error_message = "kubernetes_version must be 1.30 or newer, as MAJOR.MINOR (e.g. 1.33)."
  }
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach the public EKS API endpoint (CI runners, operators). Empty = private endpoint only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrnetmask(c)) && c != "0.0.0.0/0"])
    error_message = "Every entry must be a valid CIDR, and 0.0.0.0/0 is not allowed."
  }
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (one NVIDIA GPU each, e.g. g6.xlarge with an L4, g5.xlarge with an A10G). The image is CUDA 13, which needs compute capability >= 7.5 (Turing or newer): no p3 (Volta). Every workload must fit the smallest type listed (terraform/data/instance-types.yaml)."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g4dn|g5|g6|g6e|p4d|p5)\\.", t))])
    error_message = "gpu_instance_types must list NVIDIA GPU instance types the CUDA 13 image supports (g4dn, g5, g6, g6e, p4d, p5; not p3: Volta is not supported by CUDA 13)."
  }
}

variable "gpu_node_count" {
  description = "Minimum, desired and maximum size of the GPU node group (one GPU per node). The Cluster Autoscaler scales between min and max; max must hold the search HPA's maxReplicas plus the rollout surge (tests/infra)."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = { min = 1, desired = 1, max = 5 }

  validation {
    condition     = var.gpu_node_count.min >= 0 && var.gpu_node_count.min <= var.gpu_node_count.desired && var.gpu_node_count.desired <= var.gpu_node_count.max
    error_message = "gpu_node_count must satisfy 0 <= min <= desired <= max."
  }
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (MLflow, drift CronJob, build-index, system add-ons)."
  type        = list(string)
  default     = ["m7i.xlarge", "m6i.xlarge"]

  validation {
    condition     = length(var.cpu_instance_types) > 0
    error_message = "cpu_instance_types must not be empty."
  }
}

variable "cpu_node_count" {
  description = "Minimum, desired and maximum size of the CPU node group."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = { min = 2, desired = 2, max = 6 }

  validation {
    condition     = var.cpu_node_count.min >= 1 && var.cpu_node_count.min <= var.cpu_node_count.desired && var.cpu_node_count.desired <= var.cpu_node_count.max
    error_message = "cpu_node_count must satisfy 1 <= min <= desired <= max."
  }
}

variable "rds_instance_class" {
  description = "Instance class of the MLflow PostgreSQL database."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.", var.rds_instance_class))
    error_message = "rds_instance_class must be an RDS instance class such as db.t4g.medium."
  }
}

variable "rds_allocated_storage_gb" {
  description = "Initial storage of the MLflow database in GiB (autoscaling up to 4x)."
  type        = number
  default     = 20

  validation {
    condition     = var.rds_allocated_storage_gb >= 20 && var.rds_allocated_storage_gb <= 1000
    error_message = "rds_allocated_storage_gb must be between 20 and 1000."
  }
}

variable "rds_backup_retention_days" {
  description = "Days of automated RDS backups (point-in-time recovery window)."
  type        = number
  default     = 7

  validation {
    condition     = var.rds_backup_retention_days >= 1 && var.rds_backup_retention_days <= 35
    error_message = "rds_backup_retention_days must be between 1 and 35 (backups stay on)."
  }
}

variable "rds_multi_az" {
  description = "Run the MLflow database with a synchronous standby in a second zone."
  type        = bool
  default     = true
}

variable "github_repository" {
  description = "GitHub repository (owner/name) whose workflows may assume the CI roles through OIDC."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must look like owner/name."
  }
}

variable "create_github_oidc_provider" {
  description = "Create the account's GitHub Actions OIDC provider (false when another stack already owns it)."
  type        = bool
  default     = true
}

variable "noncurrent_version_retention_days" {
  description = "Days a non-current object version is kept in the versioned buckets before expiry."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_retention_days >= 7
    error_message = "noncurrent_version_retention_days must be at least 7."
  }
}

variable "tags" {
  description = "Extra tags for every resource (merged over project/environment tags)."
  type        = map(string)
  default     = {}
}

variable "gpu_root_volume_gb" {
  description = "Root EBS volume of each GPU node in GiB, set through the node group's launch template (disk_size is ignored when the EKS module builds a launch template). The ~10 GB CUDA image is stored compressed and unpacked, twice during a rollout to a new tag."
  type        = number
  default     = 150

  validation {
    condition     = var.gpu_root_volume_gb >= 100 && var.gpu_root_volume_gb <= 1000
    error_message = "gpu_root_volume_gb must be between 100 and 1000 (the GPU image alone unpacks to ~20 GB per tag)."
  }
}

variable "cpu_root_volume_gb" {
  description = "Root EBS volume of each CPU node in GiB, set through the node group's launch template."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_root_volume_gb >= 30 && var.cpu_root_volume_gb <= 1000
    error_message = "cpu_root_volume_gb must be between 30 and 1000."
  }
}

variable "ecr_replication_destinations" {
  description = "Registries this account's ECR replicates every clipsearch* repository to (the account CI pushes to lists the other environments' accounts). Each destination account must list this account in ecr_replication_source_account_ids."
  type = list(object({
    region      = string
    registry_id = string
  }))
  default = []

  validation {
    condition     = alltrue([for d in var.ecr_replication_destinations : can(regex("^[0-9]{12}$", d.registry_id)) && can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", d.region))])
    error_message = "Each destination needs a 12-digit registry_id (AWS account ID) and a region such as eu-west-1."
  }
}

variable "ecr_replication_source_account_ids" {
  description = "AWS accounts allowed to replicate images into this account's ECR (the account CI pushes to)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.ecr_replication_source_account_ids : can(regex("^[0-9]{12}$", a))])
    error_message = "ecr_replication_source_account_ids must be 12-digit AWS account IDs."
  }
}

variable "dvc_remote_reader_role_arns" {
  description = "IAM roles of other accounts that may read this account's DVC remote (prod's pipeline role reads staging's evaluated index and data to register them in prod's MLflow)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.dvc_remote_reader_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", a))])
    error_message = "dvc_remote_reader_role_arns must be IAM role ARNs."
  }
}

variable "dvc_source_remote" {
  description = "The DVC remote this environment promotes from (bucket ARN and the KMS key ARN of its objects), read by this account's pipeline role; null where the pipeline builds the index itself."
  type = object({
    bucket_arn  = string
    kms_key_arn = string
  })
  default = null

  validation {
    condition     = var.dvc_source_remote == null || (can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]+$", var.dvc_source_remote.bucket_arn)) && can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", var.dvc_source_remote.kms_key_arn)))
    error_message = "dvc_source_remote needs an S3 bucket ARN and a KMS key ARN."
  }
}

variable "mlflow_db_password_version" {
  description = "Bump to generate and store a new password for the dedicated MLflow database user (write-only: the password never enters the plan or the state); then re-run the mlflow-db-bootstrap Job (docs/DEPLOY.md)."
  type        = number
  default     = 1

  validation {
    condition     = var.mlflow_db_password_version >= 1 && floor(var.mlflow_db_password_version) == var.mlflow_db_password_version
    error_message = "mlflow_db_password_version must be a positive integer."
  }
}
