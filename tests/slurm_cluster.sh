#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (tests/test_slurm.py):
# slurmctld + slurmd + MUNGE, with slurmdbd on MariaDB so that `sacct` (which submitit polls) works.
# Debian's packages, started without systemd (their service starts are refused in containers).
#
#   tests/slurm_cluster.sh start    install what is missing (root + apt), configure, start, wait until idle
#   tests/slurm_cluster.sh stop     stop every daemon it started (by their pid files)
#   tests/slurm_cluster.sh status   exit 0 when the cluster answers with an idle node
#
# Idempotent: `start` on a running cluster only checks it. It writes /etc/slurm/slurm.conf and
# slurmdbd.conf only when they are absent or were written by this script (a real cluster's
# configuration is never touched). Everything else lives under $ATTN_SLURM_STATE (default
# /var/lib/attn-slurm): spool, state, logs, pid files, the MariaDB data directory.
set -euo pipefail

STATE=${ATTN_SLURM_STATE:-/var/lib/attn-slurm}
CLUSTER=attn-local
MARK="# written by attn tests/slurm_cluster.sh"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
PACKAGES="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
DB_PID=/run/mysqld/attn-mariadbd.pid  # written by user mysql

log() { echo "slurm_cluster: $*" >&2; }

answers() { timeout 10 sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; }

install() {
  local missing=""
  for b in slurmctld slurmd sbatch slurmdbd munged mariadbd; do
    command -v "$b" >/dev/null 2>&1 || missing=yes
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "cannot install $PACKAGES (needs root and apt-get)"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d 101: the packages' service starts are refused (no systemd here); we start the daemons.
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=yes; fi
  { timeout 900 apt-get install -y -q $PACKAGES || { timeout 900 apt-get update -q && timeout 900 apt-get install -y -q $PACKAGES; }; } >"$STATE/apt.log" 2>&1
  local rc=$?
  [ -n "$created" ] && rm -f "$policy"
  return $rc
}

ours_or_absent() { [ ! -e "$1" ] || head -1 "$1" | grep -qF "$MARK"; }

configure() {
  mkdir -p /etc/slurm "$STATE"/{spool/ctld,spool/d,log,run,mysql}
  if ! ours_or_absent "$CONF" || ! ours_or_absent "$DBD_CONF"; then
    log "$CONF or $DBD_CONF exists and was not written by this script: using it as it is"
    return 0
  fi
  local host node cpus mem
  host=$(hostname -s)
  # What slurmd detects on this machine; RealMemory a little below it, or the node drains.
  node=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$((mem * 9 / 10))
  cat >"$CONF" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again once its old credential has expired: 5 s here, not the default 120 s.
AuthInfo=cred_expire=5
# Pending jobs (a requeued one among them) are looked at every 1-2 s, not every 30 s (backfill) or 60 s.
SchedulerParameters=bf_interval=1,sched_interval=2
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ReturnToService=2
KillWait=10
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
  chmod 600 "$DBD_CONF"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for <seconds> <what> <command...>
  local n=$1 what=$2
  shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  log "$what did not come up in ${n}s"
  return 1
}

start_daemons() {
  # MUNGE: its directories belong to user munge, and it runs as that user.
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
  if ! alive /run/munge/munged.pid; then
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  fi
  wait_for 10 munged sh -c 'munge -n | unmunge'

  # MariaDB has no daemon mode: its own session, in the background.
  local db="$STATE/mysql"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld "$db"
  if [ ! -d "$db/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$db" --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1
  fi
  if ! alive "$DB_PID"; then
    setsid mariadbd --user=mysql --datadir="$db" --socket=/run/mysqld/mysqld.sock \
      --pid-file="$DB_PID" --skip-networking=0 --bind-address=127.0.0.1 \
      >"$STATE/log/mariadbd.log" 2>&1 </dev/null &
  fi
  wait_for 60 mariadbd mariadb -e 'select 1'

  alive "$STATE/run/slurmdbd.pid" || slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  alive "$STATE/run/slurmctld.pid" || slurmctld
  alive "$STATE/run/slurmd.pid" || slurmd
  wait_for 60 "an idle node" answers
  # A node left down or drained by an earlier run of the machine is brought back.
  if sinfo -h -o %T | grep -q -E 'down|drain'; then
    scontrol update nodename="$(hostname -s)" state=resume || true
    wait_for 30 "an idle node" answers
  fi
  # slurmctld registers with slurmdbd shortly after it starts: sacct needs that.
  wait_for 30 "the cluster's registration with slurmdbd" \
    sh -c "sacctmgr -n -P list cluster format=cluster,controlhost | grep -q '^$CLUSTER|.'"
}

stop_daemons() {
  local p
  for p in slurmd slurmctld slurmdbd; do
    if alive "$STATE/run/$p.pid"; then kill "$(cat "$STATE/run/$p.pid")" || true; fi
  done
  if alive "$DB_PID"; then kill "$(cat "$DB_PID")" || true; fi
  if alive /run/munge/munged.pid; then kill "$(cat /run/munge/munged.pid)" || true; fi
  for _ in $(seq 20); do
    alive "$DB_PID" || alive "$STATE/run/slurmctld.pid" || return 0
    sleep 0.5
  done
}

case "${1:-start}" in
  start)
    if answers; then log "running"; exit 0; fi
    mkdir -p "$STATE"
    t0=$(date +%s)
    install || { log "not installed; see $STATE/apt.log"; exit 1; }
    configure
    start_daemons || { log "logs: $STATE/log"; exit 1; }
    log "up in $(( $(date +%s) - t0 )) s: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -1)"
    ;;
  stop) stop_daemons; log "stopped" ;;
  status) answers ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
