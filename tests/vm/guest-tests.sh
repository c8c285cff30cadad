#!/usr/bin/env bash
# guest-tests.sh: runs INSIDE the cgroup v2 microVM (started by tests/run.sh through berth-v2vm).
#
#   guest-tests.sh [all:|cgroup:|vm:]TEST_EXECUTABLE...
#
# all:PATH     run every test of a libtest executable (e.g. isolators' cgroups_real-*)
# cgroup:PATH  run only its tests whose name starts with `cgroup_` (the e2e tests of berth-tests);
#              those ending in `_alone` run afterwards one at a time.
# vm:PATH      run only its tests whose name starts with `vm_` (tests that need this kernel, e.g.
#              ip_vs, and are not selected on the host), one at a time; nothing if it has none.
# At most 2 test threads (TCG is slow). Exits non-zero if any executable fails, and ends with one
# line "vm: N passed, N failed".
set -uo pipefail

echo "guest: $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "guest: /sys/fs/cgroup is not cgroup2" >&2; exit 1; }
passed=0; failed=0; bad=()

run_one() { # LABEL EXE ARGS...
  local label=$1 exe=$2; shift 2
  local out; out=$(mktemp)
  echo "=== $label: $(basename "$exe") $*"
  "$exe" "$@" 2>&1 | tee "$out"
  local rc=${PIPESTATUS[0]}
  local line p f
  line=$(grep -E '^test result: ' "$out" | tail -1)
  p=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line"); f=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ "$rc" -ne 0 ]; then
    bad+=("$(basename "$exe") $* (exit $rc)")
    [ -n "$line" ] || failed=$((failed + 1)) # crashed before reporting
  fi
  rm -f "$out"
}

for spec in "$@"; do
  kind=${spec%%:*}; exe=${spec#*:}
  [ -x "$exe" ] || { echo "guest: not executable: $exe" >&2; bad+=("$exe missing"); failed=$((failed + 1)); continue; }
  case $kind in
    all) run_one all "$exe" --test-threads=2 ;;
    cgroup)
      run_one cgroup "$exe" cgroup_ --test-threads=2 --skip _alone
      # the `cgroup_*_alone` tests, if any, one at a time
      for t in $("$exe" --list cgroup_ 2>/dev/null | sed -nE 's/^(cgroup_[A-Za-z0-9_:]*_alone): test$/\1/p'); do
        run_one cgroup-alone "$exe" --exact "$t" --test-threads=1
      done ;;
    vm)
      for t in $("$exe" --list 2>/dev/null | sed -nE 's/^(vm_[A-Za-z0-9_:]*): test$/\1/p'); do
        run_one vm "$exe" --exact "$t" --test-threads=1
      done ;;
    *) echo "guest: bad spec $spec" >&2; exit 2 ;;
  esac
done

if [ ${#bad[@]} -gt 0 ]; then
  echo "guest: FAILED:"; printf '  %s\n' "${bad[@]}"
fi
echo "vm: $passed passed, $failed failed"
[ ${#bad[@]} -eq 0 ]
