#!/bin/bash
# dkms-hook's main job on the sample system of Debian bug #1040401
# (examples/bug-1040401/), in a throwaway copy: `status` finds the module of
# 6.1.0-50-amd64 stale after linux-kbuild-6.1 was upgraded in place, the
# hook apt runs after dpkg (DPkg::Post-Invoke) rebuilds it, and `status`
# finds it fresh. Nothing outside the copy is read or changed; no root
# needed.
#   bash examples/demo.sh
#
# The copy is a whole system under `--root`: dpkg's database and log, the
# kernels' build trees, the dkms tree. dkms, modinfo and depmod are the
# integration tests' stand-ins (tests/integration/fake-*), which act on the
# copy only: the stand-in dkms "builds" by writing a placeholder module, as
# real dkms would write the built one. The lines are those apt would show.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sample=$here/bug-1040401
stand_ins=$here/../tests/integration
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
cp -a "$sample/root" "$root"
# git keeps no modification times; restore the recorded ones.
grep -v '^#' "$sample/mtimes" | while read -r when path; do
    touch -h -d "$when" "$root/$path"
done
# dkms-hook was installed before the transaction that upgraded
# linux-kbuild-6.1 (`apt-get install linux-headers-6.1.0-56-amd64`): its
# dpkg.log cursor stands at that transaction's start.
log=$root/var/log/dpkg.log
cut=$(grep -n -m1 '^2026-11-23 20:57:34 startup archives unpack' "$log" | cut -d: -f1)
head -n "$((cut - 1))" "$log" > "$tmp/before"
tail -n "+$cut" "$log" > "$tmp/transaction"
cp "$tmp/before" "$log"

# DKMS_HOOK_BIN names a built binary (the integration tests run the demo so).
bin=${DKMS_HOOK_BIN:-}
if [ -z "$bin" ]; then
    cargo build --locked --quiet --manifest-path "$here/../Cargo.toml"
    bin=$(cargo metadata --format-version 1 --no-deps --manifest-path "$here/../Cargo.toml" \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/dkms-hook
fi
export DKMS_HOOK_DKMS=$stand_ins/fake-dkms DKMS_HOOK_MODINFO=$stand_ins/fake-modinfo \
    DKMS_HOOK_DEPMOD=$stand_ins/fake-depmod TZ=UTC
unset DKMS_HOOK_SUSPEND DKMS_HOOK_ROOT DKMS_HOOK_LOG
hook() { "$bin" --root "$root" "$@" 2>&1; }
hook init
cat "$tmp/transaction" >> "$log"

step() { printf '\n# %s\n$ dkms-hook %s\n' "$1" "$2"; }
step "The sample system after the in-place upgrade of linux-kbuild-6.1:" "status"
hook status || echo "(exit status $?: something needs attention)"
step "What apt runs after dpkg (DPkg::Post-Invoke) reads dpkg.log and rebuilds:" "post-invoke"
hook post-invoke
step "Afterwards:" "status"
hook status && echo "(exit status 0: all is well)"
