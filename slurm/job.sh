#!/usr/bin/env bash
# job.sh run|tune [trixmed arguments] — the body of every trixmed SLURM job: slurm/train.sbatch and
# slurm/tune.sbatch exec it, and launch/ (submitit) runs it on the job's first node.
#
#   1. `trixmed plan` for the allocation's shape; a refusal ends the job before Ray starts
#   2. a Ray head on this (the first) node and one Ray worker per other node, each an srun step
#      (ray-node.sh), with explicit node IPs and per-job ports
#   3. `trixmed run|tune …` as a driver of that cluster ($RAY_ADDRESS)
#   4. the Ray steps are ended (never `ray stop`: that would end other jobs' Ray on shared nodes)
#
# Signals. SIGUSR1 (`#SBATCH --signal=B:USR1@T`: the time is nearly up) and SIGTERM (a preemption,
# `scancel --batch`) stop the job without losing its work, and requeue it (`scontrol requeue`):
# `trixmed run` gets the run directory's stop request, stops within two optimizer steps with a
# checkpoint of that step and exits with status 75; after TRIXMED_STOP_GRACE seconds it is
# interrupted instead (INT, then TERM, KILL: it resumes from its last checkpoint). `trixmed tune`
# is interrupted at once (a requeued sweep restores its experiment). Ray is stopped, and the next
# attempt skips completed stages and resumes the phase where it stopped. Worst case, the stop takes
# TRIXMED_STOP_GRACE + 95 s (INT 15, TERM 15, the Ray steps 60, a margin). A job whose attempts
# save no work (no new checkpoint, no finished stage) TRIXMED_MAX_STALLED_ATTEMPTS times in a row is
# not requeued again, and ends with status 3. A SIGTERM of a cancelled job (plain scancel) does
# not requeue; TRIXMED_REQUEUE=0 leaves the requeue to the caller (launch/ does it through submitit).
#
# Environment (all optional): TRIXMED_VENV (a venv to activate), TRIXMED_LOG_ROOT (default
# $SLURM_SUBMIT_DIR/logs), TRIXMED_NODE_IFACE (the network interface Ray should use, e.g. ib0),
# TRIXMED_RAY_DASHBOARD=true, TRIXMED_RAY_OBJECT_STORE_MB, TRIXMED_RAY_TMP_ROOT (default /tmp),
# TRIXMED_STOP_GRACE (seconds trixmed gets to stop on a signal, default 60), TRIXMED_REQUEUE,
# TRIXMED_MAX_STALLED_ATTEMPTS (default 3), TRIXMED_CONTAINER (a command prefix that runs a command
# in the job's container, e.g. `apptainer exec --nv /shared/trixmed.sif`: the plan, the Ray nodes
# and trixmed run through it, this script stays on the host with the site's SLURM tools).
set -uo pipefail
# Everything below is one brace group, read whole before it runs: bash reads a script as it
# goes, so editing this file (a git pull) while jobs run from it would otherwise change them mid-way.
{
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/lib.sh
source "$here/lib.sh"
# Under submitit the preemption signal (USR2) goes to every process of every step of the job;
# submitit's own process acts on it (launch/), so this script and what it starts ignore it.
trap '' USR2

[ -n "${SLURM_JOB_ID:-}" ] || tdie "job.sh runs inside a SLURM job: sbatch slurm/train.sbatch --config C (see docs/cluster.md)"
command=${1:-}
case $command in run|tune) shift ;; *) tdie "usage: job.sh run|tune [trixmed arguments], got '${command}'" ;; esac

if [ -n "${TRIXMED_VENV:-}" ]; then
  # shellcheck source=/dev/null
  source "$TRIXMED_VENV/bin/activate" || tdie "TRIXMED_VENV=$TRIXMED_VENV: cannot activate"
fi
TRIXMED=${TRIXMED:-trixmed}
export TRIXMED_PYTHON=${TRIXMED_PYTHON:-python} TRIXMED_RAY=${TRIXMED_RAY:-ray}
if [ -z "${TRIXMED_CONTAINER:-}" ]; then
  command -v "$TRIXMED" >/dev/null || tdie "'$TRIXMED' is not on PATH: activate the venv before sbatch or set TRIXMED_VENV"
