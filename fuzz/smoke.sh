#!/usr/bin/env bash
# Run every fuzz target for a bounded time (default 60 s each) from its
# seed corpus in fuzz/corpus/; fails on the first crash, whose input is
# left in fuzz/artifacts/TARGET/. Long runs: SECONDS_EACH=3600 bash fuzz/smoke.sh
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain it
# runs with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
secs="${SECONDS_EACH:-60}"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  echo "== $target ($secs s)"
  # A scratch copy of the seeds: new inputs found in a smoke run stay out
  # of the repository.
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  cargo fuzz run -O "$target" "$work" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|==[0-9]+== ERROR)|panicked' || true
  rm -rf "$work"
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "$target: crash found: $(ls "artifacts/$target"/crash-*)" >&2
    exit 1
  fi
done
echo "fuzz smoke: clean"
