#!/usr/bin/env bash
# tests/bench/net.sh: berth-net side by side, in one run (NOT part of the test suite):
#   1. iperf3 single-stream throughput node -> node over plain veth, over a hand-made kernel
#      VXLAN link and over berth's overlay (berth.vx, reconciled by the library), between the
#      same two network namespaces on an underlay bridge namespace;
#   2. TCP connections/s from a container through a VIP vs straight to a backend, from another
#      node (both paths over the overlay) and from the backends' own bridge (hairpin);
#   3. time to apply 10 000 VIPs x 3 backends from empty, and one backend change at 10 000 VIPs.
#
# Run as root on a quiet machine:
#
#   sudo bash tests/bench/net.sh
#
# Needs: iproute2, nftables, iperf3 (Debian: apt-get install iproute2 nftables iperf3).
# Knobs: BENCH_SECS (iperf3 seconds per round) [3], BENCH_ROUNDS [3], BENCH_VIPS [10000],
#        BENCH_CONNS (connections per round) [2000], CARGO_TARGET_DIR [target].
# Everything lives in namespaces named bn<pid>-*, deleted when the bench exits (also on panic);
# no traffic leaves the machine. The program is net/examples/net_bench.rs.
set -euo pipefail

die() { echo "net.sh: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, nftables)"
for c in ip nft iperf3 cargo; do
  command -v "$c" >/dev/null || die "'$c' not found (apt-get install iproute2 nftables iperf3)"
done

cd "$(dirname "$0")/../.."
cargo build --release -q -p berth-net --example net_bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/examples/net_bench"
