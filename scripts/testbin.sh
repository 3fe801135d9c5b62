#!/usr/bin/env bash
# Builds the real binaries regcache's tests run against: kube-apiserver and kubectl
# (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3), helm (helm.sh/helm/v3), crane
# (go-containerregistry, a registry client), Flux's image-reflector-controller (with its
# ImageRepository and ImagePolicy CRDs) and the OCI distribution-spec conformance suite
# (oci-conformance), from the Go module proxy, at the versions pinned below; and the Go
# programs under tests/go (Argo CD Image Updater's registry client).
#
# Each binary is built once into a directory keyed by its version under
# REGCACHE_TESTBIN_CACHE (default ~/.cache/regcache/testbin) and reused by later runs; the
# Go module and build caches (GOMODCACHE, GOCACHE) are kept too. Prints, on standard output,
# the directory holding all the binaries (also linked as $REGCACHE_TESTBIN_CACHE/current,
# where the tests look when REGCACHE_TESTBIN is unset); the CRDs are in its
# flux-image-reflector-crds/ (`kubectl apply -f` it). Everything else goes to stderr.
#
# Cold, on a 2-core machine: see docs/testing.md for the measured times.
set -euo pipefail

KUBE_VERSION=1.37.2 # k8s.io/kubernetes; its staging modules are the matching v0.37.2
ETCD_VERSION=3.7.3  # Kubernetes 1.37 requires etcd 3.7 client modules
HELM_VERSION=3.22.0
CRANE_VERSION=0.22.1 # github.com/google/go-containerregistry: a registry client, for the registry API
# github.com/fluxcd/image-reflector-controller. Not 1.2.0: the proxy has it, but the checksum
# database does not know its go.mod (404), so the go command refuses it.
IMAGE_REFLECTOR_VERSION=1.2.4
# It requires github.com/fluxcd/pkg/artifact v0.18.2, whose source the proxy refuses (403
# "not available"); v0.18.0, the newest it serves, builds.
IMAGE_REFLECTOR_REPLACES=(github.com/fluxcd/pkg/artifact=github.com/fluxcd/pkg/artifact@v0.18.0)
# github.com/opencontainers/distribution-spec/conformance: untagged, so a pseudo-version.
CONFORMANCE_VERSION=0.0.0-20260831232431-97274622c111
# Part of every cache key: raise it when the way a binary is built changes (it rebuilds
# them all).
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
    if [ "$name" = oci-conformance ]; then
      # Its report names the commit it was built from, else "unknown".
      flags+=" -X main.Version=v$version"
    elif [ "$name" = helm ]; then
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

# replaces GOMOD: the replace directives of the go.mod file GOMOD that a module depending
# on it must repeat, as OLD[@V]=NEW[@V], one a line: all but those of a directory (./api),
# which exists only in that module's own repository.
replaces() {
  awk '{ sub(/\/\/.*/, "") }
    /^replace[[:space:]]*\(/ { block = 1; next }
    block && /^[[:space:]]*\)/ { block = 0; next }
    block || /^replace[[:space:]]/ {
      sub(/^replace[[:space:]]+/, "")
      if (split($0, side, "=>") != 2) next
      split(side[1], old); split(side[2], new)
      if (new[1] ~ /^(\.|\/)/) next
      print old[1] (old[2] == "" ? "" : "@" old[2]) "=" new[1] (new[2] == "" ? "" : "@" new[2])
    }' "$1"
}

