#!/usr/bin/env bash
# A real multi-node Slurm cluster on this one machine, for rayhpc's tests (root, Debian 12).
#
# Every node is a network namespace with an address of its own on a private bridge, and its
# daemon runs in a UTS namespace with a hostname of its own, so jobs see ctl, node1, node2...
# as distinct hosts (getent, TCP between tasks, Open MPI's shared memory per host). The bridge
# lives inside the controller's namespace: the root namespace gets no address and no route,
# and cluster traffic never leaves the namespaces made here. munged runs in the root
# namespace; its Unix socket serves every namespace. The file system is shared by all nodes:
# a program or file a job uses must be given by an absolute path valid on this machine.
#
#   cluster.sh install [PKG...]    apt-get what the cluster needs (and PKG...), if missing
#   cluster.sh up [N]              start ctl + node1..nodeN (1..8, default 2), wait until idle
#   cluster.sh exec NODE CMD...    run CMD in NODE's namespace (NODE = ctl | node1..nodeN), with
#                                  its hostname and SLURM_CONF set: exec ctl srun -N2 hostname
#   cluster.sh status              namespaces, daemons, sinfo, squeue
#   cluster.sh down                cancel jobs, stop the daemons, delete the namespaces
#
# Environment: RHPC_SLURM_BASE (state, config and logs; default /tmp/rayhpc-slurm),
# RHPC_SLURM_TIMEOUT (seconds `up` waits for the nodes to be idle; default 30).
set -euo pipefail

base=${RHPC_SLURM_BASE:-/tmp/rayhpc-slurm}
conf=$base/slurm.conf
timeout=${RHPC_SLURM_TIMEOUT:-30}
max_nodes=8
# Addresses: ctl = 10.87.0.1 (on the bridge), nodeI = 10.87.0.(10+I). They exist only inside
# the namespaces below, never in the root namespace.
net=10.87.0
bridge=rhpcbr0
packages=(slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev iproute2 util-linux)

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
ns() { echo "rhpc-$1"; }                                   # rhpc-ctl, rhpc-node1, ...
our_namespaces() { ip netns list 2>/dev/null | awk '$1 ~ /^rhpc-/ { print $1 }'; }
in_ctl() { SLURM_CONF=$conf ip netns exec "$(ns ctl)" "$@"; }

usage() {   # the usage lines of the header; to stderr unless asked for
  local text
  text="usage:"$'\n'$(sed -n '/^#   cluster.sh install/,/^# RHPC_SLURM_TIMEOUT/p' "$0" | sed 's/^# \{0,1\}//')
  if [ "${1:-2}" = 0 ]; then echo "$text"; else echo "$text" >&2; fi
  exit "${1:-2}"
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, daemons)"; }

# The pid in FILE if that process is alive and is the program NAME, else nothing.
live_pid() {
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 0
  pid=$(tr -dc 0-9 < "$file")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && echo "$pid"
  return 0
}

pid_file_of() {   # the pid file of the daemon behind a node name
  case $1 in
    ctl) echo "$base/slurmctld.pid" ;;
    *) echo "$base/slurmd-$1.pid" ;;
  esac
}

