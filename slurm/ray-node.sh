#!/usr/bin/env bash
# ray-node.sh head|worker INDEX — one node of a job's Ray cluster; job.sh runs it with
# `srun -N1 -n1 -w NODE --overlap`, so it runs on the node it describes.
#
# Everything node-specific is decided here, on the node: its IP (lib.sh node_ip), its
# dashboard-agent port (free on this node, starting from a per-job base), its CPUs and GPUs (what
# SLURM allocated to the job on this node, not what the machine has) and its Ray temp dir (one per
# job and node, so two jobs, or two emulated nodes, on one host never share sockets or logs).
# From job.sh (inherited through srun): TRIXMED_LOG_DIR, TRIXMED_RAY_PORT, TRIXMED_RAY_HEAD_IP,
# TRIXMED_RAY_CLIENT_PORT, TRIXMED_RAY_DASHBOARD_PORT, TRIXMED_RAY_AGENT_PORT.
#
# SLURM ends the step with SIGTERM (job.sh's shutdown, scancel, the time limit): Ray's processes get
# it too; this script waits for `ray start --block` to finish, keeps the node's Ray logs in the
# job's log directory and removes the temp dir. `ray stop` is never used: it stops every Ray
# process on the host, other jobs' included.
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

role=${1:?usage: ray-node.sh head|worker INDEX}
index=${2:-0}
node=${SLURMD_NODENAME:-$(hostname -s)}
ip=$(node_ip "$node")
cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
gpus=$(gpu_count)
tmp=${TRIXMED_RAY_TMP_ROOT:-/tmp}/trixmed-ray-$SLURM_JOB_ID-$node
# the head takes the agent base port itself; worker k starts k above it, so emulated nodes on one
# host, which check at about the same moment, do not pick the same port
agent_port=$(free_port $((TRIXMED_RAY_AGENT_PORT + index)))
rm -rf "$tmp"; mkdir -p "$tmp"

args=(--node-ip-address="$ip" --num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$tmp"
      --dashboard-agent-listen-port="$agent_port" --disable-usage-stats --block)
if [ -n "${TRIXMED_RAY_OBJECT_STORE_MB:-}" ]; then
  args+=(--object-store-memory=$((TRIXMED_RAY_OBJECT_STORE_MB * 1024 * 1024)))
elif [ "${SLURM_MEM_PER_NODE:-0}" -gt 0 ]; then   # --mem=0 (the node's all): Ray sizes it from the node
  # Ray sizes its object store from the machine's memory, not the job's share: cap it at 30 %
  # of the allocation so the job stays inside its memory limit
  args+=(--object-store-memory=$((SLURM_MEM_PER_NODE * 1024 * 1024 * 3 / 10)))
fi
case $role in
  head)
    args+=(--head --port="$TRIXMED_RAY_PORT" --ray-client-server-port="$TRIXMED_RAY_CLIENT_PORT"
           --dashboard-port="$TRIXMED_RAY_DASHBOARD_PORT" --dashboard-host="$ip"
           --include-dashboard="${TRIXMED_RAY_DASHBOARD:-false}") ;;
  worker)
    args+=(--address="$TRIXMED_RAY_HEAD_IP:$TRIXMED_RAY_PORT") ;;
  *) tdie "ray-node.sh: role must be head or worker, got $role" ;;
esac

printf '{"node": "%s", "role": "%s", "ip": "%s", "cpus": %s, "gpus": %s, "agent_port": %s, "temp_dir": "%s"}\n' \
  "$node" "$role" "$ip" "$cpus" "$gpus" "$agent_port" "$tmp" > "$TRIXMED_LOG_DIR/ray-node-$node.json"
tlog "$role on $node: ray start ${args[*]}"

ray_pid=""
finish() {
  trap '' TERM INT
  if [ -n "$ray_pid" ] && kill -0 "$ray_pid" 2>/dev/null; then
    kill -TERM "$ray_pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$ray_pid" 2>/dev/null || break; sleep 0.2; done
  fi
  # keep the node's Ray logs (raylet, GCS on the head, workers' stdout) with the job's logs
  if [ -d "$tmp/session_latest/logs" ]; then
    mkdir -p "$TRIXMED_LOG_DIR/ray/$node"
    cp -rL "$tmp/session_latest/logs/." "$TRIXMED_LOG_DIR/ray/$node/" 2>/dev/null
  fi
  rm -rf "$tmp"
  tlog "$role on $node stopped"
  exit "${1:-0}"
}
trap 'finish 0' TERM INT

"${TRIXMED_RAY:-ray}" start "${args[@]}" &
ray_pid=$!
wait "$ray_pid"
rc=$?
# ray start --block returned on its own: one of the node's Ray processes died
tlog "ray start on $node exited with status $rc"
finish "$rc"
exit
}
