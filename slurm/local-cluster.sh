#!/usr/bin/env bash
# local-cluster.sh — a throwaway SLURM cluster on this one host, for tests and for trying the
# sbatch templates (Debian's slurm-wlm: slurmctld + one `slurmd -N nodeI` per emulated node).
#
#   slurm/local-cluster.sh install   apt-get install slurmctld slurmd slurm-client munge (root or sudo)
#   slurm/local-cluster.sh start     write a config, start munged, slurmctld and N slurmd; wait until idle
#   slurm/local-cluster.sh stop      cancel its jobs, stop every daemon it started (by PID file only)
#   slurm/local-cluster.sh status    sinfo + squeue
#   slurm/local-cluster.sh env       print `export SLURM_CONF=…` (eval it before sbatch/squeue)
#
# Knobs (environment):
#   SLURM_LOCAL_DIR    state, config, logs and PID files      (default /tmp/trixmed-slurm)
#   SLURM_LOCAL_NODES  emulated nodes                         (default 2)
#   SLURM_LOCAL_CPUS   CPUs advertised per node               (default nproc)
#   SLURM_LOCAL_PORT   slurmctld port; node i's slurmd listens on PORT+i  (default 6817)
#   SLURM_LOCAL_GPUS   fake GPUs per node (GRES gpu)          (default 0)
#
# Fake GPUs: each node advertises SLURM_LOCAL_GPUS GRES gpus backed by device files of its own
# (character devices made with mknod, the numbers of /dev/null) and autodetection off, so
# `--gpus-per-node`, each step's CUDA_VISIBLE_DEVICES and trixmed's GPU plan run on a machine
# without GPUs. Nothing can compute on them: a job that trains on them sets TRIXMED_FAKE_GPUS=1
# (trixmed plan then plans the GPU shape but trains on CPU).
#
# Node i gets its own loopback address, 127.0.0.(10+i), as its NodeAddr: every address in 127/8
# reaches this host, and a distinct address per node lets the sbatch templates give each node's Ray
# processes an explicit, different --node-ip-address, as on a real cluster. (Not 127.0.0.1: Ray
# replaces that one with the host's outward address, which would merge the nodes again.) Several instances can
# run side by side with different SLURM_LOCAL_DIR and SLURM_LOCAL_PORT (the test harness does so),
# and `stop` only signals the PIDs its own PID files name: never `pkill`, never a system slurmd.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/trixmed-slurm}
NODES=${SLURM_LOCAL_NODES:-2}
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
PORT=${SLURM_LOCAL_PORT:-6817}
GPUS=${SLURM_LOCAL_GPUS:-0}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

log() { echo "[local-cluster $(date +%T)] $*" >&2; }

# a PID is alive when it exists and is not a zombie (kill -0 succeeds on zombies nobody reaped)
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && ! awk '{exit ($3=="Z")?0:1}' "/proc/$1/stat"; }
pid_of() { if [ -s "$1" ]; then cat "$1"; fi; }

# stop_pidfile FILE NAME: TERM, up to 10 s, then KILL; only the PID that FILE names
stop_pidfile() {
  local f=$1 p; p=$(pid_of "$f"); [ -n "$p" ] || { rm -f "$f"; return 0; }
  if alive "$p"; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$p" || break; sleep 0.2; done
    if alive "$p"; then log "$2 ($p) ignored SIGTERM, sending SIGKILL"; kill -KILL "$p" 2>/dev/null || true; sleep 0.2; fi
  fi
  rm -f "$f"
}

# wait_for SECONDS CMD...: retry CMD (each try bounded to 3 s) until it succeeds
wait_for() {
  local t=$1; shift; local end=$((SECONDS + t))
  while [ $SECONDS -lt $end ]; do timeout 3 "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

do_install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return 0
  fi
  # a failed install is not fatal unless SLURM is expected (TRIXMED_REQUIRE_SLURM=1, CI): the
  # tests marked 'slurm' then skip and say why
  local required=0; [ "${TRIXMED_REQUIRE_SLURM:-0}" != 0 ] && required=1
  if ! command -v apt-get >/dev/null || { [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; }; then
    log "SLURM is not installed and cannot be installed here (needs apt-get as root or passwordless sudo):"
    log "the tests marked 'slurm' will be skipped; install with: sudo apt-get install slurmctld slurmd slurm-client munge"
    return "$required"
  fi
  log "installing SLURM (slurmctld slurmd slurm-client munge) for the tests marked 'slurm'"
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
           --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }; then
    log "apt-get could not install SLURM: the tests marked 'slurm' will be skipped"
    return "$required"
  fi
}

