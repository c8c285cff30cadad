#!/usr/bin/env bash
# tests/bench/oci.sh: berth as an OCI runtime vs crun vs runc, on one busybox `true` bundle.
#
# Run by hand, as root, on a quiet machine (NOT part of the test suite):
#
#   CARGO_TARGET_DIR=/work/target-oci cargo build --release -p berth-agent -p berth-executor --bins
#   sudo BERTH_BIN_DIR=/work/target-oci/release bash tests/bench/oci.sh
#
# Needs: berth + berth-executor (release), crun, runc (optional), busybox-static, jq, python3,
# util-linux (unshare). Debian: apt-get install crun runc busybox-static jq util-linux.
#
# Knobs: BERTH_BIN_DIR [$CARGO_TARGET_DIR/release], N (interleaved iterations) [50],
#        OUT (results) [/tmp/berth-bench-oci-<pid>-results].
#
# Two sequences, each timed per iteration with bash's $EPOCHREALTIME, interleaved per runtime
# (berth, crun, runc, then the wrappers' own cost), all with their state root on /run (tmpfs)
# and stdio on /dev/null:
#   run:  `<rt> run -b B ID`                                    (create + start + wait + delete)
#   cycle: `<rt> create -b B ID; <rt> start ID; <rt> delete -f ID` (three invocations; the
#          container's `true` may still be running at delete, hence -f for all three)
# crun 1.8 mis-detects this hybrid host's cgroups, so (as tests/bench/run.sh) it runs under
# `unshare -m sh -c 'umount /sys/fs/cgroup/unified; exec ...'`; that wrapper's own cost is
# measured as well (`wrapper`) and subtracted for the "crun net" figure.
# The bundle: busybox-static (/bin/busybox, /bin/true -> busybox), `crun spec` edited to run
# /bin/true without a terminal, namespaces pid/mount/uts/ipc/network, memory 64M, cpu quota
# 100000/100000, pids 4096, and cgroupsPath `berth-bench-<pid>/ctr` (relative: under each
# runtime's own cgroup; the same for all three). Removed at the end.
# Output: p50/p90/mean/min per runtime and sequence, and berth's ratios to crun (net) and runc.
#
# Measured on the dev host (2 vCPUs, kernel 6.18, cgroup v1 hybrid, state on ext4 /run, quiet),
# N=100, p50: cycle (create+start+delete) berth 16.6 ms, crun 19.2 ms (15.3 net of its wrapper),
# runc 28.1 ms; run: berth 14.9 ms, crun 10.6 ms (6.0 net), runc 19.5 ms. Most of berth's spread
# (min 8.6 ms) is the first cgroup.procs write of a container waiting for an RCU grace period
# (cgroup v1's threadgroup rwsem); crun pays it too, berth overlaps it with the mounts.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TAG="berth-bench-$$"
N=${N:-50}
BIN_DIR=${BERTH_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}
OUT=${OUT:-/tmp/$TAG-oci-results}
WORK=/run/$TAG-oci
BERTH="$BIN_DIR/berth"

