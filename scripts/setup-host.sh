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
# own HTTPS "internet" (a self-signed CA) and the direct-path baseline.
readonly PACKAGES=(runc nftables debootstrap iproute2 busybox-static uidmap e2fsprogs
                   build-essential gcc make libc6-dev ca-certificates openssl curl)

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

# --- Node.js -----------------------------------------------------------------------------
command -v node >/dev/null || die "node not found: install Node.js 20 or newer"
node_version=$(node --version)
node_major=${node_version#v}
node_major=${node_major%%.*}
((node_major >= 20)) || die "Node.js $node_version is too old: Airlock needs 20 or newer"
say "node $node_version"
