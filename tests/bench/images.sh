#!/usr/bin/env bash
# tests/bench/images.sh: image pull+unpack vs skopeo+umoci, and 100 image containers at once.
#
#   CARGO_TARGET_DIR=/work/target-bench cargo build --release --bins
#   sudo BERTH_BIN_DIR=/work/target-bench/release bash tests/bench/images.sh
#
# Run by hand, as root (measures, asserts nothing). Needs docker-registry, skopeo, umoci,
# busybox-static, curl, python3 (all in tests/install-deps.sh). Loopback only; everything is named
# berth-bench-img-<pid> and removed on every exit path.
#   1. pull: a ~100 MB image of 4 layers (random data, so compression does not shrink it) built
#      with umoci and pushed to a docker-registry on 127.0.0.1; N_PULL interleaved iterations of
#        berth image pull --work-dir <fresh> REF            (download, verify, unpack every layer)
#        skopeo copy docker://REF oci:<fresh> && umoci unpack (the same work with the reference tools)
#      p50 and the ratio berth / (skopeo+umoci).
#   2. concurrency: N_CONC `berth run -d --image busybox -- sleep` started at once on one agent,
#      then the same number of native `berth run -d -- sleep`: wall time until all are running.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TAG="berth-bench-img-$$"
N_PULL=${N_PULL:-5}
N_CONC=${N_CONC:-100}
LAYER_MB=${LAYER_MB:-25}
BIN_DIR=${BERTH_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}
BERTH="$BIN_DIR/berth"
WORK=/tmp/$TAG

