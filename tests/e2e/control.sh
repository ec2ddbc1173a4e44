#!/bin/bash
# Control scenario: reproduce Debian bug #1040401 with stock dkms only (no dkms-hook).
#
#   tests/e2e/control.sh
#
# 1. fresh root from the cached base (make-base.sh is run if the cache is cold)
# 2. install linux-kbuild-6.1=OLD + linux-headers-<OLD>-amd64 (+ -common) + acpi-call-dkms
# 3. record mtime/sha256 of the acpi_call module built for the OLD kernel
# 4. apt-get install linux-headers-<NEW>-amd64 (upgrades linux-kbuild-6.1 in place)
# 5. expect: apt rc 0, module built for NEW, OLD module untouched (= the bug)
#
# Exit 0 + "PASS" when the bug is reproduced, 1 + "FAIL" otherwise,
# 0 + "SKIPPED: ..." when the environment cannot be built.
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

t0=$SECONDS
e2e_extract_base
e2e_log "root: $E2E_ROOT (extracted in $((SECONDS - t0))s)"
e2e_load_versions
if [[ "$E2E_SINGLE_KBUILD" == 1 ]]; then
    e2e_skip "archive offers one linux-kbuild-6.1 version only; control.sh needs repack.sh support"
fi
e2e_log "OLD: $E2E_OLD_HEADERS ($E2E_OLD_VERSION)  NEW: $E2E_NEW_HEADERS ($E2E_NEW_VERSION)"

e2e_mounts "$E2E_ROOT"

FAILS=0
NOTES=()
check() {   # check DESCRIPTION CMD...
    local desc="$1"; shift
    if "$@"; then
        printf '  ok    %s\n' "$desc"
    else
        printf '  FAIL  %s\n' "$desc"
        FAILS=$((FAILS + 1))
    fi
}

ko_path() {     # ko_path KERNEL -> path of acpi_call.ko* inside the root (host path)
    find "$E2E_ROOT/lib/modules/$1" -name 'acpi_call.ko*' -print -quit 2>/dev/null || true
}

# --- step 2: old world -----------------------------------------------------------
e2e_install_old_world
e2e_log "installing acpi-call-dkms"
e2e_apt_offline install acpi-call-dkms

echo "--- dkms status after acpi-call-dkms install:"
in_root dkms status || true
echo "--- /lib/modules:"
ls -la "$E2E_ROOT/lib/modules/"

KO_OLD="$(ko_path "$E2E_OLD_KERNEL")"
if [[ -z "$KO_OLD" ]]; then
    NOTES+=("acpi-call-dkms postinst did not build for $E2E_OLD_KERNEL; ran 'dkms autoinstall -k' explicitly")
    e2e_log "module not built for $E2E_OLD_KERNEL by the package postinst; trying dkms autoinstall -k"
    in_root dkms autoinstall -k "$E2E_OLD_KERNEL" || true
    in_root dkms status || true
    KO_OLD="$(ko_path "$E2E_OLD_KERNEL")"
fi
check "acpi_call built+installed for OLD kernel $E2E_OLD_KERNEL" test -n "$KO_OLD"
if [[ -z "$KO_OLD" ]]; then
    echo "FAIL: control scenario could not set up the OLD kernel module"
    exit 1
fi
KO_OLD_REL="${KO_OLD#"$E2E_ROOT"}"
dkms_installed_for() { in_root dkms status -m acpi-call -k "$1" | grep -q ': installed'; }
check "dkms status lists acpi-call installed for $E2E_OLD_KERNEL" dkms_installed_for "$E2E_OLD_KERNEL"
OLD_MTIME="$(stat -c %Y "$KO_OLD")"
OLD_SHA="$(sha256sum "$KO_OLD" | cut -d' ' -f1)"
e2e_log "OLD module $KO_OLD_REL mtime=$OLD_MTIME sha256=$OLD_SHA"

# make sure any rebuild would produce a visibly different mtime
sleep 2

# --- step 4: in-place kbuild upgrade via new headers ------------------------------
e2e_log "installing $E2E_NEW_HEADERS (pulls linux-kbuild-6.1 $E2E_NEW_VERSION)"
APT_RC=0
e2e_apt_offline install "$E2E_NEW_HEADERS=$E2E_NEW_VERSION" || APT_RC=$?

echo "--- dkms status after new headers:"
in_root dkms status || true
KBUILD_NOW="$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)"
KO_NEW="$(ko_path "$E2E_NEW_KERNEL")"
NEW_MTIME_OF_OLD="$(stat -c %Y "$KO_OLD" 2>/dev/null || echo missing)"
NEW_SHA_OF_OLD="$(sha256sum "$KO_OLD" 2>/dev/null | cut -d' ' -f1 || echo missing)"

echo "=== control.sh results (stock dkms $E2E_DKMS_VERSION, no dkms-hook) ==="
check "apt-get install $E2E_NEW_HEADERS exited 0 (rc=$APT_RC)" test "$APT_RC" == 0
check "linux-kbuild-6.1 upgraded in place to $E2E_NEW_VERSION (now $KBUILD_NOW)" test "$KBUILD_NOW" == "$E2E_NEW_VERSION"
check "acpi_call built for NEW kernel $E2E_NEW_KERNEL (${KO_NEW#"$E2E_ROOT"})" test -n "$KO_NEW"
check "dkms status lists acpi-call installed for $E2E_NEW_KERNEL" dkms_installed_for "$E2E_NEW_KERNEL"
check "BUG #1040401: OLD module mtime unchanged ($OLD_MTIME -> $NEW_MTIME_OF_OLD)" test "$OLD_MTIME" == "$NEW_MTIME_OF_OLD"
check "BUG #1040401: OLD module sha256 unchanged" test "$OLD_SHA" == "$NEW_SHA_OF_OLD"
for n in "${NOTES[@]}"; do echo "  note  $n"; done

if (( FAILS == 0 )); then
    echo "PASS: bug #1040401 reproduced: $E2E_OLD_KERNEL module not rebuilt after linux-kbuild-6.1 $E2E_OLD_VERSION -> $E2E_NEW_VERSION"
    exit 0
fi
echo "FAIL: control scenario: ${FAILS} check(s) failed"
exit 1
