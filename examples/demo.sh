#!/bin/bash
# Show dkms-hook's plan for the sample system of Debian bug #1040401.
# Usage: bash examples/demo.sh [--json]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sample=$here/bug-1040401
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -a "$sample/root" "$tmp/root"
# git keeps no modification times; restore the recorded ones.
grep -v '^#' "$sample/mtimes" | while read -r when path; do
    touch -h -d "$when" "$tmp/root/$path"
done
cargo build --locked --quiet --manifest-path "$here/../Cargo.toml"
bin=$(cargo metadata --format-version 1 --no-deps --manifest-path "$here/../Cargo.toml" \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/dkms-hook
echo "\$ dkms-hook --root SAMPLE replay --dry-run $* SAMPLE/var/log/dpkg.log"
"$bin" --root "$tmp/root" replay --dry-run "$@" "$tmp/root/var/log/dpkg.log"
