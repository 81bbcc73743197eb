# ReadWriteMany storage for the feature-extraction Jobs (PVC clipsearch-pipeline-data, storage class efs-sc):
# N embed shards on different GPU nodes write into one directory that build-index then reads.
resource "aws_efs_file_system" "pipeline" {
  creation_token   = "${local.name}-pipeline"
  encrypted        = true
  kms_key_id       = aws_kms_key.data.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = {
    Name = "${local.name}-pipeline"
  }
}

resource "aws_efs_backup_policy" "pipeline" {
  file_system_id = aws_efs_file_system.pipeline.id

  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_security_group" "efs" {
  name        = "${local.name}-efs"
  description = "NFS from the EKS nodes to the pipeline EFS file system"
  vpc_id      = module.vpc.vpc_id

  ingress {
    description     = "NFS from EKS nodes"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [module.eks.node_security_group_id]
  }
}

resource "aws_efs_mount_target" "pipeline" {
  count           = length(local.azs)
  file_system_id  = aws_efs_file_system.pipeline.id
  subnet_id       = module.vpc.private_subnets[count.index]
  security_groups = [aws_security_group.efs.id]
}