say() { printf '[bench-img %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cleanup() {
  local pidfile pid
  for pidfile in "$WORK"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile"); kill -TERM "$pid" 2>/dev/null || true
  done
  for pidfile in "$WORK"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 1 1200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in $(pgrep -f "$WORK/" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for c in "$BERTH" docker-registry skopeo umoci busybox curl python3; do
  command -v "$c" >/dev/null || [ -x "$c" ] || { echo "missing: $c" >&2; exit 1; }
done
mkdir -p "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f\n", (b-a)*1000}'; }
p50() { sort -n "$1" | awk '{v[NR]=$1} END {i=int(NR*0.5)+1; if (i>NR) i=NR; print v[i]}'; }

# ---- the registry -------------------------------------------------------------------------------
REG_PORT=$(free_port)
cat >"$WORK/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$REG_PORT
log:
  level: error
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
echo $! >"$WORK/registry.pid"
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && break; sleep 0.1; done

# ---- the images: busybox (small) and big (4 x LAYER_MB of random data) --------------------------
build_image() { # NAME LAYERS(0=busybox only)
  local name=$1 layers=$2 dir=$WORK/oci-$1 bundle=$WORK/bundle-$1 i
  umoci init --layout "$dir" >/dev/null
  umoci new --image "$dir:t" >/dev/null
  umoci unpack --image "$dir:t" "$bundle" >/dev/null
  mkdir -p "$bundle/rootfs/bin"
  cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
  for app in sh sleep true echo ls cat; do ln -sf busybox "$bundle/rootfs/bin/$app"; done
  umoci repack --image "$dir:t" "$bundle" >/dev/null
  for i in $(seq 1 "$layers"); do
    head -c "$((LAYER_MB << 20))" /dev/urandom >"$bundle/rootfs/data-$i"
    umoci repack --image "$dir:t" "$bundle" >/dev/null
  done
  umoci config --image "$dir:t" --config.cmd /bin/sh >/dev/null
  rm -rf "$bundle"
  skopeo copy -q --dest-tls-verify=false "oci:$dir:t" "docker://127.0.0.1:$REG_PORT/$name:t"
}
say "building images (busybox, and 4 x ${LAYER_MB} MB layers) and pushing them"
build_image busybox 0
build_image big 4
SIZE_MB=$(python3 - "$WORK/oci-big" <<'PY'
import json, sys, os
root = sys.argv[1]
def blob(d):
    return os.path.join(root, "blobs", *d.split(":"))
index = json.load(open(os.path.join(root, "index.json")))
manifest = json.load(open(blob(index["manifests"][-1]["digest"])))
print(round(sum(l["size"] for l in manifest["layers"]) / 2**20))
PY
)
REF=127.0.0.1:$REG_PORT/big:t

# ---- 1. pull + unpack ---------------------------------------------------------------------------
: >"$WORK/berth.ms"; : >"$WORK/ref.ms"
say "pull+unpack of $REF ($SIZE_MB MB of compressed layers): $N_PULL interleaved iterations"
for i in $(seq 1 "$N_PULL"); do
  t=$EPOCHREALTIME
  "$BERTH" image --work-dir "$WORK/pull-$i" pull "$REF" >/dev/null 2>&1
  ms_since "$t" >>"$WORK/berth.ms"
  rm -rf "$WORK/pull-$i"
  t=$EPOCHREALTIME
  skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$WORK/ref-$i:t" &&
    umoci unpack --image "$WORK/ref-$i:t" "$WORK/ref-bundle-$i" >/dev/null
  ms_since "$t" >>"$WORK/ref.ms"
  rm -rf "$WORK/ref-$i" "$WORK/ref-bundle-$i"
done
B=$(p50 "$WORK/berth.ms"); R=$(p50 "$WORK/ref.ms")

# ---- 2. N_CONC containers at once from one image ------------------------------------------------
PORT=$(free_port)
mkdir -p "$WORK/agent/work" "$WORK/agent/run"
"$BERTH" agent --dev --listen "127.0.0.1:$PORT" --work-dir "$WORK/agent/work" \
  --runtime-dir "$WORK/agent/run" --cgroup-base "$TAG" --resources 'cpus:1000;mem:1000000' \
  >"$WORK/agent.log" 2>&1 &
echo $! >"$WORK/agent.pid"
URL=http://127.0.0.1:$PORT
for _ in $(seq 1 100); do curl -fs "$URL/health" >/dev/null && break; sleep 0.1; done
"$BERTH" image --work-dir "$WORK/agent/work" pull "127.0.0.1:$REG_PORT/busybox:t" >/dev/null 2>&1
"$BERTH" --agent "$URL" run --image "127.0.0.1:$REG_PORT/busybox:t" --cpus 0.01 --mem 8M -- true >/dev/null
concurrent() { # LABEL ARGS... -> ms until all N_CONC are running
  local label=$1; shift
  local t=$EPOCHREALTIME i
  for i in $(seq 1 "$N_CONC"); do
    "$BERTH" --agent "$URL" run -d --cpus 0.01 --mem 8M --name "$label-$i" "$@" -- sleep 3600 >/dev/null &
  done
  wait
  ms_since "$t"
}
say "$N_CONC image containers at once, then $N_CONC native ones"
IMG_MS=$(concurrent img --image "127.0.0.1:$REG_PORT/busybox:t")
NAT_MS=$(concurrent nat)
RUNNING=$(curl -fs "$URL/api/berth/v1/tasks" | python3 -c 'import json,sys; print(sum(1 for t in json.load(sys.stdin) if t.get("state")=="TASK_RUNNING"))')

echo
echo "================ berth image benchmark ($(nproc) cpus, load $(cut -d' ' -f1 /proc/loadavg)) ================"
printf '%-58s %10s\n' "pull + unpack, $SIZE_MB MB of layers, 5 layers (p50 ms)" ""
printf '%-58s %10s\n' "  berth image pull" "$B"
printf '%-58s %10s\n' "  skopeo copy + umoci unpack" "$R"
printf '%-58s %10s\n' "  ratio berth / (skopeo + umoci)" "$(awk -v b="$B" -v r="$R" 'BEGIN {printf "%.2fx", b/r}')"
printf '%-58s %10s\n' "$N_CONC containers started at once (ms until all running)" ""
printf '%-58s %10s\n' "  from one image (overlay root)" "$IMG_MS"
printf '%-58s %10s\n' "  native (read-only host root)" "$NAT_MS"
printf '%-58s %10s\n' "  ratio image / native" "$(awk -v a="$IMG_MS" -v b="$NAT_MS" 'BEGIN {printf "%.2fx", a/b}')"
printf '%-58s %10s\n' "  tasks running at the end (expected $((2 * N_CONC)))" "$RUNNING"
