#!/usr/bin/env bash
# Build kdeploy's full offline artifact set for one Kubernetes version from the
# upstream Go modules at pinned versions (no prebuilt downloads needed); the API load
# balancer (nginx + stream module) comes from Debian 12's packages via apt-get download.
#
#   kdeploy artifacts build [--k8s-version 1.37.2] [-o DIR] [--only COMPONENT[,..]] [--arch amd64]
#   (runs this script, kdeploy/artifacts/build/build.sh, which takes the same arguments)
#
# Output: the offline layout of docs/artifacts.md (manifest.json, bin/, cni/, lib/, images/),
# cached in ${XDG_CACHE_HOME:-$HOME/.cache}/kdeploy/artifacts-build/<version>-<arch>/.
# With -o DIR the finished set is also copied (hard-linked when possible) to DIR.
# A rerun with a valid manifest costs seconds; an interrupted run resumes at the
# first component without a valid stamp (.stamps/<component>: the pin and the sha256 of the
# component's outputs; a stamp whose outputs changed, vanished or were added to is rebuilt).
# --only builds just those components (no manifest); --force ignores stamps and the cache.
#
# Env: GOFLAGS (default -p=2), GOMAXPROCS, GOTOOLCHAIN (default local), PYTHON.
set -euo pipefail

K8S_VERSION=""   # default: the catalog's DEFAULT_KUBERNETES_VERSION
OUT=""
ONLY=""
ARCH=$(go env GOARCH 2>/dev/null || echo amd64)
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --k8s-version) K8S_VERSION=${2#v}; shift 2 ;;
    --k8s-version=*) K8S_VERSION=${1#*=}; K8S_VERSION=${K8S_VERSION#v}; shift ;;
    -o|--output) OUT=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

command -v go >/dev/null || { echo "go not found: install Go 1.26 or newer (https://go.dev/dl/)" >&2; exit 2; }
# All pinned modules currently need at most Go 1.26.x. If a pin ever needs Go 1.27,
# the only served toolchain is go1.27.3 (the go command fetches it from the module proxy).
KDEPLOY_GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOTOOLCHAIN=$KDEPLOY_GOTOOLCHAIN
export GOFLAGS="${GOFLAGS:--p=2} -trimpath -buildvcs=false"
export GOPROXY=${GOPROXY:-$(go env GOPROXY)}
export GOOS=linux GOARCH=$ARCH
[ "$ARCH" = "$(go env GOHOSTARCH)" ] || { echo "cross builds are not supported by this script (runc needs cgo)" >&2; exit 2; }

# ---- pins: kdeploy/artifacts/catalog.py is the single source (BUILD_OVERRIDES applied) ----
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
# the kdeploy this script belongs to (catalog, mkmanifest, mkimage): a checkout's or an installed
# package's, not whichever one comes first on python3's path
export PYTHONPATH="$(cd "$HERE/../../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
[ -n "$K8S_VERSION" ] || K8S_VERSION=$("$PY" -c \
  'from kdeploy.artifacts.catalog import DEFAULT_KUBERNETES_VERSION as v; print(v)')
PINS=$("$PY" -m kdeploy.artifacts --shell "$K8S_VERSION") || {
  echo "cannot read pins for $K8S_VERSION (needs kdeploy's dependencies: pip install kdeploy)" >&2; exit 2; }
eval "$PINS"   # ETCD CONTAINERD RUNC CNI CRICTL COREDNS PAUSE AGNHOST NGINX KUBE_BENCH{,_BENCHMARK,_FILES}, *_REF (image names)

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/kdeploy
DEST=$CACHE/artifacts-build/$K8S_VERSION-$ARCH
SRC=$CACHE/build-src/$K8S_VERSION-$ARCH
STAMPS=$DEST/.stamps
mkdir -p "$DEST/bin" "$DEST/cni" "$DEST/lib" "$DEST/images" "$SRC" "$STAMPS"

# one build per output dir at a time (CI and a developer may share the cache)
exec 9>"$DEST.lock"
flock -w 7200 9 || { echo "another build holds $DEST.lock" >&2; exit 1; }

TIMES=$DEST/.build-times.tsv
touch "$TIMES"

