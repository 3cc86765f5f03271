#!/usr/bin/env bash
# Installs what a fresh Debian 12 host lacks for Airlock, and nothing it already has.
# Idempotent and quick when everything is present: quickstart and CI run it every time.
# The host's apt configuration is never changed: Debian 13's runsc is fetched through a
# throwaway source list with its own state and cache directories.
set -euo pipefail

say() { printf 'setup-host: %s\n' "$*"; }
die() { printf 'setup-host: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, writes /usr/local/bin)"
command -v apt-get >/dev/null || die "apt-get not found: Airlock's setup supports Debian hosts"
export DEBIAN_FRONTEND=noninteractive

# --- Debian packages ---------------------------------------------------------------
# e2fsprogs: mkfs.ext4 formats sandbox layers and volumes (each its own ext4 on a loop device).
# nftables + iproute2 (ip, tc): egress control. openssl + curl: the tests' and benchmarks'
# own HTTPS "internet" (a self-signed CA) and the direct-path baseline. qemu-system-x86: the
# microvm tier (docs/microvm.md). musl-tools + linux-libc-dev: the in-sandbox agent is linked
# against musl: glibc's static start-up (CPU feature probing) costs ~8 ms under gVisor, where
# every CPUID instruction traps into the sentry.
readonly PACKAGES=(runc nftables debootstrap iproute2 busybox-static uidmap e2fsprogs
                   build-essential gcc make libc6-dev linux-libc-dev musl-tools ca-certificates
                   openssl curl qemu-system-x86)

is_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "debian packages present"
fi

# --- The Debian mirror this host already uses ----------------------------------------
# Prints the first http(s) URI whose suites include the host's codename, from one-line
# (*.list) and deb822 (*.sources) files. AIRLOCK_DEBIAN_MIRROR overrides.
host_debian_mirror() {
  if [[ -n ${AIRLOCK_DEBIAN_MIRROR:-} ]]; then
    printf '%s\n' "$AIRLOCK_DEBIAN_MIRROR"
    return
  fi
  local codename files=()
  codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || return 1
  [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
  shopt -s nullglob
  files+=(/etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  shopt -u nullglob
  ((${#files[@]})) || return 1
  awk -v want="$codename" '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " want " "))
        for (i = 1; i <= split(uris, u, " "); i++) if (u[i] ~ /^https?:\/\//) { print u[i]; found = 1; exit }
      types = ""; uris = ""; suites = ""; enabled = ""
    }
    FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
    /^[ \t]*#/ { next }
    deb822 && /^[ \t]*$/ { flush(); next }
    deb822 {
      key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, "")
      if (key == "types") types = $0; else if (key == "uris") uris = $0
      else if (key == "suites") suites = $0; else if (key == "enabled") enabled = tolower($0)
      next
    }
    $1 == "deb" {
      line = $0; sub(/^[ \t]*deb[ \t]+(\[[^]]*\][ \t]+)?/, "", line); split(line, f, /[ \t]+/)
      if (f[2] == want && f[1] ~ /^https?:\/\//) { print f[1]; found = 1; exit }
    }
    END { if (!found) flush() }
  ' "${files[@]}" | head -n1
}

# --- gVisor runsc from Debian 13 --------------------------------------------------------
# Debian 12's runsc only has the slow ptrace platform; trixie's build runs systrap.
readonly RUNSC=/usr/local/bin/runsc
# Whole output captured, first line cut in bash: `| head -n1` could SIGPIPE runsc and,
# under pipefail, read as a failure.
if [[ -x $RUNSC ]] && runsc_version=$("$RUNSC" --version 2>/dev/null); then
  say "runsc present (${runsc_version%%$'\n'*})"
else
  mirror=$(host_debian_mirror) || true
  [[ -n ${mirror:-} ]] || die "no Debian mirror found in /etc/apt/sources.list(.d); set AIRLOCK_DEBIAN_MIRROR"
  say "fetching runsc from Debian 13 (trixie) via $mirror"
  work=$(mktemp -d /tmp/airlock-setup-runsc.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/sources.d" "$work/deb"
  # apt downloads as the unprivileged _apt user: let it reach the download dirs.
  chmod 0755 "$work"
  if id _apt >/dev/null 2>&1; then chown _apt "$work/lists/partial" "$work/deb"; fi
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
    "$mirror" >"$work/trixie.list"
  apt_tmp=(-o "Dir::Etc::SourceList=$work/trixie.list"
           -o "Dir::Etc::SourceParts=$work/sources.d"
           -o "Dir::State::Lists=$work/lists"
           -o "Dir::Cache=$work/cache"
           -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
           -o "APT::Get::List-Cleanup=0")
  apt-get "${apt_tmp[@]}" update -qq
  (cd "$work/deb" && apt-get "${apt_tmp[@]}" download -qq runsc)
  debs=("$work"/deb/runsc_*.deb)
  [[ -f ${debs[0]} ]] || die "apt-get download runsc produced no .deb"
  dpkg-deb -x "${debs[0]}" "$work/root"
  [[ -x $work/root/usr/bin/runsc ]] || die "the runsc package holds no usr/bin/runsc"
  install -m 0755 "$work/root/usr/bin/runsc" "$RUNSC.airlock-new"
  mv -f "$RUNSC.airlock-new" "$RUNSC"
  runsc_version=$("$RUNSC" --version) || die "installed runsc does not run"
  say "installed $RUNSC (${runsc_version%%$'\n'*})"
fi

# --- Guest kernel for the microvm tier ----------------------------------------------------
# Debian's cloud kernel (linux-image-cloud-amd64's real package), unpacked without installing
# it: vmlinuz, its release, and the few modules the guest's init loads (keep in sync with
# GUEST_MODULES in packages/engine/src/runtime/microvm/assets.ts).
readonly MICROVM_KERNEL_DIR=${AIRLOCK_MICROVM_KERNEL_DIR:-/var/lib/airlock/microvm/kernel}
readonly GUEST_MODULES=(virtio_ring virtio virtio_mmio virtio_blk virtio_console failover net_failover
                        virtio_net overlay fuse virtiofs)
guest_kernel_complete() {
  [[ -f $MICROVM_KERNEL_DIR/vmlinuz && -f $MICROVM_KERNEL_DIR/release ]] || return 1
  local m
  for m in "${GUEST_MODULES[@]}"; do [[ -f $MICROVM_KERNEL_DIR/modules/$m.ko ]] || return 1; done
}
if guest_kernel_complete; then
  say "microvm guest kernel present ($(cat "$MICROVM_KERNEL_DIR/release"))"
else
  apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || apt-get update -qq
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  [[ -n $kpkg ]] || die "linux-image-cloud-amd64 names no kernel package"
  say "fetching the microvm guest kernel ($kpkg)"
  kwork=$(mktemp -d /tmp/airlock-setup-kernel.XXXXXX)
  chmod 0755 "$kwork"
  if id _apt >/dev/null 2>&1; then chown _apt "$kwork"; fi
  (cd "$kwork" && apt-get download -qq "$kpkg")
  kdebs=("$kwork"/linux-image-*.deb)
  [[ -f ${kdebs[0]} ]] || { rm -rf "$kwork"; die "apt-get download $kpkg produced no .deb"; }
  dpkg-deb -x "${kdebs[0]}" "$kwork/root"
  krel=$(ls "$kwork/root/lib/modules" | head -n1)
  [[ -n $krel && -f $kwork/root/boot/vmlinuz-$krel ]] || { rm -rf "$kwork"; die "$kpkg holds no vmlinuz"; }
  knew=$MICROVM_KERNEL_DIR.airlock-new
  rm -rf "$knew"
  mkdir -p "$knew/modules"
  install -m 0644 "$kwork/root/boot/vmlinuz-$krel" "$knew/vmlinuz"
  install -m 0644 "$kwork/root/boot/config-$krel" "$knew/config"
  for m in "${GUEST_MODULES[@]}"; do
    ko=$(find "$kwork/root/lib/modules/$krel/kernel" -name "$m.ko" -print -quit)
    [[ -n $ko ]] || { rm -rf "$kwork" "$knew"; die "$kpkg has no module $m"; }
    install -m 0644 "$ko" "$knew/modules/$m.ko"
  done
  printf '%s\n' "$krel" >"$knew/release"
  rm -rf "$kwork"
  mkdir -p "$(dirname "$MICROVM_KERNEL_DIR")"
  rm -rf "$MICROVM_KERNEL_DIR"
  mv "$knew" "$MICROVM_KERNEL_DIR"
  say "installed the microvm guest kernel $krel in $MICROVM_KERNEL_DIR"
fi

# --- Node.js -----------------------------------------------------------------------------
command -v node >/dev/null || die "node not found: install Node.js 20 or newer"
node_version=$(node --version)
node_major=${node_version#v}
node_major=${node_major%%.*}
((node_major >= 20)) || die "Node.js $node_version is too old: Airlock needs 20 or newer"
say "node $node_version"
