#!/usr/bin/env bash
# tests/bench/isolation.sh: the cost of isolation (issue 5's benchmark).
#
#   CARGO_TARGET_DIR=/work/target-bench cargo build --release --bins
#   sudo BERTH_BIN_DIR=/work/target-bench/release bash tests/bench/isolation.sh
#
# Run by hand, as root (not part of the test suite: it measures, it does not assert).
#   1. launch latency of `berth run -- true` with every isolator on (--isolation all) vs only
#      cgroups + namespaces (--isolation cgroups,namespaces), N_SEQ interleaved runs on two agents
#      started side by side in this run: p50/p90/mean and the ratio all/cgroups;
#   2. the cost of usage collection: N_USAGE detached `sleep` tasks on the "all" agent, then
#      N_SCRAPE scrapes each of /metrics and /monitor/statistics: mean and p50 ms per scrape, and
#      per container.
# Everything is loopback-only and named berth-bench-iso-<pid>; both agents are stopped (SIGTERM,
# which kills their tasks) and their dirs removed on every exit path.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TAG="berth-bench-iso-$$"
N_SEQ=${N_SEQ:-60}
N_USAGE=${N_USAGE:-500}
N_SCRAPE=${N_SCRAPE:-20}
BIN_DIR=${BERTH_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}
BERTH="$BIN_DIR/berth"
WORK=/tmp/$TAG

say() { printf '[bench-iso %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
# start_agent runs in a command substitution (a subshell): it records each agent's pid in a file,
# which is what cleanup reads. Agents end their tasks on SIGTERM; anything left is killed by pid.
cleanup() {
  local pidfile pid
  for pidfile in "$WORK"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pidfile in "$WORK"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 1 1200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "agent $pid did not stop within 120 s of SIGTERM: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # shims (and, through their parent-death signal, containers) of an agent that was killed
  for pid in $(pgrep -f "$WORK/" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$BERTH" ] || { echo "no $BERTH: build with cargo build --release --bins" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl missing" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_agent() { # NAME ISOLATION -> prints the URL
  local name=$1 isolation=$2 port
  port=$(free_port)
  mkdir -p "$WORK/$name/work" "$WORK/$name/run"
  "$BERTH" agent --dev --listen "127.0.0.1:$port" --work-dir "$WORK/$name/work" \
    --runtime-dir "$WORK/$name/run" --cgroup-base "$TAG-$name" --isolation "$isolation" \
    --resources 'cpus:1000;mem:1000000' --default-pids-max 64 \
    >"$WORK/$name.log" 2>&1 &
  echo $! >"$WORK/$name.pid"
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && { echo "http://127.0.0.1:$port"; return; }
    sleep 0.1
  done
  echo "agent $name did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1
}

stats() { # FILE of ms values -> "p50 p90 mean"
  sort -n "$1" | awk '{ v[NR] = $1; s += $1 }
    END { i = int(NR * 0.5) + 1; if (i > NR) i = NR; j = int(NR * 0.9) + 1; if (j > NR) j = NR;
          printf "%.2f %.2f %.2f", v[i], v[j], s / NR }'
}

ms_since() { # START (EPOCHREALTIME) -> ms
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f\n", (b-a)*1000}'
}

mkdir -p "$WORK"
ALL=$(start_agent all all)
CG=$(start_agent cg cgroups,namespaces)
say "agents: all isolators at $ALL, cgroups+namespaces at $CG"

# 1. launch latency, interleaved
for url in "$ALL" "$CG"; do "$BERTH" --agent "$url" run --cpus 0.1 --mem 16M -- true >/dev/null; done
: >"$WORK/all.ms"; : >"$WORK/cg.ms"
say "latency: $N_SEQ interleaved launches per agent"
for i in $(seq 1 "$N_SEQ"); do
  t=$EPOCHREALTIME; "$BERTH" --agent "$ALL" run --cpus 0.1 --mem 16M -- true >/dev/null; ms_since "$t" >>"$WORK/all.ms"
  t=$EPOCHREALTIME; "$BERTH" --agent "$CG" run --cpus 0.1 --mem 16M -- true >/dev/null; ms_since "$t" >>"$WORK/cg.ms"
done
read -r a50 a90 amean <<<"$(stats "$WORK/all.ms")"
read -r c50 c90 cmean <<<"$(stats "$WORK/cg.ms")"

# 2. usage collection with many containers
say "usage: starting $N_USAGE detached tasks"
for i in $(seq 1 "$N_USAGE"); do
  "$BERTH" --agent "$ALL" run -d --cpus 0.01 --mem 8M --name "u$i" -- sleep 3600 >/dev/null
done
running=$(curl -fs "$ALL/monitor/statistics" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
: >"$WORK/metrics.ms"; : >"$WORK/monitor.ms"
for i in $(seq 1 "$N_SCRAPE"); do
  t=$EPOCHREALTIME; curl -fs "$ALL/metrics" >/dev/null; ms_since "$t" >>"$WORK/metrics.ms"
  t=$EPOCHREALTIME; curl -fs "$ALL/monitor/statistics" >/dev/null; ms_since "$t" >>"$WORK/monitor.ms"
done
read -r m50 m90 mmean <<<"$(stats "$WORK/metrics.ms")"
read -r s50 s90 smean <<<"$(stats "$WORK/monitor.ms")"

echo
echo "================ berth isolation benchmark ($(nproc) cpus, load $(cut -d' ' -f1 /proc/loadavg)) ================"
printf '%-44s %9s %9s %9s\n' "launch latency, berth run -- true (ms)" p50 p90 mean
printf '%-44s %9s %9s %9s\n' "  --isolation all" "$a50" "$a90" "$amean"
printf '%-44s %9s %9s %9s\n' "  --isolation cgroups,namespaces" "$c50" "$c90" "$cmean"
printf '%-44s %9s\n' "  ratio all / cgroups (p50)" "$(awk -v a="$a50" -v c="$c50" 'BEGIN {printf "%.2fx", a/c}')"
echo
printf '%-44s %9s %9s %9s\n' "usage scrape with $running containers (ms)" p50 p90 mean
printf '%-44s %9s %9s %9s\n' "  GET /metrics" "$m50" "$m90" "$mmean"
printf '%-44s %9s %9s %9s\n' "  GET /monitor/statistics" "$s50" "$s90" "$smean"
printf '%-44s %9s\n' "  /metrics per container (us, p50)" "$(awk -v m="$m50" -v n="$running" 'BEGIN {printf "%.1f", m*1000/(n>0?n:1)}')"