log() { printf '%s [build] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

finish() {
  if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    # hard links when on the same filesystem, else copies
    cp -al "$DEST/." "$OUT/" 2>/dev/null || cp -a "$DEST/." "$OUT/"
    rm -rf "$OUT/.stamps"
    log "copied to $OUT"
  fi
}

if [ $FORCE = 0 ] && [ -z "$ONLY" ] && [ -f "$DEST/manifest.json" ] \
   && "$PY" -m kdeploy.artifacts.build.mkmanifest --check "$DEST" >/dev/null 2>&1; then
  log "cached and valid: $DEST"
  finish
  exit 0
fi
rm -f "$DEST/manifest.json"

# prerequisites: gcc + libc6-dev (pause, cgo for runc), libseccomp.a (static runc)
missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
[ -e "/usr/lib/$(gcc -dumpmachine 2>/dev/null)/libseccomp.a" ] || missing+=(libseccomp-dev)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "the build needs ${missing[*]}: install them as root" \
    "(apt-get install -y ${missing[*]}) or run the build as root" >&2; exit 1; }
  echo "[build] installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || { echo "need: ${missing[*]} (apt-get install -y ${missing[*]})" >&2; exit 1; }
fi

want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# run_component NAME FUNC PIN OUTPUT...: skip when the stamp has the same pin, records
# exactly these outputs and every one still has the recorded sha256 (outputs are relative
# to $DEST, or absolute)
run_component() {
  local name=$1 func=$2 pin=$3; shift 3
  want "$name" || return 0
  local stamp=$STAMPS/$name
  if [ $FORCE = 0 ] && [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$pin" ] \
     && [ "$(wc -l < "$stamp")" -gt 1 ] \
     && [ "$(tail -n +2 "$stamp" | sed 's/^[0-9a-f]\{64\}  //')" = "$(printf '%s\n' "$@")" ] \
     && (cd "$DEST" && tail -n +2 "$stamp" | sha256sum -c --quiet --status -); then
    log "$name $pin: up to date (stamp)"
    return 0
  fi
  rm -f "$stamp"
  if [ $FORCE = 0 ] && reuse_sibling "$name" "$pin" "$@"; then
    { echo "$pin"; (cd "$DEST" && sha256sum "$@"); } > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
    return 0
  fi
  log "$name $pin: building"
  local t0=$SECONDS
  "$func"
  local dt=$((SECONDS - t0))
  { echo "$pin"; (cd "$DEST" && sha256sum "$@"); } > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
  printf '%s\t%s\t%ss\t%s\n' "$name" "$pin" "$dt" "$(date -u +%FT%TZ)" >> "$TIMES"
  log "$name $pin: done in ${dt}s"
}

# reuse_sibling NAME PIN OUTPUT...: another set of this arch (another Kubernetes version) has
# a valid stamp of the same component at the same pin (kube-bench, runc, CNI, crictl, nginx
# often are): copy its outputs instead of building them again. Only for outputs inside the set.
reuse_sibling() {
  local name=$1 pin=$2 other s rel; shift 2
  for rel in "$@"; do case $rel in /*) return 1 ;; esac; done
  for other in "$CACHE"/artifacts-build/*-"$ARCH"; do
    [ -d "$other" ] && [ "$other" != "$DEST" ] || continue
    s=$other/.stamps/$name
    [ -f "$s" ] && [ "$(head -n1 "$s")" = "$pin" ] || continue
    [ "$(tail -n +2 "$s" | sed 's/^[0-9a-f]\{64\}  //')" = "$(printf '%s\n' "$@")" ] || continue
    (cd "$other" && tail -n +2 "$s" | sha256sum -c --quiet --status -) || continue
    for rel in "$@"; do
      mkdir -p "$(dirname "$DEST/$rel")"
      cp -f "$other/$rel" "$DEST/$rel.kdeploy-tmp" && mv -f "$DEST/$rel.kdeploy-tmp" "$DEST/$rel"
    done
    (cd "$DEST" && tail -n +2 "$s" | sha256sum -c --quiet --status -) || continue
    log "$name $pin: copied from $other (same pin)"
    printf '%s\t%s\t%ss\t%s\n' "$name" "$pin" 0 "$(date -u +%FT%TZ)" >> "$TIMES"
    return 0
  done
  return 1
}

# use_go_for MODULE VERSION: switch to the served go1.27.3 toolchain when the module needs
# a newer Go than the local one (the proxy serves no other toolchain)
use_go_for() {
  local gomodfile need have
  gomodfile=$(go mod download -json "$1@$2" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  need=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomodfile" | head -1)
  have=$(GOTOOLCHAIN=local go env GOVERSION); have=${have#go}
  if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | tail -1)" != "$have" ]; then
    log "$1@$2 needs go $need (local: $have): using GOTOOLCHAIN=go1.27.3"
    export GOTOOLCHAIN=go1.27.3
  fi
}

# gomod DIR MODULE VERSION [extra go.mod lines...]: a throwaway main module requiring MODULE@VERSION
gomod() {
  local dir=$1 mod=$2 ver=$3; shift 3
  mkdir -p "$dir"
  export GOTOOLCHAIN=${KDEPLOY_GOTOOLCHAIN:-local}
  use_go_for "$mod" "$ver"
  {
    echo "module kdeploy.invalid/build"
    echo
    echo "go 1.26.0"
    echo
    echo "require $mod $ver"
    for l in "$@"; do echo "$l"; done
  } > "$dir/go.mod"
  # keep go.sum across runs (it only grows)
  touch "$dir/go.sum"
}

# ---------------------------------------------------------------- kubernetes
build_kubernetes() {
  local v=v$K8S_VERSION minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  local d=$SRC/kubernetes
  local modinfo moddir
  modinfo=$(go mod download -json "k8s.io/kubernetes@$v")
  moddir=$(printf '%s' "$modinfo" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  # staging modules (k8s.io/api etc.) are required as v0.0.0 and replaced by ./staging in
  # upstream's go.mod; replaces of a dependency are ignored, so point them at the tagged releases.
  local -a repl=()
  local m
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging.*#\1#p' "$moddir/go.mod"); do
    case $m in k8s.io/sample-*) continue ;; esac
    repl+=("replace $m => $m v0.$minor.${K8S_VERSION##*.}")
  done
  gomod "$d" k8s.io/kubernetes "$v" "${repl[@]}" "godebug default=go1.26"
  local info commit date
  info=$(printf '%s' "$modinfo" | sed -n 's/.*"Info": "\(.*\)".*/\1/p')
  commit=$(grep -o '"Hash":"[0-9a-f]*"' "$info" | head -1 | cut -d'"' -f4 || true)
  date=$(grep -o '"Time":"[^"]*"' "$info" | head -1 | cut -d'"' -f4)
  date=${date%Z}; date=${date%%.*}Z
  local ld="-s -w"
  local p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit=${commit:-unknown} -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  local -a pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
                 k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet
                 k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
                 k8s.io/kubernetes/test/images/agnhost)
  (cd "$d" && CGO_ENABLED=0 go build -mod=mod -tags "providerless" -ldflags "$ld" -o "$d/out/" "${pkgs[@]}")
  for p in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    install -m 0755 "$d/out/$p" "$DEST/bin/$p"
  done
  mkdir -p "$SRC/agnhost"; install -m 0755 "$d/out/agnhost" "$SRC/agnhost/agnhost"
  # pause.c for the pause image
  install -m 0644 "$moddir/build/pause/linux/pause.c" "$SRC/pause.c"
}

