#!/usr/bin/env bash
# Start a real one-node Slurm on this machine for the test suite (CI and development), as root.
#
# Idempotent: installs Debian's Slurm and munge if missing, writes slurm.conf/gres.conf for this host
# (fake GPUs as character devices), starts slurmctld and slurmd unless they run (reconfigures them
# when the configuration changed) and waits until `sinfo` shows the node usable. A throw-away test
# cluster, not an admin's template: no accounting, auth/none, no cgroups (not usable in this sandbox).
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
NODE=$(hostname -s)
log() { echo "start-test-slurm: $*" >&2; }

node_usable() {
    local state
    state=$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null | head -1) || return 1
    case "$state" in idle|mix|mixed|alloc|allocated|comp|completing) return 0 ;; *) return 1 ;; esac
}

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (starts slurmctld/slurmd)"; exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    log "installing slurm-wlm (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurm-wlm slurmctld slurmd slurm-client munge)
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
fi

# Resources as slurmd sees them (never more, or the node is drained as invalid).
read -r CPUS MEM < <(slurmd -C | awk '/NodeName=/{for(i=1;i<=NF;i++){split($i,kv,"=");
    if(kv[1]=="CPUs")c=kv[2]; if(kv[1]=="RealMemory")m=kv[2]}} END{print c, m}')
MEM=$(( MEM > 1024 ? MEM - 512 : MEM ))

mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm

# Fake GPUs: Slurm only needs device files to hand out as GRES (it sets CUDA_VISIBLE_DEVICES).
for i in 0 1 2 3; do [[ -e /dev/fakegpu$i ]] || mknod /dev/fakegpu$i c 195 $i; done

new_conf=$(mktemp)
cat > "$new_conf" <<CONF
# Written by slurm/start-test-slurm.sh: one-node test cluster, not for production.
ClusterName=virnuc-test
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/none
CredType=cred/none
# Short credential lifetime: a requeued job restarts in ~20 s instead of ~150 s.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
# Schedule often: a requeued job waits for its BeginTime, then for the next scheduling pass.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# Feature: a node feature for the tests of submit --constraint.
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM Gres=gpu:4 Feature=virnuc-test State=UNKNOWN
# OverSubscribe: the tests run several small jobs at once on two cores.
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
CONF
echo 'Name=gpu File=/dev/fakegpu[0-3]' > "$CONF_DIR/gres.conf"
changed=0
if cmp -s "$new_conf" "$CONF_DIR/slurm.conf"; then
    rm -f "$new_conf"
else
    mv "$new_conf" "$CONF_DIR/slurm.conf"; chmod 644 "$CONF_DIR/slurm.conf"; changed=1
fi

if pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null; then
    if (( changed )); then log "configuration changed: scontrol reconfigure"; scontrol reconfigure; fi
else
    pgrep -x slurmctld >/dev/null || { log "starting slurmctld"; /usr/sbin/slurmctld; }
    pgrep -x slurmd >/dev/null || { log "starting slurmd"; /usr/sbin/slurmd; }
fi

for _ in $(seq 1 60); do
    if node_usable; then
        log "ready: $(sinfo -h -o '%P %D %t %G' | head -1)"; exit 0
    fi
    state=$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null | head -1 || true)
    if [[ $state == down* || $state == drain* ]]; then
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 1
done
log "Slurm did not come up; last lines of its logs:"
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