write_conf() {
  local mem_mb node_mem
  mem_mb=$(awk '/MemTotal/{print int($2/1024*0.8)}' /proc/meminfo)
  node_mem=$((mem_mb / NODES))
  cat > "$CONF" <<EOF
ClusterName=trixmed-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
AuthType=auth/munge
CredType=cred/munge
# a private munged; cred_expire 10 s: a requeued job becomes eligible again ~10 s later (default 120)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d/%n
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule every 2 s, not every 30-60 s: a requeued job (eligible again after cred_expire) is
# started by a periodic pass, and the tests wait for it
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
KillWait=10
MinJobAge=300
# job ids restart after every wipe of StateSaveLocation: start from a time-based id so per-job
# folders (logs/slurm/<name>-<id>, submitit's %j folders) of an earlier cluster are not reused
FirstJobId=$(( ($(date +%s) % 60000) * 1000 + 1 ))
SlurmctldTimeout=30
SlurmdTimeout=30
EOF
  local gres=""
  if [ "$GPUS" -gt 0 ]; then
    gres=" Gres=gpu:$GPUS"
    echo "GresTypes=gpu" >> "$CONF"
    # slurmd reads gres.conf beside slurm.conf; AutoDetect=off: no NVML here, the files are the GPUs
    echo "AutoDetect=off" > "$DIR/gres.conf"
    mkdir -p "$DIR/dev"
  fi
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=node$i NodeHostname=$HOST NodeAddr=127.0.0.$((10 + i)) Port=$((PORT + i)) CPUs=$CPUS RealMemory=$node_mem$gres State=UNKNOWN" >> "$CONF"
    if [ "$GPUS" -gt 0 ]; then
      for g in $(seq 0 $((GPUS - 1))); do mknod -m 666 "$DIR/dev/node$i-gpu$g" c 1 3; done
      echo "NodeName=node$i Name=gpu File=$DIR/dev/node$i-gpu[0-$((GPUS - 1))]" >> "$DIR/gres.conf"
    fi
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >> "$CONF"
}

do_start() {
  [ "$(id -u)" = 0 ] || { log "must run as root (the daemons run as root, SlurmUser=root)"; exit 1; }
  command -v slurmctld >/dev/null || { log "SLURM is not installed; run: $0 install"; exit 1; }
  if ls "$DIR"/pids/*.pid >/dev/null 2>&1; then log "an earlier instance in $DIR is still recorded; stopping it"; do_stop; fi
  local t0=$SECONDS
  rm -rf "$DIR"; mkdir -p "$DIR"/{ctld,munge,pids,log}
  for i in $(seq 1 "$NODES"); do mkdir -p "$DIR/d/node$i"; done
  chmod 700 "$DIR/munge"
  write_conf

  # a private munged (own key and socket) so a system munged, if any, is left alone
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none; chmod 400 "$DIR/munge/munge.key"
  munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/pids/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 10 bash -c "munge -S '$DIR/munge/munge.socket' -n | unmunge -S '$DIR/munge/munge.socket'" \
    || { log "munged did not start"; exit 1; }

  slurmctld
  wait_for 20 scontrol ping || { log "slurmctld did not start"; tail -20 "$DIR/log/slurmctld.log" >&2; exit 1; }
  for i in $(seq 1 "$NODES"); do slurmd -N "node$i"; done
  local end=$((SECONDS + 30)) idle=0
  while [ $SECONDS -lt $end ]; do
    idle=$(timeout 3 sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l) || idle=0
    [ "$idle" -ge "$NODES" ] && break; sleep 0.2
  done
  if [ "$idle" -lt "$NODES" ]; then
    log "nodes not idle after 30 s:"; timeout 3 sinfo -N -l >&2 || true; tail -n 5 "$DIR"/log/slurmd-*.log >&2; exit 1
  fi
  local fake=""; [ "$GPUS" -gt 0 ] && fake=" and $GPUS fake GPUs"
  log "cluster up: $NODES node(s) × $CPUS CPUs$fake in $((SECONDS - t0)) s; export SLURM_CONF=$CONF"
}

do_stop() {
  local ctld; ctld=$(pid_of "$DIR/pids/slurmctld.pid")
  if alive "$ctld"; then
    # cancel what is still queued or running, so no job or step process outlives the cluster
    local jobs; jobs=$(timeout 5 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086  # one argument per job id
      timeout 5 scancel --full $jobs 2>/dev/null || true
      for _ in $(seq 1 100); do [ -z "$(timeout 3 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    timeout 10 scontrol shutdown >/dev/null 2>&1 || true   # this controller and the slurmd registered with it
  fi
  for f in "$DIR"/pids/slurmd-*.pid; do if [ -e "$f" ]; then stop_pidfile "$f" slurmd; fi; done
  stop_pidfile "$DIR/pids/slurmctld.pid" slurmctld
  stop_pidfile "$DIR/pids/munged.pid" munged
  log "stopped"
}

case "${1:-}" in
  install) do_install ;;
  start)   # on any failure, stop whatever was already started
           trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed (rc=$rc), cleaning up"; do_stop; fi' EXIT
           do_start ;;
  stop)    do_stop ;;
  status)  timeout 5 sinfo -N; timeout 5 squeue ;;
  env)     echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 {install|start|stop|status|env}" >&2; exit 2 ;;
esac
