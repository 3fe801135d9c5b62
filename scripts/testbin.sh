#!/usr/bin/env bash
# Builds the real binaries regcache's tests run against: kube-apiserver and kubectl
# (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3), helm (helm.sh/helm/v3) and crane
# (go-containerregistry, a registry client), from the Go module proxy, at the versions
# pinned below.
#
# Each binary is built once into a directory keyed by its version under
# REGCACHE_TESTBIN_CACHE (default ~/.cache/regcache/testbin) and reused by later runs; the
# Go module and build caches (GOMODCACHE, GOCACHE) are kept too. Prints, on standard output,
# the directory holding all the binaries (also linked as $REGCACHE_TESTBIN_CACHE/current,
# where the tests look when REGCACHE_TESTBIN is unset). Everything else goes to stderr.
#
# Cold, on a 2-core machine: see docs/testing.md for the measured times.
set -euo pipefail

KUBE_VERSION=1.37.2 # k8s.io/kubernetes; its staging modules are the matching v0.37.2
ETCD_VERSION=3.7.3  # Kubernetes 1.37 requires etcd 3.7 client modules
HELM_VERSION=3.22.0
CRANE_VERSION=0.22.1 # github.com/google/go-containerregistry: a registry client, for the registry API
# Part of every cache key: raise it when the way a binary is built changes.
BUILD_REVISION=-r2

cache="${REGCACHE_TESTBIN_CACHE:-$HOME/.cache/regcache/testbin}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
log() { echo "testbin: $*" >&2; }

command -v go >/dev/null 2>&1 || PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null 2>&1 || { log "Go is not installed (expected /usr/local/go/bin/go)"; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

# wrapper DIR: a fresh, empty Go module in DIR. Each build happens in one and moves its
# output into place only when it succeeded, so a half-built binary is never reused.
wrapper() {
  local dir="$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  (cd "$dir" && go mod init regcache.test/testbin >/dev/null 2>&1)
}

build_kube() {
  local dest="$cache/kube-$KUBE_VERSION$BUILD_REVISION"
  [ -x "$dest/kube-apiserver" ] && [ -x "$dest/kubectl" ] && return
  local work="$cache/.work-kube-$KUBE_VERSION" started=$SECONDS
  log "building kube-apiserver and kubectl $KUBE_VERSION (several minutes on 2 cores)"
  wrapper "$work"
  local staging_version="v0.${KUBE_VERSION#1.}"
  local gomod
  gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  # k8s.io/kubernetes requires each of its staging modules at v0.0.0 and replaces it by its
  # own ./staging copy; a module that depends on it replaces each by the matching release.
  local replaces=()
  while read -r module; do
    replaces+=(-replace "$module=$module@$staging_version")
  done < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
  [ ${#replaces[@]} -gt 0 ] || { log "no staging modules found in $gomod"; exit 1; }
  (
    cd "$work"
    go mod edit "${replaces[@]}"
    go get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kubectl@v$KUBE_VERSION" >&2
    local flags=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      flags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=${KUBE_VERSION%%.*}"
      flags+=" -X $pkg.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
    done
    mkdir -p out
    go build -trimpath -ldflags "-s -w$flags" -o out/ \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
  )
  rm -rf "$dest"
  mv "$work/out" "$dest"
  rm -rf "$work"
  log "kube-apiserver and kubectl built in $((SECONDS - started)) s"
}

build_simple() {
  local name="$1" version="$2" package="$3"
  local dest="$cache/$name-$version$BUILD_REVISION"
  [ -x "$dest/$name" ] && return
  local work="$cache/.work-$name-$version" started=$SECONDS
  log "building $name $version"
  wrapper "$work"
  (
    cd "$work"
    # The package, not only the module: go.sum then covers everything it imports.
    go get "$package@v$version" >&2
    local flags="-s -w"
    if [ "$name" = helm ]; then
      # As helm's Makefile does: its version, and the Kubernetes version it assumes when
      # not talking to a cluster (`helm template`, `helm lint`), from its client-go
      # (v0.N.x is Kubernetes 1.N); without them it assumes 1.20.
      local client_go minor
      client_go="$(go list -m -f '{{.Version}}' k8s.io/client-go)"
      minor="$(echo "$client_go" | cut -d. -f2)"
      flags+=" -X helm.sh/helm/v3/internal/version.version=v$version"
      for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
      done
    fi
    mkdir -p out
    go build -trimpath -ldflags "$flags" -o "out/$name" "$package"
  )
  rm -rf "$dest"
  mv "$work/out" "$dest"
  rm -rf "$work"
  log "$name built in $((SECONDS - started)) s"
}

build_simple etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3
build_simple helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
build_simple crane "$CRANE_VERSION" github.com/google/go-containerregistry/cmd/crane
build_kube

bin="$cache/bin-kube-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-crane-$CRANE_VERSION$BUILD_REVISION"
mkdir -p "$bin"
ln -sf "$cache/kube-$KUBE_VERSION$BUILD_REVISION/kube-apiserver" "$bin/kube-apiserver"
ln -sf "$cache/kube-$KUBE_VERSION$BUILD_REVISION/kubectl" "$bin/kubectl"
ln -sf "$cache/etcd-$ETCD_VERSION$BUILD_REVISION/etcd" "$bin/etcd"
ln -sf "$cache/helm-$HELM_VERSION$BUILD_REVISION/helm" "$bin/helm"
ln -sf "$cache/crane-$CRANE_VERSION$BUILD_REVISION/crane" "$bin/crane"
ln -sfn "$bin" "$cache/current"
echo "$bin"
