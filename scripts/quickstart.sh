#!/usr/bin/env bash
# `npm run quickstart`: from a fresh Debian 12 machine to a working `airlock` command.
# Installs what the host lacks, builds, prepares the templates, runs a demo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n==> %s\n' "$*"; }

step "host packages and runtimes"
bash scripts/setup-host.sh

step "npm install"
npm install --no-audit --no-fund
# better-sqlite3 is a native addon: its install script (approved by `allowScripts` in the
# root package.json) must have built it, or nothing that stores state can start.
if ! (cd packages/engine && node -e "require('better-sqlite3')") 2>/dev/null; then
  echo "quickstart: better-sqlite3's native build is missing; rebuilding it" >&2
  npm rebuild better-sqlite3
  (cd packages/engine && node -e "require('better-sqlite3')")
fi

step "build"
npm run build

step "templates"
node scripts/ensure-templates.mjs

step "airlock on PATH"
cli="$PWD/packages/cli/dist/src/main.js"
[[ -f $cli ]] || { echo "quickstart: $cli was not built" >&2; exit 1; }
chmod +x "$cli"
# npm links a workspace's bin only when its target existed at install time: link it now that it is built.
npm rebuild @airlock/cli --silent
ln -sf "$cli" /usr/local/bin/airlock
echo "airlock -> $cli (and ./node_modules/.bin/airlock)"

# demo ----------------------------------------------------------------------------------
# An agent-style task: code the "agent" wrote runs in a throwaway sandbox with limits, and
# what it must not do (use the network, eat the machine's memory) fails at the boundary.
if [[ ${AIRLOCK_SKIP_DEMO:-} == 1 ]]; then
  echo "quickstart: demo skipped (AIRLOCK_SKIP_DEMO=1)"
  exit 0
fi
airlock=./node_modules/.bin/airlock
[[ -x $airlock ]] || airlock="node $cli"

step "demo: the host"
$airlock doctor || true

step "demo: an agent's analysis script, in a sandbox (256 MiB, 1 CPU, 60 s, no network)"
$airlock run --template base --memory 256m --cpus 1 --pids 64 --timeout 60s -- python3 - <<'PY'
import json, os, platform, socket, statistics
data = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
os.makedirs("/work/out", exist_ok=True)
report = {"mean": statistics.mean(data), "median": statistics.median(data), "uid": os.getuid(),
          "hostname": platform.node(), "processes_visible": len([p for p in os.listdir("/proc") if p.isdigit()])}
try:
    socket.create_connection(("198.51.100.7", 80), timeout=2)
    report["network"] = "reachable (unexpected!)"
except OSError as e:
    report["network"] = f"refused: {e.strerror or e}"
json.dump(report, open("/work/out/report.json", "w"))
print(json.dumps(report, indent=2))
PY

step "demo: the same agent tries to grab 1 GiB with a 64 MiB limit"
set +e
$airlock run --template base --memory 64m --timeout 30s -- python3 -c 'x = bytearray(1 << 30); print("got it")'
code=$?
set -e
echo "exit code: $code (137 = killed by the memory limit)"
echo
echo "Airlock is ready. Try: airlock run -- sh -c 'id; uname -a; ls /'"
