"""Launchers: how a sweep's jobs reach compute (local processes now; SLURM and Ray next)."""
