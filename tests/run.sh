#!/usr/bin/env bash
# tests/run.sh: berth's whole test suite (the README's test command; `.ci/run` execs it).
#
#   bash tests/run.sh
#
# Phases:
#   1. deps   tests/install-deps.sh (Debian packages, cargo-nextest)
#   2. sweep  remove stale objects of killed earlier runs: cgroups `berth-test-<pid>-*`/`berth-t<pid>-*`
#             under this process's own cgroup in every hierarchy, netns `berth-test-*`, mounts and
#             processes under /tmp/berth-test-<pid>-* (only when <pid> is no longer alive, so a
#             concurrent run is never touched)
#   3. build  cargo build --workspace --bins (the e2e tests run target/debug/berth)
#   4. host   cargo nextest run --workspace --no-fail-fast (this host: cgroup v1 hybrid), except
#             the tests that need the VM's kernel: `vm_*` e2e tests and berth-net's ipvs_real
#             (this host's kernel has no ip_vs)
#   4b. leftovers  no test namespace, berth link, nftables table, route, cgroup or mount may
#             remain in the host's namespaces after the host tests (found ones are named, then swept)
#   5. vm     the cgroup-sensitive tests again inside a cgroup v2 microVM (tests/vm/berth-v2vm):
#             isolators' cgroups_real-* and disk_real-* (all tests: the disk quota tests need the
#             Debian kernel's quota formats) and berth-tests' e2e `cgroup_*` tests, with
#             BERTH_TEST_CGROUP=v2 so they assert they really ran on v2; and the tests only the
#             VM's kernel can run: berth-net's ipvs_real-* (all tests) and berth-tests' `vm_*`
# Every phase after the build runs even if an earlier one failed; the script exits non-zero if any
# phase failed and ends with a summary naming them.
#
# Environment knobs: BERTH_SKIP_VM=1 (skip phase 5, for quick local runs; CI never sets it),
# BERTH_VM_TIMEOUT (seconds, default 3600), BERTH_SWEEP_DRY_RUN=1 (only print what would be swept).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$PWD
START=$(date +%s)
LOGDIR=${BERTH_TEST_LOGDIR:-${CARGO_TARGET_DIR:-$REPO/target}/test-logs}
mkdir -p "$LOGDIR"

declare -a PHASES=() RESULTS=()
HOST_COUNTS="" VM_COUNTS=""
say() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
record() { PHASES+=("$1"); RESULTS+=("$2"); }

summary() {
  local failed=0 i
  echo
  echo "================ berth test suite summary ($(( $(date +%s) - START ))s) ================"
  for i in "${!PHASES[@]}"; do
    printf '  %-9s %s\n' "${PHASES[$i]}" "${RESULTS[$i]}"
    case ${RESULTS[$i]} in ok*|skipped*) ;; *) failed=1 ;; esac
  done
  [ -n "$HOST_COUNTS" ] && echo "  host tests: $HOST_COUNTS"
  [ -n "$VM_COUNTS" ] && echo "  vm tests:   $VM_COUNTS"
  echo "  logs: $LOGDIR"
  if [ "$failed" = 0 ]; then
    echo "RESULT: all phases passed"
  else
    local names=() j
    for j in "${!PHASES[@]}"; do case ${RESULTS[$j]} in ok*|skipped*) ;; *) names+=("${PHASES[$j]}") ;; esac; done
    echo "RESULT: FAILED phase(s): ${names[*]}"
  fi
  # one closing line with the test counts of both phases
  local hp hf vp vf
  hp=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$HOST_COUNTS"); hf=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$HOST_COUNTS")
  vp=$(sed -nE 's/^([0-9]+) passed.*/\1/p' <<<"$VM_COUNTS"); vf=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$VM_COUNTS")
  echo "total: $(( ${hp:-0} + ${vp:-0} )) passed, $(( ${hf:-0} + ${vf:-0} )) failed"
  return "$failed"
}

fatal() { # a phase the rest depends on failed
  record "$1" "FAILED: $2"
  summary
  exit 1
}

