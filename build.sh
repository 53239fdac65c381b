#!/usr/bin/env bash
# pycni build, install and test driver.
#
#   ./build.sh [build]                  build dist/py (launchers) and dist/bin (bundle)
#   ./build.sh deps                     install system packages (apt) and the Python venv
#   ./build.sh test [pytest args]       deps + build + every test tier
#   ./build.sh demo                     deps + build + the two-node flannel demo
#   ./build.sh bench [args]             benchmarks beside the Go reference plugins
#   ./build.sh image [--no-build]       dist/pycni-image.tar: OCI archive of the bundle and its installer
#   ./build.sh deb [--no-build]         dist/pycni_<version>_amd64.deb: the bundle in /usr/libexec/cni
#   ./build.sh rpm [--no-build]         dist/pycni-<version>-1.x86_64.rpm, the same layout (rpmbuild)
#   ./build.sh root SUITE [PKG...]      print the path of a cached minbase Debian root (debootstrap)
#   ./build.sh install [--form bundle|py] [DIR] [pycni install options]
#                                       pycni install: default --form py, DIR /usr/libexec/cni
#   ./build.sh uninstall [DIR]          pycni uninstall: remove it, restore what it replaced
set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$TOP"
VENV=$TOP/.venv
DIST=$TOP/dist
# the interpreter the dist/py launchers run on: the host's python3 (>= 3.11)
PYTHON=${PYCNI_PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
PLUGINS=(bridge host-local flannel portmap loopback firewall tuning)
APT_PACKAGES=(
  python3 python3-venv python3-dev libpython3.11
  iproute2 iptables nftables conntrack iputils-ping netcat-openbsd tcpdump ethtool
  containernetworking-plugins golang-go golang-github-appc-cni-dev
  podman containerd busybox-static uidmap debootstrap buildah rpm
)

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ deps
deps_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}: run as root or install them"
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

deps_python() {
  local stamp=$VENV/.requirements
  if [ -x "$VENV/bin/python" ] && cmp -s requirements.txt "$stamp" 2>/dev/null; then
    return 0
  fi
  log "python venv in .venv ($PYTHON)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"   # kept when only the pins changed
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt "$stamp"
}

deps() { deps_system; deps_python; }

# ------------------------------------------------------------------ build
plugin_exists() { [ -f "plugins/${1//-/_}.py" ]; }

