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
  description = "EKS Kubernetes version. The manifests in k8s/ are validated against this version in tests/infra."
  type        = string
  default     = "1.33"

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
  description = "Instance types of the GPU node group (one NVIDIA GPU each, e.g. g6.xlarge with an L4, g5.xlarge with an A10G)."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g4dn|g5|g6|g6e|p3|p4d|p5)\\.", t))])
    error_message = "gpu_instance_types must list NVIDIA GPU instance types (g4dn, g5, g6, g6e, p3, p4d, p5)."
  }
}

variable "gpu_node_count" {
  description = "Minimum, desired and maximum size of the GPU node group. The search HPA scales to 5 replicas of 1 GPU each."
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