# ---------------------------------------------------------------- etcd
build_etcd() {
  local d=$SRC/etcd v=v$ETCD
  gomod "$d" go.etcd.io/etcd/server/v3 "$v" "require go.etcd.io/etcd/etcdctl/v3 $v" \
      "require go.etcd.io/etcd/etcdutl/v3 $v"
  (cd "$d" && CGO_ENABLED=0 go build -mod=mod -ldflags "-s -w" -o "$d/out/" \
      go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3 go.etcd.io/etcd/etcdutl/v3)
  # `go build -o dir/` names binaries after the last path element without /vN
  install -m 0755 "$d/out/server" "$DEST/bin/etcd"
  install -m 0755 "$d/out/etcdctl" "$DEST/bin/etcdctl"
  install -m 0755 "$d/out/etcdutl" "$DEST/bin/etcdutl"
}

# ---------------------------------------------------------------- containerd
build_containerd() {
  local d=$SRC/containerd v=v$CONTAINERD m=github.com/containerd/containerd/v2
  gomod "$d" $m "$v"
  local ld="-s -w -X $m/version.Version=$v -X $m/version.Revision=kdeploy-built -X $m/version.Package=github.com/containerd/containerd/v2"
  (cd "$d" && CGO_ENABLED=0 go build -mod=mod -tags "no_btrfs no_devmapper no_zfs no_aufs" -ldflags "$ld" -o "$d/out/" \
      $m/cmd/containerd $m/cmd/ctr $m/cmd/containerd-shim-runc-v2)
  for b in containerd ctr containerd-shim-runc-v2; do install -m 0755 "$d/out/$b" "$DEST/bin/$b"; done
}

