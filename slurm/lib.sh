# lib.sh — what job.sh (the batch side) and ray-node.sh (the per-node side) share. Sourced, not run.
#
# Wrong addresses and clashing ports are the two usual ways Ray fails on SLURM, so both are
# decided here, explicitly, on the node they belong to:
#   node_ip     this node's address for Ray: $TRIXMED_NODE_IFACE's IPv4 (e.g. ib0), else the
#               node's NodeAddr from slurmctld, else the first address of `hostname -I`
#   free_port   the first port at or above a start that nothing on this node listens on
#   job_port_base  a block of ports derived from the job id, so two jobs on one node start apart

tlog() { echo "[trixmed-slurm $(date +%T)] $*"; }
tdie() { echo "[trixmed-slurm $(date +%T)] error: $*" >&2; exit 2; }

# an IPv4 literal (NodeAddr may also be a host name)
is_ipv4() { [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; }

node_ip() {
  local node=${1:-${SLURMD_NODENAME:-$(hostname -s)}} ip="" addr
  if [ -n "${TRIXMED_NODE_IFACE:-}" ]; then
    ip=$(ip -4 -o addr show dev "$TRIXMED_NODE_IFACE" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
    [ -n "$ip" ] || tdie "TRIXMED_NODE_IFACE=$TRIXMED_NODE_IFACE: no IPv4 address on node $node"
    echo "$ip"; return
  fi
  # bounded: scontrol retries for a minute when it cannot read its config
  addr=$(timeout 10 scontrol show node "$node" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n1)
  if [ -n "$addr" ] && is_ipv4 "$addr"; then
    ip=$addr
  elif [ -n "$addr" ]; then
    # a name: resolve it, but a name that resolves to loopback (Debian maps the host's own name
    # to 127.0.1.1) would hide the node from the others; then fall through to hostname -I
    ip=$(getent ahostsv4 "$addr" 2>/dev/null | awk '$1 !~ /^127\./ {print $1; exit}')
  fi
  [ -n "$ip" ] || ip=$(hostname -I 2>/dev/null | awk '{print $1}')
  [ -n "$ip" ] || tdie "no IPv4 address found for node $node (set TRIXMED_NODE_IFACE)"
  echo "$ip"
}

# free_port START: the first port >= START that can be bound on every address of this node
free_port() {
  "${TRIXMED_PYTHON:-python}" - "$1" <<'EOF'
import socket, sys
port = int(sys.argv[1])
while port < 65000:
    s = socket.socket()
    try:
        s.bind(("", port))   # "" = every address: clashes with a listener on any one of them
        print(port)
        break
    except OSError:
        port += 1
    finally:
        s.close()
else:
    sys.exit("no free port")
EOF
}

# 20000-29999: above Ray's worker ports (10002-19999), below Linux's ephemeral range (32768+),
# ten ports per job, so jobs with different ids on one node begin ten ports apart
job_port_base() { echo $(( 20000 + (${SLURM_JOB_ID:-$$} % 1000) * 10 )); }

# GPUs this step may use on this node: CUDA_VISIBLE_DEVICES (set by SLURM's gres plugin), else
# SLURM's own count, else none
gpu_count() {
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]; then
    echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .
  elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
    echo "$SLURM_GPUS_ON_NODE"
  else
    echo 0
  fi
}

# dashboard_info NODE IP PORT: how to reach the job's Ray dashboard, in the job's log directory
# (dashboard.txt, and the token in dashboard-token, readable by the job's owner only) and in job.log.
# The head's port is reachable from the cluster's network only: the ssh line forwards it through
# the host the job was submitted from.
dashboard_info() {
  local node=$1 ip=$2 port=$3 token_line="none (RAY_AUTH_MODE=${RAY_AUTH_MODE:-})"
  if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
    (umask 077; printf '%s\n' "$RAY_AUTH_TOKEN" > "$TRIXMED_LOG_DIR/dashboard-token")
    chmod 600 "$TRIXMED_LOG_DIR/dashboard-token"
    token_line="$TRIXMED_LOG_DIR/dashboard-token (mode 0600): paste it when the dashboard asks for a token"
  fi
  {
    echo "url: http://$ip:$port"
    echo "head node: $node ($ip)"
    echo "from your machine: ssh -N -L 8265:$ip:$port ${USER:-$(id -un)}@${SLURM_SUBMIT_HOST:-<login node>}   then open http://localhost:8265"
    echo "token: $token_line"
  } > "$TRIXMED_LOG_DIR/dashboard.txt"
  while IFS= read -r line; do tlog "Ray dashboard $line"; done < "$TRIXMED_LOG_DIR/dashboard.txt"
}

# in_container CMD…: CMD inside the job's container when TRIXMED_CONTAINER names a command prefix
# (`apptainer exec --nv /shared/trixmed.sif`, `podman exec trixmed`), on the host otherwise. job.sh
# itself stays on the host, where srun/scontrol/squeue/scancel talk to the site's SLURM; what needs
# trixmed's Python (the plan, the Ray nodes, the driver) runs through this.
in_container() {
  local prefix=()
  [ -n "${TRIXMED_CONTAINER:-}" ] && read -r -a prefix <<< "$TRIXMED_CONTAINER"
  "${prefix[@]}" "$@"
}
