#!/usr/bin/env bash
# Provisions one node of the VirtualBox cluster (see README.md beside this file).
#
#   provision.sh manager MY_IP SHARE_DIR         install, start the daemon, pyswarm init,
#                                                write the join tokens to SHARE_DIR
#   provision.sh worker MANAGER_IP TOKEN_FILE    install, start the daemon, join
#   provision.sh install                         only: packages, pyswarm, the systemd unit,
#                                                busybox:latest
#   provision.sh join MANAGER_IP TOKEN_FILE [MY_IP]
#                                                only the join, on a node whose daemon runs
#                                                (what `pyswarm lab` tests run in a lab node)
#
# Environment: PYSWARM_SRC (the pyswarm checkout, default: two folders up from here),
# PYSWARM (the CLI, default: pyswarm on PATH), JOIN_WAIT (seconds to wait for the token
# file, default 600). Every step can run again: a node already in the cluster stays in it.
set -euo pipefail

# Vagrant runs a copy of this script from /tmp: the checkout is found through PYSWARM_SRC.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${PYSWARM_SRC:-$(cd "$here/../.." && pwd)}
PYSWARM=${PYSWARM:-pyswarm}
PORT=2377
VENV=/opt/pyswarm
# The engine's kernel tools (nftables, iproute2, util-linux), a static busybox for the
# base image, libseccomp for the seccomp profile, and Python for pyswarm itself.
PACKAGES=(python3 python3-venv nftables iproute2 util-linux busybox-static libseccomp2)

log() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: %s\n' "$*" >&2; exit 1; }

install_pyswarm() {
  log "installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
  log "installing pyswarm from $SRC into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "$SRC"
  ln -sf "$VENV/bin/pyswarm" /usr/local/bin/pyswarm
  log "starting the daemon (systemd unit pyswarm.service)"
  install -m 0644 "$SRC/examples/virtualbox/pyswarm.service" /etc/systemd/system/pyswarm.service
  systemctl daemon-reload
  systemctl enable --now pyswarm.service
  wait_daemon
  # Images are not distributed by the cluster yet: every node builds its own base image.
  bash "$SRC/examples/images/busybox/build-base.sh" "$PYSWARM"
}

wait_daemon() {
  for _ in $(seq 1 100); do
    "$PYSWARM" version >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  die "the pyswarm daemon does not answer (journalctl -u pyswarm)"
}

# The address of this node on the way to ADDR: the host-only network's, not NAT's eth0.
address_towards() {
  ip -4 route get "$1" | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1
}

# Runs a pyswarm command; an "already part of a cluster" refusal counts as done.
idempotent() {
  local out
  if out=$("$PYSWARM" "$@" 2>&1); then
    printf '%s\n' "$out"
  elif grep -q "already part of a cluster" <<<"$out"; then
    log "this node is already part of a cluster"
  else
    printf '%s\n' "$out" >&2
    return 1
  fi
}

init_manager() {
  local my_ip=$1 share=$2
  log "pyswarm init --advertise-addr $my_ip"
  idempotent init --advertise-addr "$my_ip" --listen-addr "$my_ip:$PORT"
  mkdir -p "$share"
  for role in worker manager; do
    "$PYSWARM" join-token -q "$role" > "$share/$role.token.tmp"
    chmod 600 "$share/$role.token.tmp"
    mv "$share/$role.token.tmp" "$share/$role.token"
  done
  log "join tokens written to $share"
}

join_cluster() {
  local manager=$1 token_file=$2 my_ip=${3:-}
  local waited=0
  while [ ! -s "$token_file" ]; do
    [ "$waited" -ge "${JOIN_WAIT:-600}" ] && die "no token in $token_file after ${waited}s"
    [ "$waited" -eq 0 ] && log "waiting for the manager's token in $token_file"
    sleep 2
    waited=$((waited + 2))
  done
  my_ip=${my_ip:-$(address_towards "$manager")}
  [ -n "$my_ip" ] || die "no route from this node to the manager $manager"
  wait_daemon
  log "pyswarm join --advertise-addr $my_ip $manager:$PORT"
  idempotent join --token "$(tr -d '[:space:]' < "$token_file")" --advertise-addr "$my_ip" \
    "$manager:$PORT"
  log "joined the cluster of $manager"
}

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 1 ] || usage
mode=$1
shift
case "$mode" in
  install) install_pyswarm ;;
  manager) [ $# -eq 2 ] || usage; install_pyswarm; init_manager "$@" ;;
  worker)  [ $# -eq 2 ] || usage; install_pyswarm; join_cluster "$@" ;;
  join)    if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage; fi; join_cluster "$@" ;;
  *) usage ;;
esac
