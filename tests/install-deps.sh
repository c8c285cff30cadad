#!/usr/bin/env bash
# install-deps.sh: install every system package berth's test suite needs, on Debian 12, as root.
# Idempotent: packages already present are left alone; `apt-get update` runs at most once per call
# (and not at all when nothing is missing).
#
#   bash tests/install-deps.sh
#
# The Debian kernel image (linux-image-amd64) is only the microVM's kernel for the cgroup v2 phase
# (tests/vm/berth-v2vm); the host keeps its own kernel. On machines that boot through GRUB the
# package's hooks may touch the boot configuration: run the suite on throwaway VMs/CI machines.
set -euo pipefail

die() { echo "install-deps: ERROR: $*" >&2; exit 1; }
say() { echo "install-deps: $*" >&2; }

PKGS=(
  qemu-system-x86   # the cgroup v2 microVM (TCG)
  linux-image-amd64 # the microVM's kernel + modules
  busybox-static    # the microVM's initramfs; also handy in tests
  iproute2          # ip netns / link
  nftables conntrack iputils-ping iperf3 # berth-net: L4 LB and port maps, UDP conntrack flush, overlay tests, net bench
  procps            # ps, pgrep (diagnostics)
  crun runc         # reference OCI runtimes (benchmarks compare)
  hyperfine         # benchmarks
  cpio gzip xz-utils kmod # building the initramfs (modules may be .ko.xz)
  util-linux        # nsenter, unshare, mount, losetup
  e2fsprogs xfsprogs # mkfs.ext4 / mkfs.xfs for the disk quota tests (loop devices)
  jq python3                # JSON in scripts
  curl              # poking the agent's HTTP API by hand / in scripts
  ca-certificates
  docker-registry skopeo umoci # image tests: a local registry, pushing OCI layouts, the umoci unpack benchmark
  zookeeperd        # agent/tests/zk_real.rs: ZooKeeper (and its JRE) for master leader detection
)

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install); try: sudo bash $0"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian 12 only"
command -v dpkg-query >/dev/null || die "dpkg-query not found"

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
else
  say "all Debian packages present"
fi

# sanity checks of what the suite calls directly
for c in qemu-system-x86_64 busybox cpio gzip xz ip jq docker-registry skopeo umoci java; do
  command -v "$c" >/dev/null || die "'$c' still missing after install"
done
[ -f /usr/share/java/zookeeper.jar ] || die "no /usr/share/java/zookeeper.jar after installing zookeeperd"
ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 || die "no /boot/vmlinuz-*-amd64 after installing linux-image-amd64"
if ldd "$(command -v busybox)" >/dev/null 2>&1; then
  die "busybox at $(command -v busybox) is dynamically linked; the microVM needs busybox-static"
fi

# the Rust test runner (rustup's cargo may not be on a non-login shell's PATH)
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
  command -v cargo >/dev/null || die "cargo not found (install Rust via rustup first)"
  say "cargo-nextest missing: cargo install cargo-nextest --locked"
  cargo install cargo-nextest --locked || die "cargo install cargo-nextest failed"
  cargo nextest --version >/dev/null 2>&1 || die "cargo nextest still not runnable (is ~/.cargo/bin on PATH?)"
fi
say "ok"