build_py() {
  local out=$DIST/py lib
  lib=$out/pycni.d
  rm -rf "$out.new"
  mkdir -p "$out.new/pycni.d"
  cp -a cnilib plugins "$out.new/pycni.d/"
  find "$out.new/pycni.d" -name __pycache__ -prune -exec rm -rf {} +
  rm -rf "$out.new/pycni.d/cnilib/cni/schema"   # pydantic models: build/test time only
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$out.new/pycni.d" \
      "$(grep '^pyroute2==' requirements.txt)"
  rm -rf "$out.new/pycni.d/bin" "$out.new/pycni.d"/*.dist-info
  local py
  py=$("$PYTHON" -c 'import os,sys; print(os.path.realpath(sys.executable))')
  for name in "${PLUGINS[@]}" pycni; do
    [ "$name" = pycni ] || plugin_exists "$name" || continue
    cat > "$out.new/$name" <<EOF
#!$py -IS
# pycni-launcher: runs "$name" of the pycni suite on the host's python3
import sys
from os.path import dirname, realpath
sys.path[0:0] = [dirname(realpath(__file__)) + "/pycni.d"]
from cnilib.main import main
main("$name")
EOF
    chmod 755 "$out.new/$name"
  done
  # bytecode next to the sources, checked by hash only at build: no stat per import
  "$py" -m compileall -q -j0 --invalidation-mode unchecked-hash "$out.new/pycni.d" >/dev/null
  rm -rf "$out"
  mv "$out.new" "$out"
  log "dist/py: $(ls "$out" | grep -v pycni.d | tr '\n' ' ')"
}

build_bin() {
  local work=$TOP/build/pyi out=$DIST/bin
  rm -rf "$work" "$out"
  mkdir -p "$work"
  local hidden=()
  for f in $(find cnilib plugins -name '*.py' | sort); do
    case $f in cnilib/cni/schema/*) continue ;; esac
    m=${f%.py}; m=${m//\//.}; m=${m%.__init__}
    hidden+=(--hidden-import "$m")
  done
  cat > "$work/entry.py" <<'EOF'
from cnilib.main import main
main()
EOF
  "$VENV/bin/pyi-makespec" --onedir --strip \
      --name pycni --contents-directory .pycni --specpath "$work" \
      --paths "$TOP" "${hidden[@]}" \
      --collect-submodules pyroute2.netlink.rtnl \
      --exclude-module pydantic --exclude-module pydantic_core --exclude-module cnilib.cni.schema \
      --exclude-module tkinter \
      "$work/entry.py" >/dev/null
  # PyInstaller runs its inspect and multiprocessing runtime hooks before
  # every exec (they import inspect, zipfile, multiprocessing, subprocess):
  # ~25 ms of a bundled VERSION, for features the plugins never use (no
  # multiprocessing spawn/forkserver, no inspect.getsourcefile); drop them
  grep -q '^pyz = PYZ(a.pure)' "$work/pycni.spec" || die "unexpected PyInstaller spec layout in $work/pycni.spec"
  sed -i 's/^pyz = PYZ(a.pure)/a.scripts = [s for s in a.scripts if s[0] not in ("pyi_rth_inspect", "pyi_rth_multiprocessing")]\n&/' \
      "$work/pycni.spec"
  "$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
      --distpath "$work/dist" --workpath "$work/build" "$work/pycni.spec" >/dev/null
  mv "$work/dist/pycni" "$out"
  for name in "${PLUGINS[@]}"; do
    plugin_exists "$name" && ln -sf pycni "$out/$name"
  done
  log "dist/bin: $(ls "$out" | tr '\n' ' ')"
}

check_schemas() {
  "$VENV/bin/python" -m cnilib.cni.schema --check || die "cnilib/cni/_schemas.py is stale: run .venv/bin/python -m cnilib.cni.schema"
}

build() {
  deps_python
  check_schemas
  build_py
  [ "${PYCNI_SKIP_BUNDLE:-0}" = 1 ] || build_bin
}

# ------------------------------------------------------------------ install
# Thin calls to `pycni install` / `pycni uninstall` (cnilib/ops/install.py),
# the code the image and the package run too.  Other options pass through
# (--conf-dir, --network flannel|bridge, --conflist FILE, --host-root DIR).
install_suite() {
  local form=py dir=${PYCNI_BIN_DIR:-/usr/libexec/cni} rest=()
  while [ $# -gt 0 ]; do
    case $1 in
      --form) form=$2; shift 2 ;;
      --form=*) form=${1#--form=}; shift ;;
      --host-root|--conf-dir|--network|--conflist|--from|--bin-dir) rest+=("$1" "${2:-}"); shift 2 ;;
      -*) rest+=("$1"); shift ;;
      *) dir=$1; shift ;;
    esac
  done
  case $form in py|bundle) ;; *) die "--form is py or bundle, not $form" ;; esac
  local src=$DIST/py
  [ "$form" = bundle ] && src=$DIST/bin
  [ -x "$src/pycni" ] || die "$src is missing: run ./build.sh first"
  "$src/pycni" install --bin-dir "$dir" "${rest[@]}"
}

uninstall_suite() {
  # from the source tree: uninstalling needs none of the built files
  "$PYTHON" -I -S -c 'import sys; sys.path[0:0] = [sys.argv[1]]
from cnilib.ops import install
sys.exit(install.uninstall_main(sys.argv[2:]))' "$TOP" --bin-dir "${1:-${PYCNI_BIN_DIR:-/usr/libexec/cni}}" "${@:2}"
}

# ------------------------------------------------------------------ image
# dist/pycni-image.tar: an OCI archive (podman load -i) of a scratch image
# holding the bundle in /opt/pycni and the system libraries it loads (the
# dynamic loader, libc, libm, libz, ...), nothing else: no shell, no package
# manager.  Its default command is `pycni install` into /host/opt/cni/bin and
# /host/etc/cni/net.d, where the DaemonSet mounts the node's dirs.  buildah
# works offline in a private storage under build/image (never the machine's
# /var/lib/containers); the image is rebuilt only when its files change.
IMAGE_REF=localhost/pycni

is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }

# system libraries the bundle in $1 loads: the executable's own needs, and
# those of the bundled libraries that are not bundled themselves
bundle_system_libs() {
  local b=$1 f
  {
    ldd "$b/pycni"
    find "$b/.pycni" -type f -name '*.so*' | while read -r f; do
      LD_LIBRARY_PATH=$b/.pycni ldd "$f" 2>/dev/null || true
    done
  } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | grep -v "^$b/" | sort -u
}

stage_image_rootfs() {
  local out=$1 b=$DIST/bin lib
  rm -rf "$out"
  mkdir -p "$out/opt" "$out/tmp" "$out/host" "$out/etc"
  chmod 1777 "$out/tmp"
  cp -a "$b" "$out/opt/pycni"
  for lib in $(bundle_system_libs "$b"); do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"            # the file itself at the path the loader asks for
  done
  printf 'root:x:0:0:root:/:/nonexistent\n' > "$out/etc/passwd"
  printf 'root:x:0:\n' > "$out/etc/group"
  # the staged root runs the bundle: anything missing shows up here, not on a node
  chroot "$out" /opt/pycni/pycni --version >/dev/null || die "the staged image cannot run pycni"
  return 0
}

build_image() {
  [ -x "$DIST/bin/pycni" ] || die "dist/bin is missing: run ./build.sh first"
  command -v buildah >/dev/null || die "buildah is not installed (apt-get install buildah)"
  local work=$TOP/build/image out=$DIST/pycni-image.tar version key
  version=$("$DIST/bin/pycni" --version | awk '{print $2}')
  mkdir -p "$work"
  stage_image_rootfs "$work/rootfs"
  key=$( (cd "$work/rootfs" && find . -printf '%p %m %l\n' | sort && find . -type f -print0 | sort -z \
          | xargs -0 sha256sum) | sha256sum | cut -c1-16)
  if [ -f "$out" ] && [ "$(cat "$work/key" 2>/dev/null)" = "$key" ]; then
    log "dist/pycni-image.tar is up to date ($IMAGE_REF:$version, $(du -h "$out" | cut -f1))"
    return 0
  fi
  local b=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs) ctr
  rm -rf "$work/storage" "$work/run"
  ctr=$("${b[@]}" from --quiet scratch)
  "${b[@]}" copy --quiet "$ctr" "$work/rootfs/" / >/dev/null
  "${b[@]}" config --entrypoint '["/opt/pycni/pycni"]' --cmd install --workingdir / \
      --env PYCNI_BIN_DIR=/host/opt/cni/bin --env PYCNI_CONF_DIR=/host/etc/cni/net.d \
      --env PYCNI_LOG=- --env PYCNI_IMAGE=1 --env PATH=/opt/pycni \
      --label org.opencontainers.image.title=pycni \
      --label org.opencontainers.image.version="$version" \
      --label org.opencontainers.image.description="pycni CNI plugins and their installer" \
      --created-by "./build.sh image" "$ctr"
  rm -f "$out.new"
  "${b[@]}" commit --quiet --format oci --timestamp 0 --omit-history "$ctr" \
      "oci-archive:$out.new:$IMAGE_REF:$version" >/dev/null
  "${b[@]}" rm "$ctr" >/dev/null
  rm -rf "$work/storage" "$work/run"
  mv "$out.new" "$out"
  echo "$key" > "$work/key"
  log "dist/pycni-image.tar: $IMAGE_REF:$version, $(du -h "$out" | cut -f1) (rootfs $(du -sh "$work/rootfs" | cut -f1))"
}

# ------------------------------------------------------------------ Debian package
# dist/pycni_<version>_amd64.deb (dpkg-deb): the bundle in
# /usr/lib/pycni/<version>/, each plugin a symlink in /usr/libexec/cni (a
# directory no Debian package owns; Debian's own plugins are in /usr/lib/cni),
# pycni on PATH, the agent's unit installed but not enabled.  dpkg replaces
# each symlink by rename, and a new version's tree is a new directory, so an
# exec during an upgrade runs one whole tree.  Pre-Depends on the glibc the
# bundle needs: dpkg refuses before unpacking anything on an older node.
# PYCNI_DEB_VERSION and PYCNI_DEB_OUT override the version and the output
# dir (the upgrade tests build an older package).
write_deb_meta() {   # write_deb_meta ROOT VERSION FLOOR SIZE
  local root=$1 version=$2 floor=$3 size=$4
  printf '%s\n' \
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/" \
    "Upstream-Name: pycni" "License: Apache-2.0" \
    "Comment: the bundle carries CPython and its libraries (PSF-2.0 and their own licenses)" \
    > "$root/usr/share/doc/pycni/copyright"
  printf '%s\n' \
    "Package: pycni" "Version: $version" "Architecture: amd64" \
    "Maintainer: pycni developers <pycni@localhost>" "Installed-Size: $size" \
    "Pre-Depends: libc6 (>= $floor)" "Depends: zlib1g" "Recommends: nftables, iptables" \
    "Suggests: containerd | cri-o" "Section: net" "Priority: optional" \
    "Description: CNI plugins in Python: bridge, host-local, flannel, portmap and more" \
    " Drop-in replacements for the reference CNI plugins (bridge, host-local," \
    " flannel, portmap, loopback, firewall, tuning), for containerd, CRI-O," \
    " kubelet and podman, plus pycni, an operator's tool (cnitool-compatible" \
    " runner, whois, doctor).  The plugins are in /usr/libexec/cni: point the" \
    " runtime's plugin dir there.  The optional agent's unit, pycni-agent, is" \
    " installed but not enabled." > "$root/DEBIAN/control"
  printf '%s\n' '#!/bin/sh' 'set -e' \
    '# the agent unit is installed, never enabled or started here' \
    'if [ "$1" = configure ] && [ -d /run/systemd/system ]; then' \
    '  systemctl daemon-reload >/dev/null 2>&1 || true' 'fi' 'exit 0' > "$root/DEBIAN/postinst"
  printf '%s\n' '#!/bin/sh' 'set -e' 'if [ "$1" = purge ]; then' \
    '  # the suite own log and records (never the reference plugins dirs)' \
    '  rm -rf /var/log/pycni /var/lib/cni/pycni /run/pycni' 'fi' \
    'if [ -d /run/systemd/system ]; then' '  systemctl daemon-reload >/dev/null 2>&1 || true' 'fi' \
    'exit 0' > "$root/DEBIAN/postrm"
  chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
}

# the highest GLIBC_x.y any ELF file of the bundle needs (cnilib/ops/elf.py)
glibc_floor() {
  "$VENV/bin/python" -c 'import sys; sys.path[0:0] = [sys.argv[1]]
from cnilib.ops import elf
print(elf.vtext(elf.tree_glibc_needed(sys.argv[2])[0]))' "$TOP" "$DIST/bin"
}

build_deb() {
  [ -x "$DIST/bin/pycni" ] || die "dist/bin is missing: run ./build.sh first"
  local version=${PYCNI_DEB_VERSION:-$("$DIST/bin/pycni" --version | awk '{print $2}')}
  local out=${PYCNI_DEB_OUT:-$DIST} work=$TOP/build/deb floor
  floor=$(glibc_floor)
  local root=$work/root lib=/usr/lib/pycni/$version name
  rm -rf "$work"
  mkdir -p "$root/DEBIAN" "$root$lib" "$root/usr/libexec/cni" "$root/usr/bin" \
      "$root/lib/systemd/system" "$root/usr/share/doc/pycni"
  cp -a "$DIST/bin/." "$root$lib/"
  for name in "${PLUGINS[@]}" pycni; do
    [ -e "$DIST/bin/$name" ] || continue
    ln -s "../../lib/pycni/$version/$name" "$root/usr/libexec/cni/$name"
  done
  ln -s "../lib/pycni/$version/pycni" "$root/usr/bin/pycni"
  install -m 644 conf/pycni-agent.service "$root/lib/systemd/system/pycni-agent.service"
  write_deb_meta "$root" "$version" "$floor" "$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort \
      | xargs md5sum) > "$root/DEBIAN/md5sums"
  mkdir -p "$out"
  local deb=$out/pycni_${version}_amd64.deb
  dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
  rm -rf "$work"
  log "$(basename "$deb"): $(du -h "$deb" | cut -f1), Pre-Depends libc6 (>= $floor)"
}

# ------------------------------------------------------------------ RPM package
# dist/pycni-<version>-1.x86_64.rpm (rpmbuild from Debian's rpm package),
# the same layout as the .deb: the bundle in /usr/lib/pycni/<version>/, a
# symlink per plugin in /usr/libexec/cni (RHEL's plugin dir), /usr/bin/pycni,
# the agent's unit not enabled.  Requires the glibc the bundle needs; no
# automatic requires (the bundle carries its own libraries).  The directory
# /usr/libexec/cni is not claimed: containernetworking-plugins owns it there.
build_rpm() {
  [ -x "$DIST/bin/pycni" ] || die "dist/bin is missing: run ./build.sh first"
  command -v rpmbuild >/dev/null || die "rpmbuild is not installed (apt-get install rpm)"
  local version work=$TOP/build/rpm floor name
  version=$("$DIST/bin/pycni" --version | awk '{print $2}')
  floor=$(glibc_floor)
  local stage=$work/stage lib=/usr/lib/pycni/$version
  rm -rf "$work"
  mkdir -p "$stage$lib" "$stage/usr/libexec/cni" "$stage/usr/bin" "$stage/usr/lib/systemd/system"
  cp -a "$DIST/bin/." "$stage$lib/"
  local files=("%dir /usr/lib/pycni" "$lib" /usr/bin/pycni /usr/lib/systemd/system/pycni-agent.service)
  for name in "${PLUGINS[@]}" pycni; do
    [ -e "$DIST/bin/$name" ] || continue
    ln -s "../../lib/pycni/$version/$name" "$stage/usr/libexec/cni/$name"
    files+=("/usr/libexec/cni/$name")
  done
  ln -s "../lib/pycni/$version/pycni" "$stage/usr/bin/pycni"
  install -m 644 conf/pycni-agent.service "$stage/usr/lib/systemd/system/pycni-agent.service"
  {
    printf '%s\n' "Name: pycni" "Version: $version" "Release: 1" \
      "Summary: CNI plugins in Python: bridge, host-local, flannel, portmap and more" \
      "License: Apache-2.0" "BuildArch: x86_64" "AutoReqProv: no" \
      "Requires: glibc >= $floor" "Requires: zlib" "Recommends: nftables" \
      "%define debug_package %{nil}" "%define __os_install_post %{nil}" \
      "%description" \
      "Drop-in replacements for the reference CNI plugins (bridge, host-local, flannel," \
      "portmap, loopback, firewall, tuning) in /usr/libexec/cni, and pycni, an" \
      "operator's tool.  The optional agent's unit, pycni-agent, is not enabled." \
      "%install" "cp -a $stage/. %{buildroot}/" "%files"
    printf '%s\n' "${files[@]}"
  } > "$work/pycni.spec"
  rpmbuild -bb --quiet --define "_topdir $work/top" --define "_rpmdir $work/out" \
      --define "_build_id_links none" "$work/pycni.spec" >/dev/null
  mv "$work/out/x86_64/pycni-$version-1.x86_64.rpm" "$DIST/"
  rm -rf "$work"
  log "pycni-$version-1.x86_64.rpm: $(du -h "$DIST/pycni-$version-1.x86_64.rpm" | cut -f1), Requires glibc >= $floor"
}

# ------------------------------------------------------------------ distribution roots
# Minbase Debian roots (debootstrap from Debian's registry), made once per
# machine and shared by every clone: the test matrix runs the suite in them.
ROOTS=${PYCNI_ROOTS:-/var/cache/pycni-roots}
DEBIAN_MIRROR=${PYCNI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TEST_ROOT_PACKAGES=(iproute2 nftables iptables python3)

# ensure_root SUITE [PKG...]: print the path of a minbase root of SUITE
# holding PKG... (default: the test roots' packages), made if missing.  The
# cache key is the suite and the sorted package list; a root is complete
# once it has its .pycni-root stamp (made in a temp dir, renamed in place).
ensure_root() {
  local suite=$1; shift
  local pkgs=("$@")
  [ ${#pkgs[@]} -gt 0 ] || pkgs=("${TEST_ROOT_PACKAGES[@]}")
  local sorted key dir
  sorted=$(printf '%s\n' "${pkgs[@]}" | sort -u | paste -sd, -)
  key=$(printf '%s %s' "$suite" "$sorted" | sha256sum | cut -c1-12)
  dir=$ROOTS/$suite-$key
  if [ ! -f "$dir/.pycni-root" ]; then
    [ "$(id -u)" -eq 0 ] || die "making the $suite root needs root"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    mkdir -p "$ROOTS"
    (
      flock 9
      if [ ! -f "$dir/.pycni-root" ]; then
        local tmp=$ROOTS/.new-$suite-$key.$$ t0=$SECONDS
        rm -rf "$tmp"
        log "debootstrap $suite ($sorted) into $dir"
        if ! debootstrap --variant=minbase --include="$sorted" "$suite" "$tmp" "$DEBIAN_MIRROR" \
            > "$ROOTS/.new-$suite-$key.log" 2>&1; then
          tail -n 20 "$ROOTS/.new-$suite-$key.log" >&2
          rm -rf "$tmp"
          die "debootstrap $suite failed (log: $ROOTS/.new-$suite-$key.log)"
        fi
        rm -f "$tmp"/var/cache/apt/archives/*.deb
        printf 'suite=%s\npackages=%s\nmade=%s\n' "$suite" "$sorted" "$(date -u +%FT%TZ)" > "$tmp/.pycni-root"
        rm -rf "$dir"
        mv "$tmp" "$dir"
        log "$suite root ready in $((SECONDS - t0)) s"
      fi
    ) 9> "$ROOTS/.lock-$suite-$key" || exit 1
  fi
  printf '%s\n' "$dir"
}

# ------------------------------------------------------------------ main
cmd=${1:-build}
[ $# -gt 0 ] && shift
case $cmd in
  build) build ;;
  deps) deps ;;
  test)
    deps
    log "ruff check"
    "$VENV/bin/ruff" check --quiet . || die "ruff check found problems (see above)"
    build
    exec "$VENV/bin/python" -m pytest "$@" ;;
  demo)
    deps; PYCNI_SKIP_BUNDLE=1 build
    exec "$DIST/py/pycni" demo "$@" ;;
  bench)
    deps; build
    exec "$VENV/bin/python" -m bench "$@" ;;
  root) [ $# -ge 1 ] || die "usage: ./build.sh root SUITE [PKG...]"; ensure_root "$@" ;;
  image)
    # --no-build: package dist/bin as it is (the delivery tests use this)
    if [ "${1:-}" = --no-build ]; then deps_python; else deps; build; fi
    build_image ;;
  deb)
    if [ "${1:-}" = --no-build ]; then deps_python; else deps; build; fi
    build_deb ;;
  rpm)
    if [ "${1:-}" = --no-build ]; then deps_python; else deps; build; fi
    build_rpm ;;
  install) install_suite "$@" ;;
  uninstall) uninstall_suite "$@" ;;
  *) die "unknown command $cmd (build, deps, test, demo, bench, image, deb, rpm, root, install, uninstall)" ;;
esac