fi

# --- one log directory per job (a requeued job keeps its id, so its attempts share it) ---------
export TRIXMED_LOG_DIR=${TRIXMED_LOG_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}/logs}/${SLURM_JOB_NAME:-trixmed}-$SLURM_JOB_ID
mkdir -p "$TRIXMED_LOG_DIR" || tdie "cannot create the log directory $TRIXMED_LOG_DIR"
echo "trixmed job $SLURM_JOB_ID: logs in $TRIXMED_LOG_DIR"
slurm_out=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *StdOut=//p')
if [ -n "$slurm_out" ] && [ "$(dirname "$slurm_out")" != "$TRIXMED_LOG_DIR" ]; then
  ln -sfn "$slurm_out" "$TRIXMED_LOG_DIR/slurm.out"   # SLURM's own file, seen from the job's folder
fi
exec >>"$TRIXMED_LOG_DIR/job.log" 2>&1
# mark EVENT: the job's timeline (unix times, one JSON line each), for benchmarks/slurm.py and for
# telling where a slow job spent its time
mark() { printf '{"event": "%s", "t": %s, "attempt": %s}\n' "$1" "$(date +%s.%N)" "$attempt" >> "$TRIXMED_LOG_DIR/timeline.jsonl"; }

attempt=$(( ${SLURM_RESTART_COUNT:-0} + 1 ))
mark job_start
nodes=()
while IFS= read -r n; do nodes+=("$n"); done < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${SLURMD_NODENAME:-${nodes[0]}}
workers=()
for n in "${nodes[@]}"; do [ "$n" = "$head_node" ] || workers+=("$n"); done
gpn=$(gpu_count)
tlog "job $SLURM_JOB_ID ($SLURM_JOB_NAME) attempt $attempt on ${nodes[*]}: ${#nodes[@]} node(s), ${SLURM_CPUS_ON_NODE:-?} CPUs and $gpn GPUs per node"
tlog "trixmed $command $*"

# --- stopping: from here on a signal finds whatever has been started so far and ends it ----------
ray_steps=()
stop_ray() {
  # End the job's own Ray steps: SIGTERM to each step's processes through slurmstepd (killing the
  # local srun instead would make SLURM SIGKILL the step before ray-node.sh keeps the logs), then
  # wait for the steps to finish; SLURM's KillWait bounds that, the final KILL is a fallback.
  local p s
  for s in $(squeue -h -s -j "$SLURM_JOB_ID" -o "%i %j" 2>/dev/null | awk '$2 ~ /^trixmed-ray-/ {print $1}'); do
    scancel --signal=TERM "$s" 2>/dev/null
  done
  for _ in $(seq 1 300); do
    local any=0
    for p in "${ray_steps[@]}"; do kill -0 "$p" 2>/dev/null && any=1; done
    [ $any = 0 ] && break; sleep 0.2
  done
  for p in "${ray_steps[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait "${ray_steps[@]}" 2>/dev/null
  ray_steps=()
}

# the run directory's stop request (`trixmed run` only: a sweep's trials have their own); this
# attempt's starting point is recorded for the count of attempts that saved no work
stop_file=$(in_container "$TRIXMED_PYTHON" "$here/attempt.py" start "$TRIXMED_LOG_DIR" "$command" "$@") || tlog "could not record this attempt's start"
[ "$command" = run ] || stop_file=""

