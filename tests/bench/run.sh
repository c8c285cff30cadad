#!/usr/bin/env bash
# tests/bench/run.sh: berth vs crun/runc micro-benchmark (launch latency, launch throughput, RSS).
#
# Run by hand, as root, on a quiet machine (NOT part of the test suite):
#
#   CARGO_TARGET_DIR=/work/target-bench cargo build --release --bins
#   sudo BERTH_BIN_DIR=/work/target-bench/release bash tests/bench/run.sh
#
# Needs: berth + berth-executor (release build), crun, runc (optional), busybox-static, jq, curl,
# python3, util-linux (unshare). Debian: apt-get install crun runc busybox-static jq curl util-linux
# (all already in tests/install-deps.sh; hyperfine is not used: the timing loop is our own).
#
# Environment knobs (defaults in brackets):
#   BERTH_BIN_DIR   directory holding berth and berth-executor [$CARGO_TARGET_DIR/release, else
#                   <repo>/target/release]
#   N_SEQ           sequential launches per runtime for the latency phase [100]
#   N_CONC          concurrent launches for the throughput phase [100]
#   N_RSS           detached `sleep 600` tasks for the loaded-RSS phase [100]
#   OUT             directory for raw results, the agent's log and summary.txt
#                   [/tmp/berth-bench-<pid>-results]; kept after the run
#
# What it does (everything uses unique names berth-bench-<pid>*, loopback only):
#   1. latency: N_SEQ sequential, interleaved iterations of
#        berth run --cpus 1 --mem 64M -- true             (agent: --resources 'cpus:200;mem:100000')
#        unshare -m sh -c 'umount /sys/fs/cgroup/unified; crun run -b <bundle> <id>'
#        runc run -b <bundle> <id>                        (runc copes with the hybrid layout as is)
#        unshare -m sh -c 'umount /sys/fs/cgroup/unified; true'   (the crun wrapper's own cost)
#        unshare -m true                                  (bare unshare cost)
#      each timed with bash's $EPOCHREALTIME (no fork for the clock) -> p50/p99/min/max/mean.
#      The bundle: busybox-static rootfs (/bin/busybox, /bin/true -> busybox), `crun spec`, edited to
#      run /bin/true, terminal false, namespaces pid/mount/uts/ipc/network, memory 64M, cpu quota
#      100000/100000, pids 4096 (what berth sets for --cpus 1 --mem 64M).
#      berth's time is broken down per run from the agent's JSON log (subscribe, STARTING, cgroups,
#      shim, RUNNING, exit, FINISHED) and the CLI's start/end times.
#   2. throughput: N_CONC launches started at once (background + wait): berth run, crun, runc.
#   3. RSS: agent VmRSS idle (fresh) and after phases 1-2; N_RSS `berth run -d -- sleep 600`, then agent
#      VmRSS and berth-executor VmRSS (mean/max; RssAnon and Pss too) of the processes whose cmdline
#      names our runtime dir, split into shims and container inits (the init is a fork of the shim,
#      same cmdline, parent = the shim); then kill them all, stop the agent (SIGTERM), and verify
#      nothing is left.
#   4. summary table with ratios and the targets (launch p50 <= 2x crun, agent RSS < 30 MB idle,
#      shim RSS < 2 MB).
# Exit code: 0 when the benchmark ran and left nothing behind (targets missed are reported, not
# failed); 1 on a setup failure or leftovers.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TAG="berth-bench-$$"
N_SEQ=${N_SEQ:-100}
N_CONC=${N_CONC:-100}
N_RSS=${N_RSS:-100}
BIN_DIR=${BERTH_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}
OUT=${OUT:-/tmp/$TAG-results}
WORK=/tmp/$TAG                   # agent work/runtime dirs, bundles, crun/runc state
BERTH="$BIN_DIR/berth"
AGENT_PID=""
BG_PIDS=()

say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, cgroups)"
[ -x "$BERTH" ] && [ -x "$BIN_DIR/berth-executor" ] \
  || die "no berth/berth-executor in $BIN_DIR: build with 'cargo build --release --bins' or set BERTH_BIN_DIR"
for c in crun jq curl python3 unshare busybox; do
  command -v "$c" >/dev/null || die "'$c' not found (apt-get install crun jq curl python3 util-linux busybox-static)"
