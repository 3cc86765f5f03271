#!/usr/bin/env bash
# The README's test command (npm test runs `npm run build` first via pretest).
# Integration tests need root, runc and the templates that `npm run quickstart` prepares.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "npm test: the suite drives real containers and must run as root" >&2
  exit 1
fi
mapfile -t files < <(find packages/*/dist/test -name '*.test.js' | sort)
if [ "${#files[@]}" = 0 ]; then
  echo "npm test: no compiled tests found (did the build run?)" >&2
  exit 1
fi
# Files run one at a time: they start real sandboxes, and timing-based checks (CPU quota)
# need the machine's two cores to themselves.
exec node --test --test-concurrency=1 --test-timeout=300000 "$@" "${files[@]}"
