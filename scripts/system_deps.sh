#!/usr/bin/env bash
# The Debian packages whisperd needs, installed when missing: one list for `make` and `.ci/run`.
#   scripts/system_deps.sh build   what `cargo build` needs (libopus for Opus, found with pkg-config)
#   scripts/system_deps.sh lint    the above, plus promtool (`prometheus`) for the chart's alert rules
#   scripts/system_deps.sh test    all of the above, plus what the tests run (sox builds test audio,
#                                  redis-server backs the multi-replica tests, chromium and
#                                  chromium-driver drive the web page's browser test)
# As root it runs apt-get; otherwise it stops at once and prints the exact command to run.
set -euo pipefail
what="${1:-build}"

need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if ! pkg-config --exists opus 2>/dev/null; then need+=(libopus-dev); fi
if [ "$what" = lint ] || [ "$what" = test ]; then
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
fi
if [ "$what" = test ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  command -v sox >/dev/null 2>&1 || need+=(sox)
  # The Redis integration tests (tests/cluster.rs) run a real redis-server on loopback.
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "whisperd needs Debian packages that are not installed: ${need[*]}" >&2
  echo "run:  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "whisperd needs: ${need[*]} (no apt-get here: install them with your package manager)" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
