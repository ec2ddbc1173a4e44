#!/bin/bash
# Fallback for archives that offer only one linux-kbuild-6.1 version, and a
# self-test of that fallback: repack the OLD linux-kbuild-6.1 .deb as
# <ver>+e2e1 into a local file: repo inside a fresh root, then upgrade it in
# place and show that stock dkms does not rebuild the module (bug #1040401).
#
#   tests/e2e/repack.sh
#
# Scenario scripts can call e2e_repack_bump (lib.sh) directly instead.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_require_root
e2e_ensure_base

cleanup() {
    local rc=$?
    e2e_remove_root "${E2E_ROOT:-}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

e2e_extract_base
e2e_load_versions
e2e_mounts "$E2E_ROOT"
e2e_install_old_world
e2e_apt_offline install acpi-call-dkms

K="$E2E_OLD_KERNEL"
KO="$(find "$E2E_ROOT/lib/modules/$K" -name 'acpi_call.ko*' -print -quit)"
[[ -n "$KO" ]] || { echo "FAIL: acpi_call not built for $K"; exit 1; }
MTIME="$(stat -c %Y "$KO")"
sleep 2

NEWVER="$(e2e_repack_bump linux-kbuild-6.1 "$E2E_OLD_VERSION")"
e2e_log "repacked linux-kbuild-6.1 $E2E_OLD_VERSION -> $NEWVER"
in_root apt-cache policy linux-kbuild-6.1
APT_RC=0
e2e_apt_offline install "linux-kbuild-6.1=$NEWVER" || APT_RC=$?
NOW="$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)"
MTIME_AFTER="$(stat -c %Y "$KO")"

FAILS=0
check() {
    local desc="$1"; shift
    if "$@"; then printf '  ok    %s\n' "$desc"; else printf '  FAIL  %s\n' "$desc"; FAILS=$((FAILS + 1)); fi
}
echo "=== repack.sh results ==="
check "apt-get install linux-kbuild-6.1=$NEWVER exited 0 (rc=$APT_RC)" test "$APT_RC" == 0
check "linux-kbuild-6.1 is now $NEWVER (is $NOW)" test "$NOW" == "$NEWVER"
check "BUG #1040401: $K module not rebuilt (mtime $MTIME -> $MTIME_AFTER)" test "$MTIME" == "$MTIME_AFTER"
if (( FAILS == 0 )); then echo "PASS: repacked in-place kbuild upgrade reproduces the bug"; exit 0; fi
echo "FAIL: repack: ${FAILS} check(s) failed"
exit 1