# ---- 1. dependencies --------------------------------------------------------------------------
say "deps: tests/install-deps.sh"
if bash tests/install-deps.sh; then record deps ok; else fatal deps "tests/install-deps.sh failed"; fi
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

# ---- 2. sweep stale test objects --------------------------------------------------------------
dry() { if [ -n "${BERTH_SWEEP_DRY_RUN:-}" ]; then echo "  (dry run) would: $*"; else "$@"; fi; }
stale_owner_dead() { # NAME -> true if NAME embeds a test pid (berth-test-<pid>-, berth-t<pid>-, -probe-<pid>, bt<pid>-) that is gone
  local pid
  pid=$(sed -nE 's/^berth-t(est)?-(probe-)?([0-9]+)([-.].*)?$/\3/p; s/^bt([0-9]+)-.*$/\1/p' <<<"$1")
  [ -z "$pid" ] && return 0 # no pid in the name: a leftover of some other kind; sweep it
  [ ! -d "/proc/$pid" ]
}
own_cgroup_dirs() { # one line per hierarchy: <mount point><own path>
  awk -v cg=/proc/self/cgroup '
    BEGIN { while ((getline l < cg) > 0) { split(l, f, ":"); id[f[2]] = f[3]; if (f[1] == "0") v2 = f[3] } }
    {
      for (i = 1; i <= NF; i++) if ($i == "-") break
      fstype = $(i + 1); opts = $(i + 3); mp = $5
      if (fstype == "cgroup2" && v2 != "") { print mp v2; next }
      if (fstype != "cgroup") next
      n = split(opts, o, ",")
      for (c in id) {
        if (c == "") continue
        m = split(c, cs, ","); ok = 1
        for (k = 1; k <= m; k++) { found = 0; for (j = 1; j <= n; j++) if (o[j] == cs[k]) found = 1; if (!found) ok = 0 }
        if (ok) { print mp id[c]; break }
      }
    }' /proc/self/mountinfo | sed 's#/$##' | sort -u
}
sweep_cgroup() { # DIR: kill everything inside, then remove the tree deepest-first
  local d=$1 pid sub
  for _ in 1 2 3 4 5; do
    local any=0
    while IFS= read -r sub; do
      [ -w "$sub/cgroup.kill" ] && dry sh -c "echo 1 > '$sub/cgroup.kill'" 2>/dev/null
      [ -e "$sub/freezer.state" ] && dry sh -c "echo THAWED > '$sub/freezer.state'" 2>/dev/null
      for pid in $(cat "$sub/cgroup.procs" 2>/dev/null); do any=1; dry kill -KILL "$pid" 2>/dev/null; done
    done < <(find "$d" -type d 2>/dev/null)
    [ "$any" = 0 ] && break
    [ -n "${BERTH_SWEEP_DRY_RUN:-}" ] && break
    sleep 0.2
  done
  find "$d" -depth -type d 2>/dev/null | while IFS= read -r sub; do dry rmdir "$sub" 2>/dev/null; done
}
say "sweep: stale berth-test objects"
swept=0
while IFS= read -r own; do
  for d in "$own"/berth-test-* "$own"/berth-t[0-9]*; do
    [ -d "$d" ] || continue
    stale_owner_dead "$(basename "$d")" || continue
    echo "  stale cgroup: $d"; sweep_cgroup "$d"; swept=$((swept + 1))
  done
done < <(own_cgroup_dirs)
if command -v ip >/dev/null; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(berth-test-|bt[0-9]+-)' || true); do
    stale_owner_dead "$ns" || continue
    echo "  stale netns: $ns"; dry ip netns delete "$ns"; swept=$((swept + 1))
  done
