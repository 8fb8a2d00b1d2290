#!/usr/bin/env bash
# Makes sure a Docker engine answers, for the tests that need a real one:
# installs Debian's docker.io when dockerd is missing (as root) and starts
# dockerd --iptables=false in the background when nothing answers.
set -euo pipefail
log=/tmp/paas-runner-dockerd.log
up() { timeout 10 docker info >/dev/null 2>&1; }
up && exit 0
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "docker-up: no Docker engine and not root: install docker.io and start dockerd" >&2
    exit 1
  fi
  echo "docker-up: installing docker.io" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! pgrep -x dockerd >/dev/null; then
  echo "docker-up: starting dockerd --iptables=false (log: $log)" >&2
  nohup dockerd --iptables=false >"$log" 2>&1 &
fi
for _ in $(seq 1 60); do
  up && exit 0
  sleep 1
done
echo "docker-up: dockerd did not answer within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