# ---------------------------------------------------------------- runc
build_runc() {
  local d=$SRC/runc v=v$RUNC m=github.com/opencontainers/runc
  gomod "$d" $m "$v"
  # static: hosts need no libseccomp2 (Debian's libseccomp-dev ships libseccomp.a)
  (cd "$d" && CGO_ENABLED=1 go build -mod=mod -tags "seccomp urfave_cli_no_docs netgo osusergo" \
      -ldflags "-s -w -X main.gitCommit=kdeploy-built -linkmode external -extldflags -static-pie" \
      -buildmode=pie -o "$d/out/runc" $m)
  install -m 0755 "$d/out/runc" "$DEST/bin/runc"
}

# ---------------------------------------------------------------- CNI plugins
build_cni() {
  local d=$SRC/cni v=v$CNI m=github.com/containernetworking/plugins
  gomod "$d" $m "$v"
  local -a pk=()
  local p
  for p in main/bridge ipam/host-local main/loopback meta/portmap meta/bandwidth meta/firewall meta/tuning main/ptp ipam/static; do
    pk+=("$m/plugins/$p")
  done
  (cd "$d" && CGO_ENABLED=0 go build -mod=mod -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" -o "$d/out/" "${pk[@]}")
  for p in "${pk[@]}"; do install -m 0755 "$d/out/${p##*/}" "$DEST/cni/${p##*/}"; done
}

# ---------------------------------------------------------------- crictl
build_crictl() {
  local d=$SRC/crictl v=v$CRICTL m=sigs.k8s.io/cri-tools
  gomod "$d" $m "$v"
  (cd "$d" && CGO_ENABLED=0 go build -mod=mod -ldflags "-s -w -X $m/pkg/version.Version=$v" -o "$d/out/crictl" $m/cmd/crictl)
  install -m 0755 "$d/out/crictl" "$DEST/bin/crictl"
}

# ---------------------------------------------------------------- CoreDNS
build_coredns() {
  local d=$SRC/coredns v=v$COREDNS m=github.com/coredns/coredns
  gomod "$d" $m "$v"
  (cd "$d" && CGO_ENABLED=0 go build -mod=mod -ldflags "-s -w -X $m/coremain.GitCommit=kdeploy-built" -o "$d/out/coredns" $m)
  install -m 0755 "$d/out/coredns" "$SRC/coredns/coredns-bin"
}

# ---------------------------------------------------------------- API load balancer
# nginx and its stream module from Debian 12's packages (the same files the official-release
# source takes from deb.debian.org): no Go module exists, and building nginx from C sources
# would need its source tarball from a non-registry address.
build_api_lb() {
  local d=$SRC/api-lb
  local -a pkgs=(nginx="$NGINX" libnginx-mod-stream="$NGINX")
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { echo "api-lb needs apt-get and dpkg-deb (a Debian 12 host)" >&2; return 1; }
  rm -rf "$d"; mkdir -p "$d/root"
  # apt-get download writes into the current directory; refresh the index once on failure
  (cd "$d" && { apt-get download -qq "${pkgs[@]}" \
      || { log "apt-get download failed: apt-get update, then again"; apt-get update -qq \
           && apt-get download -qq "${pkgs[@]}"; }; }) \
    || { echo "cannot download ${pkgs[*]} (needs Debian 12 apt sources incl. bookworm-security)" >&2; return 1; }
  local deb
  for deb in "$d"/nginx_*.deb "$d"/libnginx-mod-stream_*.deb; do
    [ -f "$deb" ] || { echo "apt-get download left no $deb" >&2; return 1; }
    dpkg-deb -x "$deb" "$d/root"
  done
  install -m 0755 "$d/root/usr/sbin/nginx" "$DEST/bin/nginx"
  install -m 0644 "$d/root/usr/lib/nginx/modules/ngx_stream_module.so" "$DEST/lib/ngx_stream_module.so"
}

# ---------------------------------------------------------------- kube-bench
# The CIS benchmark runner (`kdeploy cis`), not installed on hosts: the binary and, from the same
# module source (Apache-2.0), cfg/config.yaml and the pinned benchmark's control files under
# tools/kube-bench/. Some of its dependencies have no entry in the Go checksum database: this
# build alone runs with GOSUMDB=off (pinned by version; go.sum kept across runs).
build_kube_bench() (
  export GOSUMDB=off
  local d=$SRC/kube-bench v=v$KUBE_BENCH m=github.com/aquasecurity/kube-bench
  gomod "$d" $m "$v"
  local moddir
  moddir=$(go mod download -json "$m@$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  (cd "$d" && CGO_ENABLED=0 go build -mod=mod -ldflags "-s -w -X $m/cmd.KubeBenchVersion=$v" \
      -o "$d/out/kube-bench" $m)
  local rel
  for rel in $KUBE_BENCH_FILES; do
    case $rel in
      */kube-bench) install -D -m 0755 "$d/out/kube-bench" "$DEST/$rel" ;;
      *) install -D -m 0644 "$moddir/${rel#tools/kube-bench/}" "$DEST/$rel" ;;
    esac
  done
)

