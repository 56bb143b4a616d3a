#!/usr/bin/env bash
# A single-node Slurm cluster on localhost for tests (no systemd, no cgroups), after
# ../shared/specs/SLURM-NOTES.md. Needs Debian's slurmctld, slurmd, slurm-client and munge.
#
#   ci/slurm-up.sh start DIR   writes DIR/slurm.conf, starts munged (unless one answers),
#                              slurmctld and slurmd, waits until the node is idle, and
#                              prints `export SLURM_CONF=DIR/slurm.conf`
#   ci/slurm-up.sh stop DIR    stops the daemons that `start DIR` started (by their pid files)
set -euo pipefail
cmd=${1:?usage: slurm-up.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: slurm-up.sh start|stop DIR}" && cd "$2" && pwd)
conf="$dir/slurm.conf"

stop_pidfile() {
    local f=$1
    [ -f "$f" ] || return 0
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
}

case "$cmd" in
stop)
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"
    echo "slurm test cluster in $dir stopped"
    ;;
start)
    for bin in munged slurmctld slurmd sinfo sbatch; do
        command -v "$bin" >/dev/null || { echo "$bin not found: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
    done
    # munged refuses to start as root with Debian's log folder ownership unless forced.
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge
        [ -f /etc/munge/munge.key ] || mungekey --create
        munged --force --pid-file="$dir/munged.pid"
        munge -n | unmunge | grep -q "STATUS: *Success" || { echo "munged does not answer" >&2; exit 1; }
    fi
    host=$(hostname)
    cpus=$(nproc)
    # Below the machine's memory, as slurmd drains a node that claims more than it has.
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
    mkdir -p "$dir/state" "$dir/spool"
    cat > "$conf" <<CONF
ClusterName=genbench-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmctldPort=${GENBENCH_SLURMCTLD_PORT:-6817}
SlurmdPort=${GENBENCH_SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$conf"
    slurmctld -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$conf"
            exit 0
        fi
        sleep 0.5
    done
    echo "the node did not come up idle within 30 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    sinfo >&2 || true
    exit 1
    ;;
*)
    echo "usage: slurm-up.sh start|stop DIR" >&2
    exit 2
    ;;
esac
