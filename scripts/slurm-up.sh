#!/usr/bin/env bash
# Start a Slurm cluster on 127.0.0.1 for the tests (Debian's Slurm 22.05).
#
#   scripts/slurm-up.sh [SCRATCH_DIR]      (default: /tmp/steadyrun-slurm)
#
# Installs slurmctld, slurmd, slurm-client and munge with apt-get when they are missing
# (root only), writes SCRATCH_DIR/slurm.conf (accounting off, DefMemPerCPU, memory limits
# enforced by jobacct_gather), starts munged, slurmctld and slurmd, and waits until the
# nodes are idle. Prints `export SLURM_CONF=...` on its last line. Stop with slurm-down.sh.
#
# Environment:
#   STEADYRUN_SLURMCTLD_PORT   slurmctld's port (default 6817)
#   STEADYRUN_SLURMD_PORT      slurmd's port (default 6818); with two nodes, node n1's
#   STEADYRUN_SLURM_NODES      1 (default): one node named after this host, with all its
#                              CPUs and memory; 2: two nodes n1 and n2 on this machine
#                              (two slurmd, `slurmd -N n1` / `-N n2`), each with half the
#                              CPUs (at least 1) and half the memory
#   STEADYRUN_SLURMD_PORT2     node n2's slurmd port (default: STEADYRUN_SLURMD_PORT + 1)
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
NODES=${STEADYRUN_SLURM_NODES:-1}
SLURMD_PORT=${STEADYRUN_SLURMD_PORT:-6818}
case "$NODES" in
    1)
        NODE_LINES="NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
        PARTITION_NODES=$HOST
        NODE_NAMES=""
        PID_FILE=$SCRATCH/slurmd.pid
        SLURMD_LOG=$SCRATCH/log/slurmd.log
        SPOOL=$SCRATCH/spool
        ;;
    2)
        NODE_CPUS=$(( CPUS / 2 > 0 ? CPUS / 2 : 1 ))
        NODE_MEM=$(( MEM_MB / 2 ))
        PORT2=${STEADYRUN_SLURMD_PORT2:-$((SLURMD_PORT + 1))}
        NODE_LINES="NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$SLURMD_PORT CPUs=$NODE_CPUS RealMemory=$NODE_MEM State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$PORT2 CPUs=$NODE_CPUS RealMemory=$NODE_MEM State=UNKNOWN"
        PARTITION_NODES="n[1-2]"
        NODE_NAMES="n1 n2"
        PID_FILE=$SCRATCH/slurmd-%n.pid
        SLURMD_LOG=$SCRATCH/log/slurmd-%n.log
        SPOOL=$SCRATCH/spool-%n
        mkdir -p "$SCRATCH/spool-n1" "$SCRATCH/spool-n2"
        ;;
    *)
        echo "slurm-up: STEADYRUN_SLURM_NODES=$NODES: give 1 or 2" >&2
        exit 2
        ;;
esac

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
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$SCRATCH/slurmctld.pid
SlurmdPidFile=$PID_FILE
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SLURMD_LOG
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
$NODE_LINES
PartitionName=debug Nodes=$PARTITION_NODES Default=YES MaxTime=INFINITE State=UP
CONFEOF

export SLURM_CONF=$CONF
# a cluster left by an earlier run (same scratch dir) is stopped first
"$(dirname "$0")/slurm-down.sh" "$SCRATCH" >/dev/null 2>&1 || true
# from here on slurm-down.sh also stops the munged started above (not one found running)
[ -n "${started_munged:-}" ] && touch "$SCRATCH/munged-started-here"
slurmctld -c -f "$CONF"
if [ -z "$NODE_NAMES" ]; then
    slurmd -f "$CONF"
else
    for node in $NODE_NAMES; do slurmd -f "$CONF" -N "$node"; done
fi
for _ in $(seq 150); do
    # one line per node: every node must be idle
    states=$(sinfo -h -N -o %T 2>/dev/null || true)
    if [ -n "$states" ] && [ "$(printf '%s\n' "$states" | grep -vc '^idle')" = 0 ] \
            && [ "$(printf '%s\n' "$states" | grep -c '^idle')" = "$NODES" ]; then
        echo "export SLURM_CONF=$CONF"
        exit 0
    fi
    sleep 0.2
done
echo "slurm-up: the nodes did not become idle (states: ${states:-none}); see $SCRATCH/log" >&2
exit 1