say() { printf '[bench-oci %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
[ -x "$BERTH" ] && [ -x "$BIN_DIR/berth-executor" ] || die "no release berth/berth-executor in $BIN_DIR"
for c in crun jq python3 unshare busybox; do command -v "$c" >/dev/null || die "'$c' not found"; done
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamic: install busybox-static"; fi
HAVE_RUNC=0
command -v runc >/dev/null && HAVE_RUNC=1

mkdir -p "$OUT" "$WORK"
BUNDLE=$WORK/bundle
B_ROOT=$WORK/berth
C_ROOT=$WORK/crun
R_ROOT=$WORK/runc
CRUN="umount /sys/fs/cgroup/unified 2>/dev/null; exec crun --root $C_ROOT"
CRUN_CYCLE="umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $C_ROOT"

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for id in $("$BERTH" oci --root "$B_ROOT" list -q 2>/dev/null); do "$BERTH" oci --root "$B_ROOT" delete -f "$id"; done
  for id in $(unshare -m sh -c "$CRUN list -q" 2>/dev/null); do unshare -m sh -c "$CRUN delete -f $id"; done
  if [ "$HAVE_RUNC" = 1 ]; then
    for id in $(runc --root "$R_ROOT" list -q 2>/dev/null); do runc --root "$R_ROOT" delete -f "$id"; done
  fi
  # The cgroup bases (relative cgroupsPath: under this shell's own cgroup in each hierarchy).
  while IFS=: read -r _ ctrls path; do
    local name=${ctrls#name=}
    for d in "/sys/fs/cgroup/${name:-unified}$path/$TAG" "/sys/fs/cgroup${path}/$TAG"; do
      [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done </proc/self/cgroup
  # crun places a relative cgroupsPath under some hierarchies' roots instead.
  for d in /sys/fs/cgroup/*/"$TAG" /sys/fs/cgroup/"$TAG"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rm -rf "$WORK"
  say "results in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ns() { local t=$EPOCHREALTIME; echo "${t/./}000"; }

say "bundle in $BUNDLE"
mkdir -p "$BUNDLE/rootfs/bin" "$B_ROOT" "$C_ROOT" "$R_ROOT"
cp "$BUSYBOX" "$BUNDLE/rootfs/bin/busybox"
ln -s busybox "$BUNDLE/rootfs/bin/true"
(cd "$BUNDLE" && crun spec)
jq --arg cg "$TAG/ctr" '.process.terminal = false
  | .process.args = ["/bin/true"]
  | .linux.namespaces = [{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"ipc"},{"type":"network"}]
  | .linux.resources.memory = {"limit": 67108864}
  | .linux.resources.cpu = {"quota": 100000, "period": 100000}
  | .linux.resources.pids = {"limit": 4096}
  | .linux.cgroupsPath = $cg' "$BUNDLE/config.json" >"$BUNDLE/config.json.new"
mv "$BUNDLE/config.json.new" "$BUNDLE/config.json"
cp "$BUNDLE/config.json" "$OUT/bundle-config.json"

b_run() { "$BERTH" oci --root "$B_ROOT" run -b "$BUNDLE" "$1"; }
c_run() { unshare -m sh -c "$CRUN run -b $BUNDLE $1"; }
r_run() { runc --root "$R_ROOT" run -b "$BUNDLE" "$1"; }
b_cycle() {
  "$BERTH" oci --root "$B_ROOT" create -b "$BUNDLE" "$1" && "$BERTH" oci --root "$B_ROOT" start "$1" \
    && "$BERTH" oci --root "$B_ROOT" delete -f "$1"
}
c_cycle() { unshare -m sh -c "$CRUN_CYCLE create -b $BUNDLE $1 && $CRUN_CYCLE start $1 && $CRUN_CYCLE delete -f $1"; }
r_cycle() { runc --root "$R_ROOT" create -b "$BUNDLE" "$1" && runc --root "$R_ROOT" start "$1" && runc --root "$R_ROOT" delete -f "$1"; }
w_run() { unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec true'; }
w_cycle() { unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; true && true && true'; }

say "probe"
b_run probe-b </dev/null >/dev/null || die "berth cannot run the bundle"
c_run probe-c </dev/null >/dev/null || die "crun cannot run the bundle"
if [ "$HAVE_RUNC" = 1 ] && ! r_run probe-r </dev/null >/dev/null; then say "runc cannot run the bundle: skipped"; HAVE_RUNC=0; fi

RUNTIMES=(berth crun wrapper)
[ "$HAVE_RUNC" = 1 ] && RUNTIMES=(berth crun runc wrapper)
: >"$OUT/oci.tsv"   # sequence runtime iteration ns rc
say "warm-up"
for i in 1 2 3; do
  for seq in run cycle; do
    b_$seq "w-$seq-b$i" </dev/null >/dev/null 2>&1 || true
    c_$seq "w-$seq-c$i" </dev/null >/dev/null 2>&1 || true
    [ "$HAVE_RUNC" = 1 ] && { r_$seq "w-$seq-r$i" </dev/null >/dev/null 2>&1 || true; }
  done
done
say "$N interleaved iterations of run and create/start/delete"
for i in $(seq "$N"); do
  for seq in run cycle; do
    for rt in "${RUNTIMES[@]}"; do
      case $rt in berth) f=b_$seq ;; crun) f=c_$seq ;; runc) f=r_$seq ;; wrapper) f=w_$seq ;; esac
      t0=$(now_ns); rc=0; $f "$seq-$rt-$i" </dev/null >/dev/null 2>>"$OUT/stderr.log" || rc=$?; t1=$(now_ns)
      printf '%s\t%s\t%s\t%s\t%s\n' "$seq" "$rt" "$i" "$((t1 - t0))" "$rc" >>"$OUT/oci.tsv"
    done
  done
done

python3 - "$OUT/oci.tsv" <<'EOF' | tee "$OUT/summary.txt"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
data = {}
fails = {}
for seq, rt, i, ns, rc in rows:
    data.setdefault((seq, rt), []).append(int(ns) / 1e6)
    if rc != "0":
        fails[(seq, rt)] = fails.get((seq, rt), 0) + 1
def pct(v, p):
    v = sorted(v); k = (len(v) - 1) * p / 100; lo = int(k); hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)
print(f"{'sequence':<8} {'runtime':<10} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8} {'min ms':>8} {'fail':>5}")
for (seq, rt), v in sorted(data.items()):
    print(f"{seq:<8} {rt:<10} {len(v):>4} {pct(v,50):>8.2f} {pct(v,90):>8.2f} {sum(v)/len(v):>8.2f} {min(v):>8.2f} {fails.get((seq, rt), 0):>5}")
print()
for seq in ("run", "cycle"):
    b = pct(data[(seq, "berth")], 50)
    c = pct(data[(seq, "crun")], 50)
    w = pct(data[(seq, "wrapper")], 50)
    line = f"{seq}: berth p50 {b:.2f} ms; crun p50 {c:.2f} ms ({c - w:.2f} ms net of its wrapper): " \
           f"berth/crun {b / c:.2f}, berth/crun-net {b / (c - w):.2f}"
    if (seq, "runc") in data:
        r = pct(data[(seq, "runc")], 50)
        line += f"; runc p50 {r:.2f} ms: berth/runc {b / r:.2f}"
    print(line)
EOF