trixmed_pid=""
# stop_trixmed: the stop request first (trixmed checkpoints a step within two and exits), else SIGINT
# (Python unwinds, the driver disconnects and Ray ends its actors); then TERM, KILL
stop_trixmed() {
  [ -n "$trixmed_pid" ] || return 0
  local how wait_s=${TRIXMED_STOP_GRACE:-60}
  for how in request INT TERM KILL; do
    kill -0 "$trixmed_pid" 2>/dev/null || break
    if [ $how = request ]; then
      [ -n "$stop_file" ] || continue
      tlog "asking trixmed to stop at a step: $stop_file"
      mkdir -p "$(dirname "$stop_file")" && echo step > "$stop_file"
    else
      tlog "SIG$how to trixmed"
      kill -"$how" "$trixmed_pid" 2>/dev/null
    fi
    for _ in $(seq 1 $((wait_s * 5))); do kill -0 "$trixmed_pid" 2>/dev/null || break; sleep 0.2; done
    wait_s=15   # the grace is for the first way of stopping; each fallback gets 15 s
  done
  wait "$trixmed_pid" 2>/dev/null
  local rc=$?
  if [ $rc = 75 ]; then tlog "trixmed stopped at a step, with its checkpoint (status 75)"; else tlog "trixmed stopped with status $rc"; fi
  trixmed_pid=""
}

