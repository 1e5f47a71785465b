#!/usr/bin/env bash
# The profile-guided release build: the build to deploy, and the one the
# benchmarks measure (compare.sh makes it first; method and results:
# benches/README.md, "The profile-guided build").
#
#   bash benches/pgo.sh        # -> target/pgo/cutover (about 12 minutes)
#
# 1. builds cutover instrumented (-Cprofile-generate);
# 2. runs it through a mix of traffic on loopback (benches/pgo_train.py:
#    HTTP/1.1 GETs and POSTs, rules, sticky cookies, flips under load,
#    h2c, TLS with HTTP/1.1 and h2);
# 3. merges the profile with the toolchain's own llvm-profdata (rustup's
#    llvm-tools component, whose LLVM is rustc's);
# 4. builds the release binary again with -Cprofile-use.
#
# Installs what is missing: nginx (the training upstream), wrk, h2load
# (nghttp2-client) and openssl with apt-get, llvm-tools with rustup.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
systemctl stop nginx >/dev/null 2>&1 || true

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools >/dev/null 2>&1 ||
    rustup component add llvm-tools-preview >/dev/null 2>&1 || true
fi
if [ ! -x "$profdata" ]; then
  echo "pgo.sh: $profdata is missing: install it with 'rustup component add llvm-tools'" >&2
  exit 1
fi

out="$PWD/target/pgo"
raw="$out/raw"
rm -rf "$raw"
mkdir -p "$raw"

echo "== 1/4 instrumented build"
RUSTFLAGS="-Cprofile-generate=$raw" \
  cargo build --release --locked --bin cutover --target-dir "$out/gen"

echo "== 2/4 training run"
LLVM_PROFILE_FILE="$raw/cutover-%p-%m.profraw" \
  python3 benches/pgo_train.py "$out/gen/release/cutover"

echo "== 3/4 merging the profile"
"$profdata" merge -o "$out/cutover.profdata" "$raw"

echo "== 4/4 optimized build"
# From scratch: cargo does not track the profile's contents, and every
# crate (hyper's and tokio's too) is to be built with the new one.
rm -rf "$out/use"
RUSTFLAGS="-Cprofile-use=$out/cutover.profdata" \
  cargo build --release --locked --bin cutover --target-dir "$out/use"
cp "$out/use/release/cutover" "$out/cutover"
echo "built $out/cutover"
