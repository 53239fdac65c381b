#!/usr/bin/env bash
# pycni build, install and test driver.
#
#   ./build.sh [build]                  build dist/py (launchers) and dist/bin (bundle, in a Debian 11 root)
#   ./build.sh deps                     install system packages (apt) and the Python venv
#   ./build.sh test [pytest args]       deps + roots + build + every test tier, each stage timed
#   ./build.sh demo                     deps + build + the two-node flannel demo
#   ./build.sh bench [args]             benchmarks beside the Go reference plugins
#   ./build.sh image [--no-build]       dist/pycni-image.tar: OCI archive of the bundle and its installer
#   ./build.sh deb [--no-build]         dist/pycni_<version>_amd64.deb: the bundle in /usr/libexec/cni
#   ./build.sh rpm [--no-build]         dist/pycni-<version>-1.x86_64.rpm, the same layout (rpmbuild)
#   ./build.sh roots                    make every cached root the build and the tests use
#   ./build.sh root SUITE [PKG...]      print the path of a cached minbase Debian root (debootstrap)
#   ./build.sh build-root               print the path of the bundle's cached build root
#   ./build.sh testdeps PYVER           print the path of the unit tier's packages for that python3
#   ./build.sh install [--form bundle|py] [DIR] [pycni install options]
#                                       pycni install: default --form py, DIR /usr/libexec/cni
#   ./build.sh uninstall [DIR]          pycni uninstall: remove it, restore what it replaced
set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$TOP"
VENV=$TOP/.venv
DIST=$TOP/dist
# the build host's python3 (>= 3.11), which build.sh's venv runs on
PYTHON=${PYCNI_PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
# the interpreter the dist/py launchers name: the node's own python3, 3.9 or
# newer (the launcher refuses an older one itself); pycni install may point
# them at another one it finds
LAUNCHER_PYTHON=${PYCNI_LAUNCHER_PYTHON:-/usr/bin/python3}
# the oldest glibc the bundle runs on: it is built in a Debian 11 root, and
# the build fails when an ELF file of dist/bin needs a newer GLIBC_ version
GLIBC_FLOOR=2.31
PLUGINS=(bridge host-local flannel portmap loopback firewall tuning)
APT_PACKAGES=(
  python3 python3-venv python3-dev libpython3.11
  iproute2 iptables nftables conntrack iputils-ping netcat-openbsd tcpdump ethtool
  containernetworking-plugins golang-go golang-github-appc-cni-dev
  podman containerd busybox-static uidmap debootstrap buildah rpm binutils
)

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ stages
# `stage NAME CMD...` runs a step of `./build.sh test` and prints its wall
# time (a failure stops the run, set -e); `tier NAME PYTEST-ARGS...` runs a
# test tier, records a failure and goes on.  The summary prints at exit.
STAGES=()
FAILED_TIERS=()
T_START=$EPOCHREALTIME
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
stage_done() {   # NAME T0 STATUS
  local dt
  dt=$(secs_since "$2")
  STAGES+=("$(printf '%-36s %7s s  %s' "$1" "$dt" "$3")")
  log "stage $1: $dt s ($3)"
}
stage() {
  local stage_name=$1 stage_t0=$EPOCHREALTIME
  shift
  log "stage $stage_name"
  "$@"
  stage_done "$stage_name" "$stage_t0" ok
}
tier() {
  local tier_name=$1 tier_t0=$EPOCHREALTIME rc=0
  shift
  log "stage $tier_name: pytest $*"
  "$VENV/bin/python" -m pytest "$@" || rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ]; then   # 5: nothing collected (e.g. -k in another tier)
    stage_done "$tier_name" "$tier_t0" ok
  else
    stage_done "$tier_name" "$tier_t0" "FAILED (pytest rc $rc)"
    FAILED_TIERS+=("$tier_name")
  fi
}
stage_summary() {
  [ ${#STAGES[@]} -gt 0 ] || return 0
  printf '\nstage times (wall):\n' >&2
  printf '  %s\n' "${STAGES[@]}" >&2
  printf '  %-36s %7s s\n' total "$(secs_since "$T_START")" >&2
}

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

# in_root ROOT [tools.roots options] -- CMD...: CMD chrooted into ROOT, in a
# private mount namespace, the root read-only (see tools/roots.py)
in_root() { "$PYTHON" -m tools.roots run "$@"; }

# launcher NAME: the dist/py launcher of command NAME.  Its first line names
# the interpreter; the check below it parses on any python3 (no f-strings,
# nothing imported unless it refuses): below 3.9 it says why, and a plugin
# answers with a CNI error on stdout, as the runtime expects.
launcher() {
  local name=$1 plugin=True
  [ "$name" = pycni ] && plugin=False
  cat <<EOF
#!$LAUNCHER_PYTHON -IS
# pycni-launcher: runs "$name" of the pycni suite on this node's python3 (3.9 or newer)
import sys
if sys.version_info < (3, 9):
    why = "pycni needs python3 3.9 or newer; %s is %s" % (sys.executable, sys.version.split()[0])
    fix = ("install python3 >= 3.9 and run pycni install again (it finds the interpreter), "
           "or install the bundle form, which needs no python3 (glibc >= $GLIBC_FLOOR)")
    sys.stderr.write("$name: %s: %s\\n" % (why, fix))
    if $plugin:
        import json
        try:
            v = json.loads(sys.stdin.read(1 << 20)).get("cniVersion")
        except Exception:
            v = None
        if not (isinstance(v, str) and 0 < len(v) < 16 and v.replace(".", "").isdigit()):
            v = "1.1.0"
        sys.stdout.write(json.dumps({"cniVersion": v, "code": 999, "msg": why, "details": fix}) + "\\n")
    sys.exit(1)
from os.path import dirname, realpath
sys.path[0:0] = [dirname(realpath(__file__)) + "/pycni.d"]
from cnilib.main import main
main("$name")
EOF
}

build_py() {
  local out=$DIST/py name
  case $LAUNCHER_PYTHON in /*) ;; *) die "PYCNI_LAUNCHER_PYTHON must be an absolute path, not $LAUNCHER_PYTHON" ;; esac
  rm -rf "$out.new"
  mkdir -p "$out.new/pycni.d"
  cp -a cnilib plugins "$out.new/pycni.d/"
  find "$out.new/pycni.d" -name __pycache__ -prune -exec rm -rf {} +
  rm -rf "$out.new/pycni.d/cnilib/cni/schema"   # pydantic models: build/test time only
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$out.new/pycni.d" \
      "$(grep '^pyroute2==' requirements.txt)"
  rm -rf "$out.new/pycni.d/bin" "$out.new/pycni.d"/*.dist-info
  for name in "${PLUGINS[@]}" pycni; do
    [ "$name" = pycni ] || plugin_exists "$name" || continue
    launcher "$name" > "$out.new/$name"
    chmod 755 "$out.new/$name"
  done
  # bytecode next to the sources, checked by hash only (no stat per import),
  # for the host's python3 and, unless iterating (PYCNI_SKIP_BUNDLE=1), for
  # Debian 11's and 13's (3.9 in the build root, 3.13 in the test root): a
  # plugin never compiles its imports, even from a read-only dir.  Other
  # pythons (3.10, 3.12) write their own on the first exec where they can.
  "$PYTHON" -m compileall -q -j0 --invalidation-mode unchecked-hash "$out.new/pycni.d" >/dev/null
  if [ "${PYCNI_SKIP_BUNDLE:-0}" != 1 ]; then
    local r r11 r13
    r11=$(ensure_build_root)
    r13=$(ensure_root trixie)
    for r in "$r11" "$r13"; do
      in_root "$r" --bind-rw "$out.new/pycni.d:/tmp/pycni.d" -- \
          python3 -m compileall -q --invalidation-mode unchecked-hash /tmp/pycni.d >/dev/null
    done
  fi
  rm -rf "$out"
  mv "$out.new" "$out"
  local pycs
  pycs=$(ls "$out/pycni.d/cnilib/__pycache__" | sed -n 's/^main\.cpython-3\([0-9]*\)\.pyc$/3.\1/p' | sort -V)
  log "dist/py: $(ls "$out" | grep -v pycni.d | tr '\n' ' ')(bytecode for python3 $(echo $pycs))"
}

# The bundle is built in a Debian 11 root (glibc 2.31) of its own, with that
# root's python3 3.9 and its libpython3.9, as manylinux builds on its oldest
# target: nothing it links or carries needs a newer glibc.
#
# Start-up is most of a plugin exec, so the bundle starts the way the py
# form does (issue 20; README "Benchmarks"):
# - --noarchive: modules are .pyc files under .pycni/, imported by Python's
#   own path finder: no PYZ archive whose table of contents every exec
#   unmarshals, no zipimport of base_library.zip (-1.5 ms of CPU);
# - PyInstaller's inspect, multiprocessing and pkgutil runtime hooks are
#   dropped: they import inspect, zipfile, multiprocessing, subprocess, and
#   pkgutil's importlib.util, typing and re (-10 ms for pkgutil's alone),
#   for features the plugins never use (no multiprocessing spawn, no
#   inspect.getsourcefile, no pkgutil.iter_modules);
# - the bootstrap's ctypes patch is made lazy (tools/pyi_ctypes_hook.py in
#   place of PyInstaller's pyimod03_ctypes): ctypes is imported when our
#   code imports it, not on every start (-1.7 ms).
# Bytecode optimisation (optimize=2) was measured and left out: no faster.
build_bin() {
  local work=$TOP/build/pyi out=$DIST/bin broot name f m
  broot=$(ensure_build_root)
  rm -rf "$work" "$out"
  mkdir -p "$work/src" "$work/home"
  cp -a cnilib plugins "$work/src/"
  find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
  rm -rf "$work/src/cnilib/cni/schema"
  cp tools/pyi_ctypes_hook.py "$work/pyimod03_ctypes.py"
  local hidden=()
  for f in $(find cnilib plugins -name '*.py' | sort); do
    case $f in cnilib/cni/schema/*) continue ;; esac
    m=${f%.py}; m=${m//\//.}; m=${m%.__init__}
    hidden+=(--hidden-import "$m")
  done
  printf 'from cnilib.main import main\nmain()\n' > "$work/entry.py"
  local pyi=(--bind-rw "$work:/tmp/pyi" --cwd /tmp/pyi --env HOME=/tmp/pyi/home
             --env PYINSTALLER_CONFIG_DIR=/tmp/pyi/home/pyinstaller --env PYTHONDONTWRITEBYTECODE=1 --)
  in_root "$broot" "${pyi[@]}" /opt/pycni-build/bin/pyi-makespec --onedir --strip --debug noarchive \
      --name pycni --contents-directory .pycni --specpath /tmp/pyi \
      --paths /tmp/pyi/src "${hidden[@]}" \
      --collect-submodules pyroute2.netlink.rtnl \
      --exclude-module pydantic --exclude-module pydantic_core --exclude-module cnilib.cni.schema \
      --exclude-module tkinter \
      /tmp/pyi/entry.py >/dev/null
  grep -q "^pyz = PYZ(a.pure)$" "$work/pycni.spec" && grep -q "^    noarchive=True,$" "$work/pycni.spec" && ! grep -q "^    debug=True," "$work/pycni.spec" ||
      die "unexpected PyInstaller spec layout in $work/pycni.spec"
  # the spec's edits, after its PYZ: the runtime hooks out, the lazy ctypes
  # patch in place of the bootstrap's (compiled by the root's python3, as
  # PyInstaller compiles its own bootstrap modules)
  cat > "$work/spec-edits.py" <<'EOF'
a.scripts = [s for s in a.scripts if s[0] not in ("pyi_rth_inspect", "pyi_rth_multiprocessing", "pyi_rth_pkgutil")]
import py_compile
py_compile.compile("/tmp/pyi/pyimod03_ctypes.py", "/tmp/pyi/pyimod03_ctypes.pyc", doraise=True)
if [n for n, _, _ in pyz.dependencies].count("pyimod03_ctypes") != 1:
    raise SystemExit("pycni.spec: PyInstaller's bootstrap has no pyimod03_ctypes to replace")
pyz.dependencies = [(n, "/tmp/pyi/pyimod03_ctypes.pyc" if n == "pyimod03_ctypes" else p, t)
                    for n, p, t in pyz.dependencies]
EOF
  sed -i '/^pyz = PYZ(a.pure)$/r '"$work/spec-edits.py" "$work/pycni.spec"
  in_root "$broot" "${pyi[@]}" /opt/pycni-build/bin/pyinstaller --noconfirm --clean --log-level WARN \
      --distpath /tmp/pyi/dist --workpath /tmp/pyi/build /tmp/pyi/pycni.spec >/dev/null
  mv "$work/dist/pycni" "$out"
  for name in "${PLUGINS[@]}"; do
    plugin_exists "$name" && ln -sf pycni "$out/$name"
  done
  check_glibc "$out"
  log "dist/bin: $(ls "$out" | tr '\n' ' ')"
}

# the glibc floor: no ELF file of the bundle may need a GLIBC_ symbol
# version above it (their version needs, read as auditwheel does)
check_glibc() {
  "$PYTHON" -m tools.elfcheck --glibc "$GLIBC_FLOOR" "$1" >&2 ||
    die "$1 would not start on glibc $GLIBC_FLOOR (see above): it must be built in the Debian 11 build root"
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
# Thin calls to `pycni install` / `pycni uninstall` (cnilib/ops/install/),
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
from cnilib.ops.install import cli as install
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
# pycni on PATH, the agent's unit and the gc service and timer installed but
# not enabled.  dpkg replaces
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
    " runtime's plugin dir there.  The optional agent's unit, pycni-agent, and" \
    " the leak collector's timer, pycni-gc.timer (pycni gc --auto), are" \
    " installed but not enabled." > "$root/DEBIAN/control"
  printf '%s\n' '#!/bin/sh' 'set -e' \
    '# the agent and gc units are installed, never enabled or started here' \
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
  for name in pycni-agent.service pycni-gc.service pycni-gc.timer; do
    install -m 644 "conf/$name" "$root/lib/systemd/system/$name"
  done
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
# the agent's and gc's units not enabled.  Requires the glibc the bundle needs; no
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
  local files=("%dir /usr/lib/pycni" "$lib" /usr/bin/pycni /usr/lib/systemd/system/pycni-agent.service
               /usr/lib/systemd/system/pycni-gc.service /usr/lib/systemd/system/pycni-gc.timer)
  for name in "${PLUGINS[@]}" pycni; do
    [ -e "$DIST/bin/$name" ] || continue
    ln -s "../../lib/pycni/$version/$name" "$stage/usr/libexec/cni/$name"
    files+=("/usr/libexec/cni/$name")
  done
  ln -s "../lib/pycni/$version/pycni" "$stage/usr/bin/pycni"
  for name in pycni-agent.service pycni-gc.service pycni-gc.timer; do
    install -m 644 "conf/$name" "$stage/usr/lib/systemd/system/$name"
  done
  {
    printf '%s\n' "Name: pycni" "Version: $version" "Release: 1" \
      "Summary: CNI plugins in Python: bridge, host-local, flannel, portmap and more" \
      "License: Apache-2.0" "BuildArch: x86_64" "AutoReqProv: no" \
      "Requires: glibc >= $floor" "Requires: zlib" "Recommends: nftables" \
      "%define debug_package %{nil}" "%define __os_install_post %{nil}" \
      "%description" \
      "Drop-in replacements for the reference CNI plugins (bridge, host-local, flannel," \
      "portmap, loopback, firewall, tuning) in /usr/libexec/cni, and pycni, an" \
      "operator's tool.  The optional agent's unit, pycni-agent, and the leak" \
      "collector's timer, pycni-gc.timer, are not enabled." \
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
# machine and shared by every clone: the test matrix runs the suite in them,
# the bundle is built in one.  Also there: the unit tier's packages for each
# root's python3.
ROOTS=${PYCNI_ROOTS:-/var/cache/pycni-roots}
DEBIAN_MIRROR=${PYCNI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${PYCNI_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
TEST_ROOT_PACKAGES=(iproute2 nftables iptables python3)
TEST_SUITES=(bullseye bookworm trixie)
# the bundle's build root: Debian 11 with its python3 3.9, the shared
# libpython3.9 PyInstaller embeds, venv for PyInstaller, binutils (strip)
BUILD_SUITE=bullseye
BUILD_ROOT_PACKAGES=(python3 libpython3.9 python3-venv binutils)

# cached_root NAME KEYTEXT SUITE PKGS_CSV [PROVISION]: print the path of the
# cached root $ROOTS/NAME-<hash of KEYTEXT>, made if missing: debootstrap
# SUITE with PKGS_CSV, then PROVISION TMPDIR when given.  A root is complete
# once it has its .pycni-root stamp (made in a temp dir, renamed in place),
# under a lock per key, so parallel builds and tests wait for one maker.
cached_root() {
  local name=$1 keytext=$2 suite=$3 pkgs=$4 provision=${5:-}
  local key dir
  key=$(printf '%s' "$keytext" | sha256sum | cut -c1-12)
  dir=$ROOTS/$name-$key
  if [ ! -f "$dir/.pycni-root" ]; then
    [ "$(id -u)" -eq 0 ] || die "making the $name root needs root"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    mkdir -p "$ROOTS"
    (
      flock 9
      if [ ! -f "$dir/.pycni-root" ]; then
        local tmp=$ROOTS/.new-$name-$key.$$ logf=$ROOTS/.new-$name-$key.log t0=$SECONDS
        rm -rf "$tmp"
        log "debootstrap $suite ($pkgs) into $dir"
        if ! debootstrap --variant=minbase --include="$pkgs" "$suite" "$tmp" "$DEBIAN_MIRROR" \
            > "$logf" 2>&1; then
          tail -n 20 "$logf" >&2
          rm -rf "$tmp"
          die "debootstrap $suite failed (log: $logf)"
        fi
        if [ -n "$provision" ] && ! "$provision" "$tmp" >> "$logf" 2>&1; then
          tail -n 30 "$logf" >&2
          rm -rf "$tmp"
          die "provisioning the $name root failed (log: $logf)"
        fi
        rm -f "$tmp"/var/cache/apt/archives/*.deb
        printf 'suite=%s\npackages=%s\nkey=%s\nmade=%s\n' "$suite" "$pkgs" "$keytext" \
            "$(date -u +%FT%TZ)" > "$tmp/.pycni-root"
        rm -rf "$dir"
        mv "$tmp" "$dir"
        log "$name root ready in $((SECONDS - t0)) s"
      fi
    ) 9> "$ROOTS/.lock-$name-$key" || exit 1
  fi
  printf '%s\n' "$dir"
}

# ensure_root SUITE [PKG...]: a plain minbase root of SUITE holding PKG...
# (default: the test roots' packages), keyed by the suite and the sorted list
ensure_root() {
  local suite=$1; shift
  local pkgs=("$@")
  [ ${#pkgs[@]} -gt 0 ] || pkgs=("${TEST_ROOT_PACKAGES[@]}")
  local sorted
  sorted=$(printf '%s\n' "${pkgs[@]}" | sort -u | paste -sd, -)
  cached_root "$suite" "$suite $sorted" "$suite" "$sorted"
}

# the build root, past debootstrap: the release's point and security updates
# (debootstrap installs the release as first published), then a venv at
# /opt/pycni-build with PyInstaller from wheels fetched here on the host:
# pip in the chroot has neither this machine's CA bundle nor its pip
# configuration, so it installs with --no-index from what it is given
provision_build_root() {
  local tmp=$1 wheels
  cat > "$tmp/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $BUILD_SUITE main
deb $DEBIAN_MIRROR $BUILD_SUITE-updates main
deb $DEBIAN_SECURITY_MIRROR $BUILD_SUITE-security main
EOF
  in_root "$tmp" --rw-root --env DEBIAN_FRONTEND=noninteractive -- \
      sh -c 'apt-get update -qq && apt-get -y -qq -o Dpkg::Use-Pty=0 upgrade && apt-get clean'
  wheels=$(mktemp -d)
  if ! "$VENV/bin/pip" download -q --disable-pip-version-check --dest "$wheels" \
      --python-version 3.9 --only-binary=:all: --no-deps -r requirements-bundle.txt; then
    rm -rf "$wheels"
    return 1
  fi
  cp requirements-bundle.txt "$wheels/"
  in_root "$tmp" --rw-root --bind "$wheels:/tmp/wheels" -- sh -c \
      'python3 -m venv /opt/pycni-build && /opt/pycni-build/bin/pip install -q --disable-pip-version-check --no-index --no-deps --find-links /tmp/wheels -r /tmp/wheels/requirements-bundle.txt' ||
      { rm -rf "$wheels"; return 1; }
  rm -rf "$wheels"
}

ensure_build_root() {
  local sorted
  sorted=$(printf '%s\n' "${BUILD_ROOT_PACKAGES[@]}" | sort -u | paste -sd, -)
  cached_root "build-$BUILD_SUITE" \
      "$BUILD_SUITE $sorted updates+security $(sha256sum < requirements-bundle.txt | cut -c1-16)" \
      "$BUILD_SUITE" "$sorted" provision_build_root
}

# ensure_testdeps PYVER: print the path of a site-packages dir holding the
# unit tier's packages for python3 PYVER (3.9, 3.11, 3.13), installed here on
# the host with pip --target for that Python and bound into the root beside
# its interpreter (the root itself never gets them).  3.9 and 3.10 take the
# second pinned set (requirements-py39.txt, every package named); newer ones
# the main pins' test packages, their dependencies resolved for that Python.
ensure_testdeps() {
  local pyver=$1 reqs nodeps=() key dir
  case $pyver in
    3.9|3.10) reqs=$(grep -E '^[A-Za-z0-9_.-]+==' requirements-py39.txt); nodeps=(--no-deps) ;;
    3.1[1-9]) reqs=$(grep -E '^(pytest|hypothesis|pydantic|pydantic-core|pyroute2)==' requirements.txt) ;;
    *) die "no unit tier packages for python3 $pyver" ;;
  esac
  key=$(printf '%s\n%s\n' "$pyver" "$reqs" | sha256sum | cut -c1-12)
  dir=$ROOTS/testdeps-py$pyver-$key
  if [ ! -f "$dir/.pycni-testdeps" ]; then
    mkdir -p "$ROOTS"
    (
      flock 9
      if [ ! -f "$dir/.pycni-testdeps" ]; then
        local tmp=$ROOTS/.new-testdeps-py$pyver-$key.$$
        rm -rf "$tmp"
        log "unit tier packages for python3 $pyver into $dir"
        printf '%s\n' "$reqs" > "$tmp.txt"
        if ! "$VENV/bin/pip" install -q --disable-pip-version-check --target "$tmp/site-packages" \
            --python-version "$pyver" --implementation cp --platform manylinux2014_x86_64 \
            --only-binary=:all: "${nodeps[@]}" -r "$tmp.txt"; then
          rm -rf "$tmp" "$tmp.txt"
          die "pip could not fetch the unit tier's packages for python3 $pyver"
        fi
        rm -f "$tmp.txt"
        rm -rf "$tmp/site-packages/bin"
        printf '%s\n' "$reqs" > "$tmp/.pycni-testdeps"
        rm -rf "$dir"
        mv "$tmp" "$dir"
      fi
    ) 9> "$ROOTS/.lock-testdeps-py$pyver-$key" || exit 1
  fi
  printf '%s\n' "$dir/site-packages"
}

# every root and package set the build and the tests use, made in parallel
# (debootstrap waits on the network more than on the CPU)
ensure_roots() {
  local pids=() s v rc=0
  for s in "${TEST_SUITES[@]}"; do
    ensure_root "$s" > /dev/null &
    pids+=($!)
  done
  ensure_build_root > /dev/null &
  pids+=($!)
  for v in 3.9 3.11 3.13; do
    ensure_testdeps "$v" > /dev/null &
    pids+=($!)
  done
  for s in "${pids[@]}"; do
    wait "$s" || rc=1
  done
  [ "$rc" -eq 0 ] || die "making the roots failed (see above)"
}

# ------------------------------------------------------------------ main
# the tiers `./build.sh test` runs, one pytest each, in this order (then any other tests/ dir)
TIERS=(unit integration e2e reliability distro)

run_tests() {
  trap stage_summary EXIT
  stage deps deps
  stage ruff ruff_check
  stage roots ensure_roots
  stage build build
  if [ $# -gt 0 ]; then
    tier "pytest $*" "$@"
  else
    local t d tiers=("${TIERS[@]}")
    for d in tests/*/; do           # a tier added later is never left out
      t=$(basename "$d")
      [[ " ${tiers[*]} " == *" $t "* ]] || ! compgen -G "$d/test_*.py" >/dev/null || tiers+=("$t")
    done
    for t in "${tiers[@]}"; do
      tier "$t" "tests/$t"
    done
  fi
  [ ${#FAILED_TIERS[@]} -eq 0 ] || die "failed: ${FAILED_TIERS[*]}"
}

ruff_check() {
  "$VENV/bin/ruff" check --quiet . || die "ruff check found problems (see above)"
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case $cmd in
  build) build ;;
  deps) trap stage_summary EXIT; stage deps deps ;;
  test) run_tests "$@" ;;
  demo)
    deps; PYCNI_SKIP_BUNDLE=1 build
    exec "$DIST/py/pycni" demo "$@" ;;
  bench)
    deps; build
    exec "$VENV/bin/python" -m bench "$@" ;;
  roots) deps_python; ensure_roots ;;
  root) [ $# -ge 1 ] || die "usage: ./build.sh root SUITE [PKG...]"; ensure_root "$@" ;;
  build-root) deps_python; ensure_build_root ;;
  testdeps) [ $# -eq 1 ] || die "usage: ./build.sh testdeps PYVER"; deps_python; ensure_testdeps "$1" ;;
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
  *) die "unknown command $cmd (build, deps, test, demo, bench, image, deb, rpm, roots, root, build-root, testdeps, install, uninstall)" ;;
esac
