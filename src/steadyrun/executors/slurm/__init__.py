"""Run attempts as Slurm jobs, on this machine or over SSH; sweeps go in one job array."""
