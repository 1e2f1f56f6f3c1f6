#!/bin/bash
# steadyrun: runs `python -m steadyrun.launchers.srun ATTEMPT_DIR` for each array index
#SBATCH --job-name=sr-add_a_1_+1
#SBATCH --output=%a/stdout.log
#SBATCH --error=%a/stderr.log
#SBATCH --open-mode=append
#SBATCH --array=0-1
#SBATCH --partition=gpu
#SBATCH --account=abc
#SBATCH --qos=normal
#SBATCH --time=02:00:00
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16384M
#SBATCH --no-requeue

if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    echo "steadyrun: Slurm requeued job ${SLURM_JOB_ID:-}; its attempt ended preempted and the next attempt runs as a new job" >&2
    exit 76
fi
STEADYRUN_INDEX="${SLURM_ARRAY_TASK_ID:-0}"
ATTEMPT_DIR='/scratch/alice/jobs/<experiment>/<submission>'/"$STEADYRUN_INDEX"
case "$STEADYRUN_INDEX" in
    0) export STEADYRUN_ATTEMPT=1 STEADYRUN_CPUS=4 STEADYRUN_EXPERIMENT='<experiment>' STEADYRUN_TASK='add[a=1]' STEADYRUN_TASK_DIR='/scratch/alice/jobs/<experiment>/work/add_a=1_-680252ad' ;;
    1) export STEADYRUN_ATTEMPT=1 STEADYRUN_CPUS=4 STEADYRUN_EXPERIMENT='<experiment>' STEADYRUN_TASK='add[a=2]' STEADYRUN_TASK_DIR='/scratch/alice/jobs/<experiment>/work/add_a=2_-d7adadc3' ;;
    *) echo "steadyrun: no attempt for array index $STEADYRUN_INDEX" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS=4
export STEADYRUN_STOP_GRACE=30
# setup_lines
module load cuda/12.1
exec /opt/venv/bin/python -m steadyrun.launchers.srun "$ATTEMPT_DIR"