fi
TMPD=${TMPDIR:-/tmp}
for d in "$TMPD"/berth-test-*; do
  [ -d "$d" ] || continue
  stale_owner_dead "$(basename "$d")" || continue
  # processes still using it (orphaned shims), then mounts beneath it, then the directory
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qF "$d/"; then
      echo "  stale process: ${p#/proc/}"; dry kill -KILL "${p#/proc/}" 2>/dev/null
    fi
  done
  awk -v d="$d/" 'index($5, d) == 1 || $5 == substr(d, 1, length(d) - 1) { print $5 }' /proc/self/mountinfo \
    | sort -r | while IFS= read -r mp; do echo "  stale mount: $mp"; dry umount -l "$mp"; done
  echo "  stale dir: $d"; dry rm -rf "$d"; swept=$((swept + 1))
done
if [ -n "${BERTH_SWEEP_DRY_RUN:-}" ]; then record sweep "ok ($swept stale objects found; dry run)"; else record sweep "ok ($swept stale objects removed)"; fi

# ---- 3. build ---------------------------------------------------------------------------------
say "build: cargo build --workspace --bins"
cargo build --workspace --bins || fatal build "cargo build --workspace --bins failed"
record build ok

# ---- 4. host tests (cgroup v1 hybrid here) ----------------------------------------------------
# The disk quota tests need a kernel with quota formats (QFMT_V2 / XFS_QUOTA), which this host's
# kernel lacks: they run in the microVM phase (Debian kernel) instead, so they are never skipped.
# The same for IPVS (ip_vs is not in this host's kernel): berth-net's ipvs_real and the `vm_*` e2e
# tests are not selected here; the VM phase runs them.
say "host: cargo nextest run --workspace --no-fail-fast (quota_mode_on_*, vm_* and ipvs_real run in the VM phase)"
cargo nextest run --workspace --no-fail-fast \
  --tool-config-file "berth-tests:$REPO/tests/nextest.toml" \
  -E 'not test(/^quota_mode_on_/) and not test(/^vm_/) and not binary_id(berth-net::ipvs_real)' 2>&1 | tee "$LOGDIR/host.log"
host_rc=${PIPESTATUS[0]}
HOST_COUNTS=$(sed -nE 's/\x1b\[[0-9;]*m//g; s/^ *Summary \[.*\] +(.*)$/\1/p' "$LOGDIR/host.log" | tail -1)
if [ "$host_rc" = 0 ]; then record host ok; else record host "FAILED (cargo nextest exit $host_rc)"; fi