done
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamic: install busybox-static"; fi
HAVE_RUNC=0
command -v runc >/dev/null && HAVE_RUNC=1

mkdir -p "$OUT" "$WORK"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
AGENT_WORK=$WORK/agent-work
RUNTIME=$WORK/agent-run
CRUN_ROOT=$WORK/crun-state
RUNC_ROOT=$WORK/runc-state
BUNDLE=$WORK/bundle
AGENT_LOG=$OUT/agent.log
MEM_CG=$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)
CGROUP_HIER=(/sys/fs/cgroup/*/)
CRUN_WRAP="umount /sys/fs/cgroup/unified 2>/dev/null; exec crun --root $CRUN_ROOT run -b $BUNDLE"

# ---------------------------------------------------------------- cleanup (every exit path)
shim_pids() { # berth-executor processes whose cmdline names OUR runtime dir
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *berth-executor*"--config $RUNTIME/"*) echo "${p#/proc/}" ;; esac
  done
}
our_cgroups() { # cgroup dirs named after this run, deepest first
  local h
  for h in "${CGROUP_HIER[@]}" "/sys/fs/cgroup/memory${MEM_CG}/"; do
    [ -d "$h" ] || continue
    find "$h" -maxdepth 2 -type d \( -name "$TAG" -o -name "$TAG-*" \) 2>/dev/null
  done | sort -u | while read -r d; do find "$d" -depth -type d; done
}
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for p in "${BG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    say "cleanup: stopping the agent (pid $AGENT_PID)"
    kill -TERM "$AGENT_PID"
    for _ in $(seq 300); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
  fi
  if [ -d "$CRUN_ROOT" ]; then
    for id in $(unshare -m sh -c "umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $CRUN_ROOT list -q" 2>/dev/null); do
      unshare -m sh -c "umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $CRUN_ROOT delete -f $id" 2>/dev/null
    done
  fi
  if [ -d "$RUNC_ROOT" ] && [ "$HAVE_RUNC" = 1 ]; then
    for id in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do runc --root "$RUNC_ROOT" delete -f "$id" 2>/dev/null; done
  fi
  for p in $(shim_pids); do say "cleanup: killing leftover shim $p"; kill -KILL "$p" 2>/dev/null; done
  sleep 0.2
  for d in $(our_cgroups); do rmdir "$d" 2>/dev/null; done
  if grep -q " $WORK" /proc/self/mountinfo; then
    say "cleanup: mounts remain under $WORK; not removing it"
  else
    rm -rf "$WORK"
  fi
  say "results and agent log kept in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ns() { local t=$EPOCHREALTIME; echo "${t/./}000"; }  # realtime ns (µs resolution), no fork

# ---------------------------------------------------------------- the OCI bundle
say "building the busybox bundle in $BUNDLE"
mkdir -p "$BUNDLE/rootfs/bin" "$CRUN_ROOT" "$RUNC_ROOT"
cp "$BUSYBOX" "$BUNDLE/rootfs/bin/busybox"
ln -s busybox "$BUNDLE/rootfs/bin/true"
(cd "$BUNDLE" && crun spec)
jq '.process.terminal = false
  | .process.args = ["/bin/true"]
  | .linux.namespaces = [{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"ipc"},{"type":"network"}]
  | .linux.resources.memory = {"limit": 67108864}
  | .linux.resources.cpu = {"quota": 100000, "period": 100000}
  | .linux.resources.pids = {"limit": 4096}' "$BUNDLE/config.json" >"$BUNDLE/config.json.new"
mv "$BUNDLE/config.json.new" "$BUNDLE/config.json"
cp "$BUNDLE/config.json" "$OUT/bundle-config.json"
unshare -m sh -c "$CRUN_WRAP $TAG-crun-probe" || die "crun cannot run the bundle"
if [ "$HAVE_RUNC" = 1 ] && ! runc --root "$RUNC_ROOT" run -b "$BUNDLE" "$TAG-runc-probe" </dev/null; then
  say "runc cannot run the bundle here: skipping runc"; HAVE_RUNC=0
fi

# ---------------------------------------------------------------- the agent
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
say "starting the agent on $URL (cgroup base $TAG, log $AGENT_LOG)"
"$BERTH" agent --dev --work-dir "$AGENT_WORK" --runtime-dir "$RUNTIME" --listen "127.0.0.1:$PORT" \
  --cgroup-base "$TAG" --resources 'cpus:200;mem:100000' --log-format json >"$AGENT_LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 200); do
  curl -sf -o /dev/null "$URL/health" && break
  kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited at start: $(tail -5 "$AGENT_LOG")"
  sleep 0.05
done
curl -sf -o /dev/null "$URL/health" || die "the agent is not healthy after 10 s"
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
anon_kb() { awk '/^RssAnon:/{print $2}' "/proc/$1/status"; }
sleep 0.5
AGENT_RSS_IDLE=$(rss_kb "$AGENT_PID")
say "agent idle VmRSS: $AGENT_RSS_IDLE kB"

bench_run() { "$BERTH" --agent "$URL" run --cpus 1 --mem 64M "$@"; }

# ---------------------------------------------------------------- 1. latency
say "warm-up (3 of each)"
for i in 1 2 3; do
  bench_run -- true
  unshare -m sh -c "$CRUN_WRAP $TAG-crun-w$i"
  if [ "$HAVE_RUNC" = 1 ]; then runc --root "$RUNC_ROOT" run -b "$BUNDLE" "$TAG-runc-w$i" </dev/null; fi
done
SEQ_LOG_START=$(wc -l <"$AGENT_LOG")
: >"$OUT/seq.tsv"   # runtime  iteration  start_ns  end_ns  exit_code
say "latency: $N_SEQ interleaved iterations"
for i in $(seq "$N_SEQ"); do
  t0=$(now_ns); rc=0; bench_run -- true || rc=$?; t1=$(now_ns)
  printf 'berth\t%s\t%s\t%s\t%s\n' "$i" "$t0" "$t1" "$rc" >>"$OUT/seq.tsv"
  t0=$(now_ns); rc=0; unshare -m sh -c "$CRUN_WRAP $TAG-crun-s$i" || rc=$?; t1=$(now_ns)
  printf 'crun\t%s\t%s\t%s\t%s\n' "$i" "$t0" "$t1" "$rc" >>"$OUT/seq.tsv"
  if [ "$HAVE_RUNC" = 1 ]; then
    t0=$(now_ns); rc=0; runc --root "$RUNC_ROOT" run -b "$BUNDLE" "$TAG-runc-s$i" </dev/null || rc=$?; t1=$(now_ns)
    printf 'runc\t%s\t%s\t%s\t%s\n' "$i" "$t0" "$t1" "$rc" >>"$OUT/seq.tsv"
  fi
  t0=$(now_ns); rc=0; unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; true' || rc=$?; t1=$(now_ns)
  printf 'unshare+umount\t%s\t%s\t%s\t%s\n' "$i" "$t0" "$t1" "$rc" >>"$OUT/seq.tsv"
  t0=$(now_ns); rc=0; unshare -m true || rc=$?; t1=$(now_ns)
  printf 'unshare\t%s\t%s\t%s\t%s\n' "$i" "$t0" "$t1" "$rc" >>"$OUT/seq.tsv"
done
SEQ_LOG_END=$(wc -l <"$AGENT_LOG")
sed -n "$((SEQ_LOG_START + 1)),${SEQ_LOG_END}p" "$AGENT_LOG" >"$OUT/agent-seq.log"

# ---------------------------------------------------------------- 2. throughput
: >"$OUT/conc.tsv"   # runtime  n  wall_ns  failures
conc() { # name, then a command (the launch index is appended to it)
  local name=$1; shift
  local t0 t1 fails=0 p
  BG_PIDS=()
  t0=$(now_ns)
  for i in $(seq "$N_CONC"); do
    "$@" "$i" </dev/null >/dev/null 2>>"$OUT/conc-$name.err" &
    BG_PIDS+=($!)
  done
  for p in "${BG_PIDS[@]}"; do wait "$p" || fails=$((fails + 1)); done
  t1=$(now_ns)
  BG_PIDS=()
  printf '%s\t%s\t%s\t%s\n' "$name" "$N_CONC" "$((t1 - t0))" "$fails" >>"$OUT/conc.tsv"
  say "throughput: $name: $N_CONC launches in $(( (t1 - t0) / 1000000 )) ms, $fails failed"
}
berth_true() { bench_run -- true; }
crun_true() { unshare -m sh -c "$CRUN_WRAP $TAG-crun-c$1"; }
runc_true() { runc --root "$RUNC_ROOT" run -b "$BUNDLE" "$TAG-runc-c$1"; }
conc berth berth_true
conc crun crun_true
if [ "$HAVE_RUNC" = 1 ]; then conc runc runc_true; fi
sleep 1
AGENT_RSS_AFTER=$(rss_kb "$AGENT_PID")
say "agent VmRSS after the latency/throughput phases: $AGENT_RSS_AFTER kB"

# ---------------------------------------------------------------- 3. RSS with N_RSS running tasks
say "launching $N_RSS detached 'sleep 600' tasks"
: >"$OUT/detached.ids"
for i in $(seq "$N_RSS"); do
  id=$(bench_run -d --grace 0.5 --name "$TAG-s$i" -- sleep 600) || die "detached launch $i failed"
  echo "$id" >>"$OUT/detached.ids"
done
sleep 1
running=$("$BERTH" --agent "$URL" ps --json | jq '[.. | objects | select(.state? == "TASK_RUNNING")] | length')
AGENT_RSS_LOADED=$(rss_kb "$AGENT_PID")
# Each container has two berth-executor processes: the shim (the agent's child, reparented to pid 1
# if the agent restarts) and the container's init, forked from the shim without exec (pid 1 of the
# container's pid namespace; it runs the command as its child). Their cmdlines are the same; the
# init's parent is the shim.
: >"$OUT/shims.tsv"  # pid  role  VmRSS_kB  RssAnon_kB  Pss_kB
SHIMS=" $(shim_pids | tr '\n' ' ') "
for p in $SHIMS; do
  ppid=$(awk '/^PPid:/{print $2}' "/proc/$p/status" 2>/dev/null) || continue
  case "$SHIMS" in *" $ppid "*) role=init ;; *) role=shim ;; esac
  pss=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
  printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$role" "$(rss_kb "$p")" "$(anon_kb "$p")" "$pss" >>"$OUT/shims.tsv"
done
say "running tasks: $running; agent VmRSS $AGENT_RSS_LOADED kB; berth-executor processes: $(grep -c shim "$OUT/shims.tsv") shims + $(grep -c init "$OUT/shims.tsv") container inits"

say "killing the $N_RSS tasks"
BG_PIDS=()
while read -r id; do "$BERTH" --agent "$URL" kill "$id" >/dev/null 2>>"$OUT/kill.err" & BG_PIDS+=($!); done <"$OUT/detached.ids"
kill_fails=0
for p in "${BG_PIDS[@]}"; do wait "$p" || kill_fails=$((kill_fails + 1)); done
BG_PIDS=()
for _ in $(seq 300); do [ -z "$(shim_pids)" ] && break; sleep 0.1; done
say "stopping the agent"
kill -TERM "$AGENT_PID"
agent_rc=0
for _ in $(seq 300); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
wait "$AGENT_PID" || agent_rc=$?
AGENT_PID=""
left_shims=$(shim_pids | wc -l)
left_cgroups=$(our_cgroups | wc -l)
our_cgroups >"$OUT/leftover-cgroups.txt"
say "after shutdown: agent exit $agent_rc, kill failures $kill_fails, leftover shims $left_shims, leftover cgroup dirs $left_cgroups"

# ---------------------------------------------------------------- 4. report
cat >"$OUT/meta.env" <<EOF
N_SEQ=$N_SEQ
N_CONC=$N_CONC
N_RSS=$N_RSS
AGENT_RSS_IDLE=$AGENT_RSS_IDLE
AGENT_RSS_AFTER=$AGENT_RSS_AFTER
AGENT_RSS_LOADED=$AGENT_RSS_LOADED
RUNNING=$running
KILL_FAILS=$kill_fails
AGENT_RC=$agent_rc
LEFT_SHIMS=$left_shims
LEFT_CGROUPS=$left_cgroups
HAVE_RUNC=$HAVE_RUNC
LOAD_START="$LOAD_START"
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
NPROC=$(nproc)
EOF
python3 "$HERE/report.py" "$OUT" | tee "$OUT/summary.txt"
[ "$left_shims" -eq 0 ] && [ "$left_cgroups" -eq 0 ] || die "leftovers (see $OUT/leftover-cgroups.txt)"
