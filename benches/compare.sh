#!/usr/bin/env bash
# One command for the end-to-end comparison: installs what is missing
# (nginx, haproxy, wrk, python3) with apt-get, builds cutover in release
# mode, runs benches/compare.py and prints the report (also written to
# target/bench-report.md). Method: benches/README.md.
#
#   bash benches/compare.sh                     # everything (about 15 minutes)
#   bash benches/compare.sh --only throughput   # or memory, flip
#   bash benches/compare.sh --seconds 5
#   bash benches/compare.sh --pgo ...           # the profile-guided build
#                                               # (benches/pgo.sh) instead
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
pgo=0
args=()
for a in "$@"; do
  if [ "$a" = "--pgo" ]; then pgo=1; else args+=("$a"); fi
done
if [ $pgo = 1 ]; then
  bash benches/pgo.sh
  exec python3 benches/compare.py --binary target/pgo/cutover "${args[@]}"
fi
cargo build --release --locked
exec python3 benches/compare.py "${args[@]}"