# ---- 4b. nothing left behind -------------------------------------------------------------------
# Every test cleans up on every path: after the host phase no test namespace, berth link, nftables
# table, route to berth's ranges, test cgroup or test mount may remain in the host's namespaces
# (the tests make theirs inside namespaces they create). Anything found fails this phase by name
# and is then swept, so later runs start clean.
leftovers() {
  local found=() ns own d
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(berth-test-|bt[0-9]+-|bn[0-9]+-)' || true); do
    found+=("netns $ns")
  done
  while read -r link; do
    [ -n "$link" ] && found+=("link $link")
  done < <(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' \
             | grep -E '^(berth0|berth\.vx|berth-ipvs0|bv[0-9a-f]+|btov[0-9]+h)$' || true)
  nft list tables 2>/dev/null | grep -qx 'table ip berth' && found+=("nftables table ip berth")
  while read -r route; do
    [ -n "$route" ] && found+=("route $route")
  done < <(ip -4 route show 2>/dev/null | grep -E '^(9\.|11\.)' || true)
  while IFS= read -r own; do
    for d in "$own"/berth-test-* "$own"/berth-t[0-9]*; do
      [ -d "$d" ] && found+=("cgroup $d")
    done
  done < <(own_cgroup_dirs)
  while read -r mp; do
    [ -n "$mp" ] && found+=("mount $mp")
  done < <(awk -v t="${TMPDIR:-/tmp}/berth-test-" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo)
  if [ ${#found[@]} -eq 0 ]; then
    record leftovers "ok (no test namespace, link, table, route, cgroup or mount left)"
    return
  fi
  echo "leftovers after the host tests:"; printf '  %s\n' "${found[@]}"
  record leftovers "FAILED: ${#found[@]} object(s) left behind (listed above the summary)"
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(berth-test-|bt[0-9]+-|bn[0-9]+-)' || true); do
    ip netns delete "$ns" 2>/dev/null
  done
  nft list tables 2>/dev/null | grep -qx 'table ip berth' && nft delete table ip berth 2>/dev/null
  return 0
}
say "leftovers: what the host tests left behind"
leftovers

# ---- 5. cgroup v2 microVM ---------------------------------------------------------------------
vm_phase() {
  # only the packages whose tests run in the VM (their test executables are already built by nextest)
  say "vm: locating test executables (cargo test -p berth-isolators -p berth-tests -p berth-net --no-run)"
  local json=$LOGDIR/test-artifacts.json
  if ! cargo test -p berth-isolators -p berth-tests -p berth-net --no-run --message-format=json > "$json" 2> "$LOGDIR/vm-build.log"; then
    cat "$LOGDIR/vm-build.log" >&2
    record vm "FAILED: cargo test --no-run failed"
    return
  fi
  # (test target name, manifest, executable) of every integration-test executable
  local arts; arts=$(jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test == true
                                 and (.target.kind | index("test")))
                          | [.target.name, .manifest_path, .executable] | @tsv' "$json")
  local specs=() name manifest exe
  while IFS=$'\t' read -r name manifest exe; do
    [ -n "$exe" ] || continue
    if [ "$name" = cgroups_real ] && [ "$manifest" = "$REPO/isolators/Cargo.toml" ]; then
      specs+=("all:$exe")
    elif [ "$name" = disk_real ] && [ "$manifest" = "$REPO/isolators/Cargo.toml" ]; then
      specs+=("all:$exe")
    elif [ "$name" = ipvs_real ] && [ "$manifest" = "$REPO/net/Cargo.toml" ]; then
      specs+=("all:$exe")
    elif [ "$manifest" = "$REPO/tests/Cargo.toml" ]; then
      specs+=("cgroup:$exe" "vm:$exe")
    fi
  done <<<"$arts"
  if ! printf '%s\n' "${specs[@]}" | grep -q '^all:.*/cgroups_real-'; then
    record vm "FAILED: isolators/tests/cgroups_real.rs (test binary cgroups_real-*) not found"
    return
  fi
  if ! printf '%s\n' "${specs[@]}" | grep -q '^all:.*/ipvs_real-'; then
    record vm "FAILED: net/tests/ipvs_real.rs (test binary ipvs_real-*) not found"
    return
  fi
  if ! printf '%s\n' "${specs[@]}" | grep -q '^cgroup:'; then
    record vm "FAILED: no berth-tests e2e test executables found"
    return
  fi
  say "vm: running in the cgroup v2 microVM: ${specs[*]##*/}"
  local t0; t0=$(date +%s)
  if ! printf '%s\n' "${specs[@]}" | grep -q '^all:.*/disk_real-'; then
    record vm "FAILED: isolators/tests/disk_real.rs (test binary disk_real-*) not found"
    return
  fi
  RUST_BACKTRACE=1 tests/vm/berth-v2vm --mem 3G --cpus 2 --timeout "${BERTH_VM_TIMEOUT:-3600}" \
    --modules "loop ext4 xfs quota_v2" \
    --env BERTH_TEST_CGROUP=v2 --env BERTH_TEST_TIMEOUT_SCALE=4 \
    -- bash tests/vm/guest-tests.sh "${specs[@]}" 2>&1 | tee "$LOGDIR/vm.log"
  local rc=${PIPESTATUS[0]}
  VM_COUNTS=$(sed -nE 's/^vm: ([0-9]+ passed, [0-9]+ failed)$/\1/p' "$LOGDIR/vm.log" | tail -1)
  case $rc in
    0) record vm "ok ($(( $(date +%s) - t0 ))s)" ;;
    124) record vm "FAILED: microVM timed out" ;;
    125) record vm "FAILED: microVM did not boot or crashed" ;;
    *) record vm "FAILED (guest tests exit $rc)" ;;
  esac
}
if [ -n "${BERTH_SKIP_VM:-}" ]; then
  record vm "skipped (BERTH_SKIP_VM set)"
else
  vm_phase
fi

summary