# ---------------------------------------------------------------- images
build_images() {
  [ -f "$SRC/pause.c" ] || { echo "pause.c missing: build the kubernetes component first" >&2; return 1; }
  gcc -Os -static -DVERSION="v$PAUSE-kdeploy" -o "$SRC/pause" "$SRC/pause.c"
  strip "$SRC/pause"
  "$PY" -m kdeploy.artifacts.build.mkimage --ref "$PAUSE_REF" --arch "$ARCH" \
      --file "$SRC/pause:/pause" --entrypoint /pause --user 65535:65535 -o "$DEST/images/pause.tar"
  "$PY" -m kdeploy.artifacts.build.mkimage --ref "$COREDNS_REF" --arch "$ARCH" \
      --file "$SRC/coredns/coredns-bin:/coredns" --entrypoint /coredns --expose 53/udp --expose 53/tcp \
      --user 65532:65532 -o "$DEST/images/coredns.tar"
  "$PY" -m kdeploy.artifacts.build.mkimage --ref "$AGNHOST_REF" --arch "$ARCH" \
      --file "$SRC/agnhost/agnhost:/agnhost" --entrypoint /agnhost --expose 80/tcp \
      -o "$DEST/images/agnhost.tar"
}

T0=$SECONDS
run_component kubernetes build_kubernetes "$K8S_VERSION" \
  bin/kube-apiserver bin/kube-controller-manager bin/kube-scheduler bin/kubelet bin/kube-proxy \
  bin/kubectl "$SRC/agnhost/agnhost" "$SRC/pause.c"
run_component etcd       build_etcd       "$ETCD" bin/etcd bin/etcdctl bin/etcdutl
run_component containerd build_containerd "$CONTAINERD" bin/containerd bin/ctr bin/containerd-shim-runc-v2
run_component runc       build_runc       "$RUNC" bin/runc
run_component cni        build_cni        "$CNI" \
  cni/bridge cni/host-local cni/loopback cni/portmap cni/bandwidth cni/firewall cni/tuning cni/ptp cni/static
run_component crictl     build_crictl     "$CRICTL" bin/crictl
run_component coredns    build_coredns    "$COREDNS" "$SRC/coredns/coredns-bin"
run_component api-lb     build_api_lb     "$NGINX" bin/nginx lib/ngx_stream_module.so
# the pin is the refs: renaming the images rebuilds only them (a second or so)
run_component images     build_images     "$PAUSE_REF $COREDNS_REF $AGNHOST_REF" \
  images/pause.tar images/coredns.tar images/agnhost.tar
# shellcheck disable=SC2086  # KUBE_BENCH_FILES: relpaths without spaces
run_component kube-bench build_kube_bench "$KUBE_BENCH/$KUBE_BENCH_BENCHMARK" $KUBE_BENCH_FILES

if [ -z "$ONLY" ]; then
  "$PY" -m kdeploy.artifacts.build.mkmanifest --write "$DEST" --k8s-version "$K8S_VERSION" --arch "$ARCH"
  log "all done in $((SECONDS - T0))s: $DEST"
  finish
else
  log "partial build (--only $ONLY) done in $((SECONDS - T0))s; no manifest written"
fi
