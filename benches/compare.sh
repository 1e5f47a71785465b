#!/usr/bin/env bash
# One command for the end-to-end comparison: installs what is missing
# (nginx, haproxy, wrk, python3) with apt-get, builds cutover, runs
# benches/compare.py and prints the report (also written to
# target/bench-report.md). Method: benches/README.md.
#
# It measures the build to deploy, the profile-guided one
# (benches/pgo.sh, ~12 minutes more); if that build cannot be made (no
# llvm-tools for this toolchain), it says so and measures the plain
# release build, as --plain does. The report names the binary it measured.
#
#   bash benches/compare.sh                     # everything (about 15 minutes after the build)
#   bash benches/compare.sh --only throughput   # or side, memory, flip, flip-tmpfs, ...
#   bash benches/compare.sh --seconds 5
#   bash benches/compare.sh --plain ...         # `cargo build --release` instead
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
# The packaged services are not wanted running in the background.
systemctl stop nginx haproxy >/dev/null 2>&1 || true
for a in "$@"; do
  case "$a" in -h|--help) exec python3 benches/compare.py --help ;; esac
done
plain=0
args=()
for a in "$@"; do
  if [ "$a" = "--plain" ]; then plain=1; elif [ "$a" != "--pgo" ]; then args+=("$a"); fi
done
if [ $plain = 0 ]; then
  if bash benches/pgo.sh; then
    exec python3 benches/compare.py --binary target/pgo/cutover "${args[@]}"
  fi
  echo "compare.sh: the profile-guided build failed (above); measuring the plain release build" >&2
fi
cargo build --release --locked
exec python3 benches/compare.py "${args[@]}"
