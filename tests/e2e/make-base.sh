#!/bin/bash
# Build (or reuse) the cached Debian base root for the dkms-hook e2e tier.
#
#   tests/e2e/make-base.sh           reuse $E2E_BASE_TARBALL if present
#   tests/e2e/make-base.sh --force   rebuild it
#   E2E_SUITE=trixie tests/e2e/make-base.sh [--force]   the Debian 13 base
#                                    (runs make-base-trixie.sh)
#
# The root contains dkms + toolchain, apt lists, and pre-downloaded .debs for
# the scenarios (old & new linux-headers/-common/linux-kbuild-6.1/
# linux-compiler-gcc-12-x86, acpi-call-dkms, v4l2loopback-dkms), so that scenario runs work with
# `apt-get --no-download`. Chosen versions: /root/e2e-versions.env in the root.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Other suites have their own builder (tests/e2e/make-base-SUITE.sh).
if [[ "$E2E_SUITE" != bookworm ]]; then
    [[ -f "$E2E_DIR/make-base-$E2E_SUITE.sh" ]] || e2e_die "no base builder for suite '$E2E_SUITE'"
    exec bash "$E2E_DIR/make-base-$E2E_SUITE.sh" "$@"
fi

e2e_base_begin "$@"
e2e_base_bootstrap dkms build-essential gcc-12 make kmod patch dpkg-dev openssl

# --- choose versions ---------------------------------------------------------
mapfile -t KBUILD_VERSIONS < <(e2e_madison linux-kbuild-6.1 | e2e_sort_desc)
(( ${#KBUILD_VERSIONS[@]} > 0 )) || e2e_die "no linux-kbuild-6.1 in the archive"
e2e_log "linux-kbuild-6.1 versions offered (newest first): ${KBUILD_VERSIONS[*]}"

# map: headers version -> highest ABI linux-headers-6.1.0-N-amd64 with that version
declare -A HDR_FOR_VERSION=()
mapfile -t HDR_NAMES < <(
    in_root apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' \
        | awk '{ print $1 }' | sort -t- -k4,4n
)
for name in "${HDR_NAMES[@]}"; do
    while read -r ver; do
        [[ -n "$ver" ]] && HDR_FOR_VERSION["$ver"]="$name"
    done < <(e2e_madison "$name")
done

# newest kbuild version that has matching headers = NEW, next one = OLD
NEW_VERSION="" OLD_VERSION=""
for v in "${KBUILD_VERSIONS[@]}"; do
    [[ -n "${HDR_FOR_VERSION[$v]:-}" ]] || { e2e_log "no headers for kbuild $v"; continue; }
    if [[ -z "$NEW_VERSION" ]]; then NEW_VERSION="$v"
    elif [[ -z "$OLD_VERSION" ]]; then OLD_VERSION="$v"; break
    fi
done
[[ -n "$NEW_VERSION" ]] || e2e_die "no linux-headers-6.1.0-*-amd64 matches any linux-kbuild-6.1 version"

SINGLE_KBUILD=0
if [[ -z "$OLD_VERSION" ]]; then
    # Only one kbuild version in the archive: run.sh then reports SKIPPED
    # (its scenarios need two kernel ABIs); e2e_repack_bump in lib.sh is the
    # tool for an in-place upgrade from a single version.
    e2e_log "NOTE: only one usable linux-kbuild-6.1 version ($NEW_VERSION)"
    SINGLE_KBUILD=1
    OLD_VERSION="$NEW_VERSION"
fi

OLD_HEADERS="${HDR_FOR_VERSION[$OLD_VERSION]}"
NEW_HEADERS="${HDR_FOR_VERSION[$NEW_VERSION]}"
OLD_KERNEL="${OLD_HEADERS#linux-headers-}"
NEW_KERNEL="${NEW_HEADERS#linux-headers-}"
common_of() {   # linux-headers-6.1.0-50-amd64 -> linux-headers-6.1.0-50-common
    local k="${1#linux-headers-}"
    printf 'linux-headers-%s-common' "${k%-amd64}"
}
OLD_COMMON="$(common_of "$OLD_HEADERS")"
NEW_COMMON="$(common_of "$NEW_HEADERS")"

compiler_has() { e2e_madison linux-compiler-gcc-12-x86 | grep -qxF "$1"; }
OLD_COMPILER_PIN="" NEW_COMPILER_PIN=""
compiler_has "$OLD_VERSION" && OLD_COMPILER_PIN="linux-compiler-gcc-12-x86=$OLD_VERSION"
compiler_has "$NEW_VERSION" && NEW_COMPILER_PIN="linux-compiler-gcc-12-x86=$NEW_VERSION"

ACPI_CALL_VERSION="$(in_root apt-cache policy acpi-call-dkms | awk '/Candidate:/ { print $2 }')"
[[ -n "$ACPI_CALL_VERSION" && "$ACPI_CALL_VERSION" != "(none)" ]] || e2e_die "acpi-call-dkms not available"
DKMS_VERSION="$(in_root dpkg-query -W -f '${Version}' dkms)"

cat > "$E2E_ROOT$E2E_VERSIONS_FILE" <<EOF
# written by tests/e2e/make-base.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)
E2E_SINGLE_KBUILD=${SINGLE_KBUILD}
E2E_OLD_VERSION=${OLD_VERSION}
E2E_NEW_VERSION=${NEW_VERSION}
E2E_OLD_HEADERS=${OLD_HEADERS}
E2E_NEW_HEADERS=${NEW_HEADERS}
E2E_OLD_COMMON=${OLD_COMMON}
E2E_NEW_COMMON=${NEW_COMMON}
E2E_OLD_KERNEL=${OLD_KERNEL}
E2E_NEW_KERNEL=${NEW_KERNEL}
E2E_OLD_COMPILER_PIN=${OLD_COMPILER_PIN}
E2E_NEW_COMPILER_PIN=${NEW_COMPILER_PIN}
E2E_ACPI_CALL_VERSION=${ACPI_CALL_VERSION}
E2E_DKMS_VERSION=${DKMS_VERSION}
EOF
e2e_log "chosen versions:"; sed 's/^/    /' "$E2E_ROOT$E2E_VERSIONS_FILE" >&2

# --- pre-download everything the scenarios install ---------------------------
# Separate transactions: old and new kbuild cannot coexist in one solution.
# shellcheck disable=SC2206
old_set=(linux-kbuild-6.1="$OLD_VERSION" "$OLD_COMMON=$OLD_VERSION" "$OLD_HEADERS=$OLD_VERSION" $OLD_COMPILER_PIN)
# shellcheck disable=SC2206
new_set=(linux-kbuild-6.1="$NEW_VERSION" "$NEW_COMMON=$NEW_VERSION" "$NEW_HEADERS=$NEW_VERSION" $NEW_COMPILER_PIN)
e2e_log "pre-downloading: ${old_set[*]} acpi-call-dkms v4l2loopback-dkms"
e2e_retry 3 in_root apt-get -y -q install -d --no-install-recommends "${old_set[@]}" acpi-call-dkms v4l2loopback-dkms
e2e_log "pre-downloading: ${new_set[*]}"
e2e_retry 3 in_root apt-get -y -q install -d --no-install-recommends "${new_set[@]}"

# sanity: both sets must now resolve without network
in_root apt-get -s -q --no-download install "${old_set[@]}" acpi-call-dkms v4l2loopback-dkms >/dev/null
in_root apt-get -s -q --no-download install "${new_set[@]}" >/dev/null
find "$E2E_ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -printf '    %s %f\n' | sort -k2 >&2

e2e_base_pack
