#!/usr/bin/env bash
# `make demo`: the engine on this node, the way a docker user would try it.
# Starts the daemon (if it is not running) and leaves it running for you to play with;
# every container the demo starts is removed again.
set -euo pipefail
P=${1:-pyswarm}
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

if ! "$P" version >/dev/null 2>&1; then
  run "$P" daemon -d
fi
cleanup() { "$P" rm -f demo-web >/dev/null 2>&1 || true; "$P" volume rm demo-data >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

run "$P" image ls
run "$P" run --rm busybox echo "hello from a container"
run "$P" run --rm -h demo busybox sh -c 'echo "pid inside: $$"; echo "hostname: $(hostname)"; echo "processes visible: $(ls /proc | grep -c "^[0-9]")"'

say "$P run -d --name demo-web -p 8081:80 -v demo-data:/www busybox sh -c '...httpd...'"
"$P" run -d --name demo-web -p 8081:80 -v demo-data:/www busybox \
  sh -c 'echo "served from $(hostname) by pyswarm" > /www/index.html; exec httpd -f -p 80 -h /www'
sleep 0.5
run "$P" ps
for i in 1 2 3; do
  say "curl -s http://127.0.0.1:8081/"
  curl -s --max-time 2 http://127.0.0.1:8081/
done
run "$P" exec demo-web ps
run "$P" logs demo-web
run "$P" stop -t 1 demo-web
run "$P" rm demo-web
say "$P run --rm -v demo-data:/data busybox cat /data/index.html   # the volume outlived the container"
"$P" run --rm -v demo-data:/data busybox cat /data/index.html

say "$P run --rm -m 16m busybox sh -c 'x=\$(head -c 64000000 /dev/zero | tr \"\\\\0\" a)'   # over its memory limit"
set +e
"$P" run --rm -m 16m busybox sh -c 'x=$(head -c 64000000 /dev/zero | tr "\0" a)'
echo "exit code: $?"
set -e

# ---- the cluster: a one-node swarm running the hello stack behind the load balancer ----
if ! "$P" node ls >/dev/null 2>&1; then
  run "$P" init
fi
run "$P" deploy -c examples/hello/stack.yml --name hello
run "$P" service ls
run "$P" service ps hello_web
for i in 1 2 3 4 5 6; do
  say "curl -s http://127.0.0.1:8080/"
  curl -s --max-time 2 http://127.0.0.1:8080/
done
run "$P" service scale hello_web=5
run "$P" service ls
say "curl http://127.0.0.1:8080/ x20 | sort | uniq -c   # spread over the 5 replicas"
for i in $(seq 20); do curl -s --max-time 2 http://127.0.0.1:8080/; done | sort | uniq -c
printf '\nThe hello stack keeps running: pyswarm stack rm hello removes it.\n'
printf '\nThe daemon keeps running (stop it with: kill $(cat %s/pyswarm.pid)).\n' "${PYSWARM_RUN:-/run/pyswarm}"
