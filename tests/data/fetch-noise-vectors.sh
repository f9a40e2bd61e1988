#!/usr/bin/env bash
# Fetch the published Noise test vectors (cacophony.txt and snow.txt) as test data.
#
# They ship inside the `snow` crate on crates.io (tests/vectors/); crates.io is one of the
# registries this project may use, so cargo fetches the crate and we copy the two files to
# tests/data/noise-vectors/ (git-ignored: the vectors are fetched, never committed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/noise-vectors"
if [[ -s $dest/cacophony.txt && -s $dest/snow.txt ]]; then
  echo "noise vectors already present in $dest"; exit 0
fi
command -v cargo >/dev/null || { echo "fetch-noise-vectors: cargo is required" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src"
cat >"$tmp/Cargo.toml" <<'TOML'
[package]
name = "noise-vector-fetch"
version = "0.0.0"
edition = "2021"
[dependencies]
snow = "=0.9.6"
TOML
echo 'fn main() {}' >"$tmp/src/main.rs"
(cd "$tmp" && cargo fetch -q)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/snow-0.9.6/tests/vectors 2>/dev/null | head -n1)
[[ -n $src && -s $src/cacophony.txt && -s $src/snow.txt ]] || { echo "fetch-noise-vectors: vectors not found in the snow crate" >&2; exit 1; }
mkdir -p "$dest"
cp "$src/cacophony.txt" "$src/snow.txt" "$dest/"
(cd "$dest" && sha256sum cacophony.txt snow.txt)
echo "wrote $dest"