log_tail() {      # the end of every log of the cluster, for error messages
  local f
  for f in "$base"/log/*.log; do
    [ -f "$f" ] || continue
    echo "--- tail of $f"
    tail -n 15 "$f"
  done
}

# ---------------------------------------------------------------------------------- install

cmd_install() {
  need_root
  local missing=() p
  for p in "${packages[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "packages already installed"
    return 0
  fi
  say "installing: ${missing[*]}"
  # apt must not start the daemons (this script starts its own, with its own config): the
  # standard policy-rc.d veto, added for the install only if the machine has none.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  mkdir -p "$base"
  local log=$base/install.log
  apt-get -o DPkg::Lock::Timeout=600 update > "$log" 2>&1 || die "apt-get update failed:"$'\n'"$(tail -n 20 "$log")"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y "${missing[@]}" >> "$log" 2>&1 \
    || die "apt-get install failed for: ${missing[*]}"$'\n'"$(tail -n 20 "$log")"
  say "installed: ${missing[*]} (apt's output: $log)"
}

# --------------------------------------------------------------------------------------- up

write_config() {
  local n=$1 cpus mem i
  # Every node claims all the machine's cores and all its memory: the nodes SHARE the physical
  # cores (and memory), nothing is partitioned. Enough for tests of placement and launch; not
  # for performance figures.
  cpus=$(nproc)
  mem=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
  {
    cat <<EOF
# Written by slurm/cluster.sh up $n: the namespace cluster of rayhpc's tests.
ClusterName=rayhpc
SlurmctldHost=ctl($net.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$base/state
SlurmctldPidFile=$base/slurmctld.pid
SlurmctldLogFile=$base/log/slurmctld.log
# Per node (%n): the nodes share this file system, so anything a slurmd writes must differ.
SlurmdSpoolDir=$base/spool/%n
SlurmdPidFile=$base/slurmd-%n.pid
SlurmdLogFile=$base/log/slurmd-%n.log
# The pmix plugin makes \$TmpFS/spmix_appdir_<uid>_<job>.<step> on every node; with one /tmp
# for all, the second node's step fails ("File exists"). So a TmpFS per node.
TmpFS=$base/tmp/%n
# No cgroups: process tracking by /proc, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Schedule a batch job as soon as it is submitted (default: up to 3 s later).
SchedulerParameters=batch_sched_delay=0
# Debian's Open MPI speaks PMIx only (not pmi2); MPICH would need --mpi=pmi2.
MpiDefault=pmix
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
# The nodes' real hardware (1 socket of nproc cores) differs from what is declared below.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
# CPUs = nproc of the machine on EVERY node: the nodes share the same physical cores.
EOF
    for i in $(seq 1 "$n"); do
      echo "NodeName=node$i NodeAddr=$net.$((10 + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$conf"
  # `ip netns exec` mounts a fresh /sys, so /sys/fs/cgroup is empty inside the namespaces and
  # slurmd's cgroup autodetection fails ("No filesystem mounted on /sys/fs/cgroup"). Naming
  # the plugin skips the detection; nothing uses cgroups with linuxproc + task/none.
  printf '# Written by slurm/cluster.sh\nCgroupPlugin=cgroup/v1\nCgroupAutomount=no\n' > "$base/cgroup.conf"
}

write_hosts() {   # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts
  local name=$1 n=$2 i dir
  dir=/etc/netns/$(ns "$name")
  mkdir -p "$dir"
  {
    echo "127.0.0.1 localhost"
    echo "$net.1 ctl"
    for i in $(seq 1 "$n"); do echo "$net.$((10 + i)) node$i"; done
  } > "$dir/hosts"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0                                # one runs already: use it, and never stop it
  fi
  [ -x /usr/sbin/munged ] || die "munged is not installed: run '$0 install'"
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged \
    || die "munged failed to start: $(tail -n 5 /var/log/munge/munged.log 2>/dev/null)"
  local _
  for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || die "munged started but does not answer"
  cp /run/munge/munged.pid "$base/munged.pid"   # we started it: `down` stops it
}

make_namespaces() {
  local n=$1 i s ctl
  ctl=$(ns ctl)
  ip netns add "$ctl" || die "cannot create network namespace $ctl"
  write_hosts ctl "$n"
  ip -n "$ctl" link set lo up
  ip -n "$ctl" link add "$bridge" type bridge
  ip -n "$ctl" addr add "$net.1/24" dev "$bridge"
  ip -n "$ctl" link set "$bridge" up
  for i in $(seq 1 "$n"); do
    s=$(ns "node$i")
    ip netns add "$s" || die "cannot create network namespace $s"
    write_hosts "node$i" "$n"
    ip -n "$s" link set lo up
    # eth0 in the node, its peer rhpcvI in ctl on the bridge
    ip -n "$s" link add eth0 type veth peer name "rhpcv$i" netns "$ctl"
    ip -n "$s" addr add "$net.$((10 + i))/24" dev eth0
    ip -n "$s" link set eth0 up
    ip -n "$ctl" link set "rhpcv$i" master "$bridge" up
  done
}

# Start DAEMON (slurmctld or slurmd) in the namespace of NAME, with hostname NAME. It
# daemonizes; its UTS namespace (the hostname) stays with it and every task it starts.
start_daemon() {
  local name=$1 daemon=$2
  ip netns exec "$(ns "$name")" unshare --uts sh -c 'hostname "$1" && exec "$2" -f "$3"' sh "$name" "$daemon" "$conf" \
    || die "$daemon on $name failed to start (exit $?)"$'\n'"$(log_tail)"
}

# Nodes in a usable state, as the controller sees them.
nodes_up() { in_ctl sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|alloc|mix|comp)$/' | sort -u | wc -l; }
nodes_idle() { in_ctl sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l; }

cmd_up() {
  need_root
  local n=${1:-2} i p t0
  [[ $n =~ ^[1-9][0-9]*$ ]] && [ "$n" -le $max_nodes ] || die "node count must be 1..$max_nodes, not '$n'"
  [[ $timeout =~ ^[1-9][0-9]*$ ]] || die "RHPC_SLURM_TIMEOUT must be a whole number of seconds, not '$timeout'"
  for p in slurmctld slurmd sinfo munge munged ip unshare nsenter; do
    have "$p" || [ -x "/usr/sbin/$p" ] || die "$p not found: run '$0 install' first"
  done
  if [ -n "$(our_namespaces)" ]; then
    if [ "$(cat "$base/nodes" 2>/dev/null)" = "$n" ] && [ -f "$conf" ] && [ "$(nodes_up)" = "$n" ]; then
      say "already up: ctl + $n nodes (SLURM_CONF=$conf)"
      return 0
    fi
    say "a cluster is already here ($(our_namespaces | sort | tr '\n' ' ')); tearing it down first"
    cmd_down
  fi
  t0=$(date +%s.%N)
  rm -rf "$base/state" "$base/spool" "$base/tmp" "$base/log"
  mkdir -p "$base/state" "$base/log"
  for i in $(seq 1 "$n"); do mkdir -p "$base/spool/node$i" "$base/tmp/node$i"; done
  write_config "$n"
  start_munge
  make_namespaces "$n"
  start_daemon ctl slurmctld
  for i in $(seq 1 "$n"); do start_daemon "node$i" slurmd; done
  local deadline=$((SECONDS + timeout))
  until [ "$(nodes_idle)" = "$n" ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster.sh: error: after ${timeout} s, $(nodes_idle) of $n nodes idle; sinfo says:" >&2
      in_ctl sinfo -N -l >&2 2>&1 || echo "(the controller does not answer)" >&2
      log_tail >&2
      echo "cluster.sh: the cluster is left as it is for a look; '$0 down' removes it" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$n" > "$base/nodes"
  say "up: ctl ($net.1) + node1..node$n ($net.11..$net.$((10 + n))), all idle after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s"
  say "clients: $0 exec ctl srun ...   (SLURM_CONF=$conf)"
}

# ------------------------------------------------------------------------------------- exec

cmd_exec() {
  need_root
  [ $# -ge 2 ] || { echo "cluster.sh: exec needs a node and a command" >&2; usage; }
  local name=$1 pid
  shift
  [[ $name = ctl || $name =~ ^node[1-9][0-9]*$ ]] || die "node must be ctl or nodeI, not '$name'"
  ip netns list | awk '{ print $1 }' | grep -qx "$(ns "$name")" || die "no namespace $(ns "$name"): is the cluster up ('$0 up N')?"
  local enter=()
  pid=$(live_pid "$(pid_file_of "$name")" "$([ "$name" = ctl ] && echo slurmctld || echo slurmd)")
  if [ -n "$pid" ]; then
    enter=(nsenter "--uts=/proc/$pid/ns/uts" --)  # the node's hostname: that of its daemon
  else
    echo "cluster.sh: warning: the daemon of $name is not running; running without its hostname" >&2
  fi
  SLURM_CONF=$conf exec ip netns exec "$(ns "$name")" "${enter[@]}" "$@"
}

# ----------------------------------------------------------------------------------- status

cmd_status() {
  need_root
  local nss name pid
  nss=$(our_namespaces | sort)
  if [ -z "$nss" ]; then
    say "down (no rhpc-* namespaces)"
    return 3
  fi
  say "namespaces: $(echo "$nss" | tr '\n' ' ')"
  for s in $nss; do
    name=${s#rhpc-}
    pid=$(live_pid "$(pid_file_of "$name")" "$([ "$name" = ctl ] && echo slurmctld || echo slurmd)")
    echo "  $name: $([ -n "$pid" ] && echo "daemon pid $pid" || echo "NO DAEMON")"
  done
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "  munged: running$([ -n "$(live_pid "$base/munged.pid" munged)" ] && echo ' (started by cluster.sh)')"
  else
    echo "  munged: NOT RUNNING"
  fi
  in_ctl sinfo -N -l || echo "cluster.sh: the controller does not answer" >&2
  in_ctl squeue || true
}

# ------------------------------------------------------------------------------------- down

# SIGTERM a pid, wait up to 5 s, then SIGKILL.
stop_pid() {
  local pid=$1 _
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_down() {
  need_root
  local nss s name pid pids _ f
  nss=$(our_namespaces)
  if echo "$nss" | grep -qx "$(ns ctl)" && [ -f "$conf" ] && [ -n "$(live_pid "$base/slurmctld.pid" slurmctld)" ]; then
    local jobs
    jobs=$(timeout 10 env SLURM_CONF="$conf" ip netns exec "$(ns ctl)" squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      timeout 10 env SLURM_CONF="$conf" ip netns exec "$(ns ctl)" scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 30); do
        [ -z "$(timeout 5 env SLURM_CONF="$conf" ip netns exec "$(ns ctl)" squeue -h -t R,CG -o %A 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  # The daemons, by their pid files: the slurmds first, then the controller.
  for f in "$base"/slurmd-*.pid; do
    [ -f "$f" ] || continue
    pid=$(live_pid "$f" slurmd)
    if [ -n "$pid" ]; then stop_pid "$pid"; fi
    rm -f "$f"
  done
  pid=$(live_pid "$base/slurmctld.pid" slurmctld)
  if [ -n "$pid" ]; then stop_pid "$pid"; fi
  rm -f "$base/slurmctld.pid"
  # Whatever is still in our namespaces (a slurmstepd ignores SIGTERM; tasks; commands of
  # `exec`) was started through this script: SIGKILL it, by pid.
  for s in $nss; do
    pids=$(ip netns pids "$s" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      say "killing what is left in $s: $(for p in $pids; do printf '%s(%s) ' "$p" "$(cat /proc/"$p"/comm 2>/dev/null)"; done)"
      # shellcheck disable=SC2086
      kill -9 $pids 2>/dev/null || true
    fi
  done
  for s in $nss; do
    for _ in $(seq 1 50); do
      [ -z "$(ip netns pids "$s" 2>/dev/null)" ] && break
      sleep 0.1
    done
    ip netns del "$s" || echo "cluster.sh: warning: could not delete namespace $s" >&2
  done
  rm -rf /etc/netns/rhpc-*
  if [ -d /etc/netns ]; then rmdir --ignore-fail-on-non-empty /etc/netns; fi
  pid=$(live_pid "$base/munged.pid" munged)
  if [ -n "$pid" ]; then
    stop_pid "$pid"
    say "stopped munged (pid $pid), which cluster.sh had started"
  fi
  rm -f "$base/munged.pid" "$base/nodes"
  if [ -n "$nss" ]; then say "down"; else say "down (nothing was up)"; fi
}

# ------------------------------------------------------------------------------------- main

# The base goes into slurm.conf unquoted and `up` empties directories under it.
[[ $base =~ ^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$ && $base != *..* ]] \
  || die "RHPC_SLURM_BASE must be an absolute path other than / (letters, digits, . _ - /), not '$base'"
case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  up) [ $# -le 2 ] || usage; cmd_up "${2:-2}" ;;
  exec) shift; cmd_exec "$@" ;;
  status) cmd_status ;;
  down) cmd_down ;;
  -h | --help | help) usage 0 ;;
  *) usage ;;
esac
