#!/bin/bash
# steadyrun: runs `python -m steadyrun.attempt.worker ATTEMPT_DIR` for each array index
#SBATCH --job-name=sr-train_lr_0.1_+1
#SBATCH --output=%a/stdout.log
#SBATCH --error=%a/stderr.log
#SBATCH --open-mode=append
#SBATCH --array=0-1
#SBATCH --partition=gpu
#SBATCH --account=ml
#SBATCH --qos=normal
#SBATCH --time=02:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16384M
#SBATCH --gpus-per-node=1
#SBATCH --constraint="a100&ib"
#SBATCH --no-requeue
#SBATCH --mail-type=END

if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    echo "steadyrun: Slurm requeued job ${SLURM_JOB_ID:-}; its attempt ended preempted and the next attempt runs as a new job" >&2
    exit 76
fi
STEADYRUN_INDEX="${SLURM_ARRAY_TASK_ID:-0}"
ATTEMPT_DIR='/scratch/alice/jobs/exp-1/<submission>'/"$STEADYRUN_INDEX"
case "$STEADYRUN_INDEX" in
    0) export STEADYRUN_ATTEMPT=1 STEADYRUN_EXPERIMENT=exp-1 STEADYRUN_TASK='train[lr=0.1]' STEADYRUN_TASK_DIR=/scratch/alice/jobs/exp-1/work/train_lr=0.1_-ded34b03 ;;
    1) export STEADYRUN_ATTEMPT=1 STEADYRUN_EXPERIMENT=exp-1 STEADYRUN_TASK='train[lr=0.01]' STEADYRUN_TASK_DIR=/scratch/alice/jobs/exp-1/work/train_lr=0.01_-b072a9f0 ;;
    *) echo "steadyrun: no attempt for array index $STEADYRUN_INDEX" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS=4
export STEADYRUN_STOP_GRACE=30
# setup_lines
module load cuda/12.1
exec /opt/venv/bin/python -m steadyrun.attempt.worker "$ATTEMPT_DIR"
