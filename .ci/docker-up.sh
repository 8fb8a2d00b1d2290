#!/usr/bin/env bash
# Makes sure what the Docker tests need is there: a Docker engine that
# answers (Debian's docker.io, installed as root when dockerd is missing,
# and dockerd --iptables=false started in the background when nothing
# answers), git and its http-backend, and Debian's busybox-static (the test
# job image is FROM scratch plus /bin/busybox).
set -euo pipefail
log=/tmp/paas-runner-dockerd.log
up() { timeout 10 docker info >/dev/null 2>&1; }
missing=()
command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || missing+=(docker.io)
# (no `--list | grep -q` here: under pipefail, grep quitting early makes
# busybox die of SIGPIPE and the check fail at random)
[ -x /bin/busybox ] && /bin/busybox cat </dev/null >/dev/null 2>&1 || missing+=(busybox-static)
[ -x /usr/lib/git-core/git-http-backend ] || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "docker-up: missing ${missing[*]} and not root. Run \`sudo make docker-up\` (it installs them and starts dockerd), or install them yourself: \`sudo apt-get install ${missing[*]}\`." >&2
    exit 1
  fi
  echo "docker-up: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
up && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "docker-up: no Docker engine answers and this user is not root. Run \`sudo make docker-up\` (it starts dockerd), or start Docker yourself (\`sudo systemctl start docker\`) and give this user its socket (\`sudo usermod -aG docker $(id -un)\`, then log in again)." >&2
  exit 1
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
