#!/bin/bash
# steadyrun: runs `python -m steadyrun.attempt.worker ATTEMPT_DIR` for each array index
#SBATCH --job-name=sr-train
#SBATCH --output=0/stdout.log
#SBATCH --error=0/stderr.log
#SBATCH --open-mode=append
#SBATCH --time=01:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --no-requeue

if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    echo "steadyrun: Slurm requeued job ${SLURM_JOB_ID:-}; its attempt ended preempted and the next attempt runs as a new job" >&2
    exit 76
fi
STEADYRUN_INDEX="${SLURM_ARRAY_TASK_ID:-0}"
ATTEMPT_DIR='/scratch/alice/jobs/exp-1/<submission>'/"$STEADYRUN_INDEX"
case "$STEADYRUN_INDEX" in
    0) export STEADYRUN_TASK=train STEADYRUN_TASK_DIR=/scratch/alice/jobs/exp-1/work/train ;;
    *) echo "steadyrun: no attempt for array index $STEADYRUN_INDEX" >&2; exit 2 ;;
esac
export STEADYRUN_STOP_GRACE=30
# setup_lines
# the experiment's package: unpacked once on this node, run in it
STEADYRUN_PACKAGE='/scratch/alice/jobs/packages/<sha256>'
if [ ! -f "$STEADYRUN_PACKAGE/.steadyrun-package" ]; then
    echo '<sha256 of the file>  /scratch/alice/jobs/packages/<sha256>.tar.gz' | sha256sum -c --quiet - || exit 1
    STEADYRUN_TMP="$(mktemp -d '/scratch/alice/jobs/packages/.<sha256>.XXXXXX')" || exit 1
    tar -xzf '/scratch/alice/jobs/packages/<sha256>.tar.gz' -C "$STEADYRUN_TMP" --no-same-owner || exit 1
    echo '<sha256>' > "$STEADYRUN_TMP/.steadyrun-package"
    mv -T "$STEADYRUN_TMP" "$STEADYRUN_PACKAGE" 2>/dev/null || { rm -rf "$STEADYRUN_TMP"; [ -f "$STEADYRUN_PACKAGE/.steadyrun-package" ] || exit 1; }
fi
cd "$STEADYRUN_PACKAGE" || exit 1
export PYTHONPATH="$STEADYRUN_PACKAGE${PYTHONPATH:+:$PYTHONPATH}"
export STEADYRUN_PACKAGE_DIR="$STEADYRUN_PACKAGE"
ATTEMPT_DIR="$(readlink -f "$ATTEMPT_DIR")"
exec srun --ntasks=1 --container-image=nvcr.io/nvidia/pytorch:24.05-py3 --container-mounts="$ATTEMPT_DIR:$ATTEMPT_DIR,/datasets:/datasets:ro,/scratch/alice:/scratch/alice,$STEADYRUN_PACKAGE:$STEADYRUN_PACKAGE:ro" --container-workdir="$STEADYRUN_PACKAGE" /opt/venv/bin/python -m steadyrun.attempt.worker "$ATTEMPT_DIR"