on_signal() {
  trap '' USR1 TERM INT
  local requeue=${TRIXMED_REQUEUE:-1} status=143
  [ "$1" = INT ] && requeue=0
  # plain scancel also sends SIGTERM, to a job it has already marked cancelled: that one stays cancelled
  [ "$1" = TERM ] && scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -q "JobState=CANCELLED" && requeue=0
  tlog "SIG$1 received: stopping the job"
  mark signal
  stop_trixmed
  stop_ray
  if [ "$1" != INT ] && ! in_container "$TRIXMED_PYTHON" "$here/attempt.py" stopped "$TRIXMED_LOG_DIR" \
      --max-stalled "${TRIXMED_MAX_STALLED_ATTEMPTS:-3}"; then
    requeue=0 status=3
  fi
  if [ "$requeue" != 0 ]; then
    tlog "requeueing job $SLURM_JOB_ID: attempt $((attempt + 1)) resumes from the checkpoint"
    mark requeue
    scontrol requeue "$SLURM_JOB_ID" || tlog "scontrol requeue failed: resubmit the same command to resume"
  fi
  mark job_end
  exit $status
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

# --- 1. the plan: refuse early, before any Ray process exists ------------------------------------
# `trixmed plan --slurm` reads the allocation itself (nodes, CPUs, memory, GPUs and their memory)
# and parses this job's own trixmed command line with trixmed's parser; it writes what the job
# needs from it to the job file: the overrides it derives from the allocation (with GPUs, one
# training worker per GPU; an override given on the command line wins), whether the command
# asked for the dashboard, and trixmed's Ray settings, exported here so that the Ray nodes start
# with them (the driver then leaves Ray's runtime env empty). Nothing here parses trixmed's arguments.
job_file=$TRIXMED_LOG_DIR/plan.job
if ! in_container "$TRIXMED" plan --slurm --job-file "$job_file" --job "$command" "$@"; then
  tlog "trixmed plan refused this job's shape: not starting Ray"
  mark job_end
  exit 2
fi
extra=()
while read -r kind value; do
  case $kind in
    override) extra+=("$value") ;;
    dashboard) export TRIXMED_RAY_DASHBOARD=true ;;
    # trixmed's Ray settings, in the environment the Ray nodes and the driver inherit
    env) [[ $value =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && export "${value?}" ;;
  esac
done < "$job_file"
mark plan_done

# --- 2. the Ray cluster -----------------------------------------------------------------------------
head_ip=$(node_ip "$head_node")
base=$(job_port_base)
TRIXMED_RAY_PORT=$(free_port "$base")
TRIXMED_RAY_CLIENT_PORT=$(free_port $((TRIXMED_RAY_PORT + 1)))
TRIXMED_RAY_DASHBOARD_PORT=$(free_port $((TRIXMED_RAY_CLIENT_PORT + 1)))
TRIXMED_RAY_AGENT_PORT=$((TRIXMED_RAY_DASHBOARD_PORT + 1))
export TRIXMED_RAY_HEAD_IP=$head_ip TRIXMED_RAY_PORT TRIXMED_RAY_CLIENT_PORT TRIXMED_RAY_DASHBOARD_PORT TRIXMED_RAY_AGENT_PORT
export RAY_ADDRESS=$head_ip:$TRIXMED_RAY_PORT RAY_USAGE_STATS_ENABLED=0
# On SIGTERM Ray 2.60 first asks the GCS to drain the node, for up to 30 s; at the end of a job the
# GCS is stopping too, so that wait only delays the shutdown: skip it
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
# Ray 2.60 authenticates clients with a token; one per job (inherited by the steps and the driver)
# keeps other users on a shared node out of this job's cluster
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  RAY_AUTH_TOKEN=$(in_container "$TRIXMED_PYTHON" -c 'import secrets; print(secrets.token_hex(32))'); export RAY_AUTH_TOKEN
fi
tlog "Ray head $RAY_ADDRESS on $head_node (client port $TRIXMED_RAY_CLIENT_PORT, dashboard port $TRIXMED_RAY_DASHBOARD_PORT)"
if [ "${TRIXMED_RAY_DASHBOARD:-false}" = true ]; then
  # the dashboard's Train view is empty unless the Ray processes track Train state (STACK.md)
  export RAY_TRAIN_ENABLE_STATE_TRACKING=1
fi

# the Ray steps ask for the node's GPUs explicitly (a step's default share of the job's GRES has
# changed between SLURM releases); --overlap lets them share CPUs, memory and GPUs with the batch step
step_gres=()
[ "$gpn" -gt 0 ] && step_gres=(--gres="gpu:$gpn")
container=()   # each Ray node runs inside the container too (an srun step runs a program, not in_container)
[ -n "${TRIXMED_CONTAINER:-}" ] && read -r -a container <<< "$TRIXMED_CONTAINER"
t_cluster=$(date +%s.%N)
srun --overlap -N1 -n1 -w "$head_node" "${step_gres[@]}" --job-name=trixmed-ray-head --output="$TRIXMED_LOG_DIR/ray-head-$head_node.log" \
  "${container[@]}" bash "$here/ray-node.sh" head 0 &
ray_steps+=($!)
# the GCS must listen before workers join (they would retry, but a fast failure reads better)
for _ in $(seq 1 600); do
  (exec 3<>"/dev/tcp/$head_ip/$TRIXMED_RAY_PORT") 2>/dev/null && break
  kill -0 "${ray_steps[0]}" 2>/dev/null || { tlog "the Ray head step ended: see ray-head-$head_node.log"; stop_ray; exit 1; }
  sleep 0.2
done
k=0
for n in "${workers[@]}"; do
  k=$((k + 1))
  srun --overlap -N1 -n1 -w "$n" "${step_gres[@]}" --job-name=trixmed-ray-worker --output="$TRIXMED_LOG_DIR/ray-worker-$n.log" \
    "${container[@]}" bash "$here/ray-node.sh" worker "$k" &
  ray_steps+=($!)
done
if ! in_container "$TRIXMED_PYTHON" "$here/ray_cluster.py" wait --nodes "${#nodes[@]}" --timeout "${TRIXMED_RAY_JOIN_TIMEOUT:-180}" \
    --out "$TRIXMED_LOG_DIR/nodes.json"; then
  stop_ray; exit 1
fi
mark ray_up
tlog "Ray cluster up in $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t_cluster}") s"
[ "${TRIXMED_RAY_DASHBOARD:-false}" = true ] && dashboard_info "$head_node" "$head_ip" "$TRIXMED_RAY_DASHBOARD_PORT"

# --- 3. trixmed ----------------------------------------------------------------------------------
mark trixmed_start
in_container "$TRIXMED" "$command" "$@" "${extra[@]}" &
trixmed_pid=$!
wait "$trixmed_pid"
rc=$?
trixmed_pid=""
mark trixmed_end
tlog "trixmed $command exited with status $rc"
in_container "$TRIXMED_PYTHON" "$here/ray_cluster.py" placement --out "$TRIXMED_LOG_DIR/placement.json" \
  || tlog "could not read where the actors ran"

# --- 4. shutdown ----------------------------------------------------------------------------------
trap '' USR1 TERM INT
stop_ray
tlog "job $SLURM_JOB_ID done (status $rc)"
mark job_end
exit "$rc"
exit
}
