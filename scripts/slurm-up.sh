#!/usr/bin/env bash
# Start a single-node Slurm cluster on 127.0.0.1 for the tests (Debian's Slurm 22.05).
#
#   scripts/slurm-up.sh [SCRATCH_DIR]      (default: /tmp/steadyrun-slurm)
#
# Installs slurmctld, slurmd, slurm-client and munge with apt-get when they are missing
# (root only), writes SCRATCH_DIR/slurm.conf (accounting off, DefMemPerCPU, memory limits
# enforced by jobacct_gather), starts munged, slurmctld and slurmd, and waits until the
# node is idle. Prints `export SLURM_CONF=...` on its last line. Stop with slurm-down.sh.
set -euo pipefail

SCRATCH=${1:-${STEADYRUN_SLURM_DIR:-/tmp/steadyrun-slurm}}
CONF=$SCRATCH/slurm.conf

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "slurm-up: Slurm is not installed and this is not root with apt-get" >&2
        exit 77
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge \
        >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    }
fi

mkdir -p "$SCRATCH"/{state,spool,log}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

# munge: one daemon per machine; reuse a running one
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || { mungekey -c 2>/dev/null || create-munge-key -f; }
    mkdir -p /run/munge && chown munge:munge /run/munge
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    started_munged=1
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

cat > "$CONF" <<CONFEOF
ClusterName=steadyrun
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=${STEADYRUN_SLURMCTLD_PORT:-6817}
SlurmdPort=${STEADYRUN_SLURMD_PORT:-6818}
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$SCRATCH/slurmctld.pid
SlurmdPidFile=$SCRATCH/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
MailProg=/bin/true
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=300
KillWait=2
OverTimeLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/filetxt
JobCompLoc=$SCRATCH/log/jobcomp.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONFEOF

export SLURM_CONF=$CONF
# a cluster left by an earlier run (same scratch dir) is stopped first
"$(dirname "$0")/slurm-down.sh" "$SCRATCH" >/dev/null 2>&1 || true
# from here on slurm-down.sh also stops the munged started above (not one found running)
[ -n "${started_munged:-}" ] && touch "$SCRATCH/munged-started-here"
slurmctld -c -f "$CONF"
slurmd -f "$CONF"
for _ in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    case "$state" in
        idle*) echo "export SLURM_CONF=$CONF"; exit 0 ;;
    esac
    sleep 0.2
done
echo "slurm-up: the node did not become idle (state: ${state:-none}); see $SCRATCH/log" >&2
exit 1
