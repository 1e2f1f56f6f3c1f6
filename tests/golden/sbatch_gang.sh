#!/bin/bash
# steadyrun: runs `python -m steadyrun.launchers.srun ATTEMPT_DIR` for each array index
#SBATCH --job-name=sr-pretrain_lr_0.1_+1
#SBATCH --output=%a/stdout.log
#SBATCH --error=%a/stderr.log
#SBATCH --open-mode=append
#SBATCH --array=0-1
#SBATCH --partition=gpu
#SBATCH --time=04:00:00
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32768M
#SBATCH --gpus-per-node=4
#SBATCH --no-requeue

if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    echo "steadyrun: Slurm requeued job ${SLURM_JOB_ID:-}; its attempt ended preempted and the next attempt runs as a new job" >&2
    exit 76
fi
STEADYRUN_INDEX="${SLURM_ARRAY_TASK_ID:-0}"
ATTEMPT_DIR='/scratch/alice/jobs/exp-1/<submission>'/"$STEADYRUN_INDEX"
case "$STEADYRUN_INDEX" in
    0) export STEADYRUN_ATTEMPT=1 STEADYRUN_EXPERIMENT=exp-1 STEADYRUN_TASK='pretrain[lr=0.1]' STEADYRUN_TASK_DIR=/scratch/alice/jobs/exp-1/work/pretrain_lr=0.1_-3a9c1e2e ;;
    1) export STEADYRUN_ATTEMPT=1 STEADYRUN_EXPERIMENT=exp-1 STEADYRUN_TASK='pretrain[lr=0.01]' STEADYRUN_TASK_DIR=/scratch/alice/jobs/exp-1/work/pretrain_lr=0.01_-c2421cf5 ;;
    *) echo "steadyrun: no attempt for array index $STEADYRUN_INDEX" >&2; exit 2 ;;
esac
export STEADYRUN_STOP_GRACE=30
# setup_lines
module load cuda/12.1
exec /opt/venv/bin/python -m steadyrun.launchers.srun "$ATTEMPT_DIR"
