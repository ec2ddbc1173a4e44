#!/bin/bash
# Check the breakable test module tests/e2e/failmod in a fresh root:
#   - dkms add/build/install works for the OLD kernel
#   - with /etc/e2e-failmod-break present, `dkms build --force` fails with exit 10
#
#   tests/e2e/failmod.sh
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

K="$E2E_OLD_KERNEL"
FAILS=0
check() {
    local desc="$1"; shift
    if "$@"; then printf '  ok    %s\n' "$desc"; else printf '  FAIL  %s\n' "$desc"; FAILS=$((FAILS + 1)); fi
}

e2e_add_failmod
in_root dkms build -m e2e-failmod -v 1.0 -k "$K"
in_root dkms install -m e2e-failmod -v 1.0 -k "$K"
KO="$(find "$E2E_ROOT/lib/modules/$K" -name 'e2e_failmod.ko*' -print -quit)"
STATUS_OK="$(in_root dkms status -m e2e-failmod -k "$K")"

echo "$K" > "$E2E_ROOT/etc/e2e-failmod-break"
BREAK_RC=0
in_root dkms build --force -m e2e-failmod -v 1.0 -k "$K" || BREAK_RC=$?
echo "--- make.log tail of the broken build:"
tail -n 5 "$E2E_ROOT/var/lib/dkms/e2e-failmod/1.0/build/make.log" 2>/dev/null || true
STATUS_BROKEN="$(in_root dkms status -m e2e-failmod -k "$K" || true)"
KO_AFTER="$(find "$E2E_ROOT/lib/modules/$K" -name 'e2e_failmod.ko*' -print -quit)"

rm -f "$E2E_ROOT/etc/e2e-failmod-break"
FIX_RC=0
in_root dkms build --force -m e2e-failmod -v 1.0 -k "$K" || FIX_RC=$?

echo "=== failmod.sh results (kernel $K) ==="
echo "  dkms status (built):  $STATUS_OK"
echo "  dkms status (broken): $STATUS_BROKEN"
check "e2e_failmod installed for $K (${KO#"$E2E_ROOT"})" test -n "$KO"
check "dkms status says installed" grep -q ': installed' <<< "$STATUS_OK"
check "with marker: dkms build --force exits 10 (rc=$BREAK_RC)" test "$BREAK_RC" == 10
check "without marker again: dkms build --force exits 0 (rc=$FIX_RC)" test "$FIX_RC" == 0
KO_AFTER_REL="<gone>"; [[ -n "$KO_AFTER" ]] && KO_AFTER_REL="${KO_AFTER#"$E2E_ROOT"}"
echo "  info  .ko left in /lib/modules after the failed --force build: $KO_AFTER_REL"
if (( FAILS == 0 )); then echo "PASS: failmod behaves"; exit 0; fi
echo "FAIL: failmod: ${FAILS} check(s) failed"
exit 1