# Flux's image-reflector-controller (package main at its module root), and its CRDs.
build_image_reflector() {
  local name=image-reflector-controller version="$IMAGE_REFLECTOR_VERSION"
  local module=github.com/fluxcd/image-reflector-controller
  local dest="$cache/$name-$version$BUILD_REVISION"
  [ -x "$dest/$name" ] && [ -d "$dest/crds" ] && return
  local work="$cache/.work-$name-$version" started=$SECONDS
  log "building $name $version"
  wrapper "$work"
  (
    cd "$work"
    local gomod dir
    gomod="$(go mod download -json "$module@v$version" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [ -n "$gomod" ] || { log "cannot download $module@v$version"; exit 1; }
    # Its go.mod replaces its api submodule by its ./api directory; here the api release of
    # the same version stands in for it. Any other replace applies here too, and ours.
    local edits=()
    for replace in "${IMAGE_REFLECTOR_REPLACES[@]}"; do
      edits+=(-replace "$replace")
    done
    while read -r replace; do
      edits+=(-replace "$replace")
    done < <(replaces "$gomod")
    [ ${#edits[@]} -eq 0 ] || go mod edit "${edits[@]}"
    go get "$module@v$version" "$module/api@v$version" >&2
    mkdir -p out/crds
    go build -trimpath -ldflags "-s -w" -o "out/$name" "$module"
    dir="$(go list -m -f '{{.Dir}}' "$module")"
    for crd in imagerepositories imagepolicies; do
      cp "$dir/config/crd/bases/image.toolkit.fluxcd.io_$crd.yaml" out/crds/
    done
    chmod 644 out/crds/*.yaml # read-only in the module cache
  )
  rm -rf "$dest"
  mv "$work/out" "$dest"
  rm -rf "$work"
  log "$name built in $((SECONDS - started)) s"
}

# build_local NAME DIR: a Go program of this repository (tests/go/NAME), keyed by a hash of
# its sources, so an edit rebuilds it.
build_local() {
  local name="$1" dir="$2"
  local hash
  hash="$(cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go | sha256sum | cut -c1-12)"
  local dest="$cache/$name-$hash"
  if [ ! -x "$dest/$name" ]; then
    local started=$SECONDS
    log "building $name ($dir)"
    mkdir -p "$cache/.work-$name"
    (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$cache/.work-$name/$name" .)
    rm -rf "$dest"
    mv "$cache/.work-$name" "$dest"
    log "$name built in $((SECONDS - started)) s"
  fi
  local_bins+=("$dest/$name")
}

build_simple etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3
build_simple helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
build_simple crane "$CRANE_VERSION" github.com/google/go-containerregistry/cmd/crane
build_kube
build_image_reflector
# A package main since 2026, configured by OCI_* environment variables; it writes
# results.yaml, junit.xml and report.html into OCI_RESULTS_DIR. With OCI_API_PUSH=false it
# panics writing results.yaml unless OCI_FILTER_TEST narrows it to
# "OCI Conformance Test/read-only".
build_simple oci-conformance "$CONFORMANCE_VERSION" github.com/opencontainers/distribution-spec/conformance
# Argo CD Image Updater's registry client (registry-scanner), driven as the updater drives it.
local_bins=()
build_local argocd-registry-client "$(cd "$(dirname "$0")/.." && pwd)/tests/go/argocd-registry-client"

bin="$cache/bin-kube-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-crane-$CRANE_VERSION"
bin+="-image-reflector-$IMAGE_REFLECTOR_VERSION-conformance-${CONFORMANCE_VERSION##*-}$BUILD_REVISION"
mkdir -p "$bin"
ln -sf "$cache/kube-$KUBE_VERSION$BUILD_REVISION/kube-apiserver" "$bin/kube-apiserver"
ln -sf "$cache/kube-$KUBE_VERSION$BUILD_REVISION/kubectl" "$bin/kubectl"
ln -sf "$cache/etcd-$ETCD_VERSION$BUILD_REVISION/etcd" "$bin/etcd"
ln -sf "$cache/helm-$HELM_VERSION$BUILD_REVISION/helm" "$bin/helm"
ln -sf "$cache/crane-$CRANE_VERSION$BUILD_REVISION/crane" "$bin/crane"
image_reflector="$cache/image-reflector-controller-$IMAGE_REFLECTOR_VERSION$BUILD_REVISION"
ln -sf "$image_reflector/image-reflector-controller" "$bin/image-reflector-controller"
ln -sfn "$image_reflector/crds" "$bin/flux-image-reflector-crds"
ln -sf "$cache/oci-conformance-$CONFORMANCE_VERSION$BUILD_REVISION/oci-conformance" \
  "$bin/oci-conformance"
for local_bin in "${local_bins[@]}"; do
  ln -sf "$local_bin" "$bin/$(basename "$local_bin")"
done
ln -sfn "$bin" "$cache/current"
echo "$bin"
