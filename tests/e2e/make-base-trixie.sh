#!/bin/bash
# Build (or reuse) the cached Debian 13 (trixie) base root for run-trixie.sh.
#
#   tests/e2e/make-base-trixie.sh [--force]     (= E2E_SUITE=trixie tests/e2e/make-base.sh)
#
# A minbase trixie with dkms + toolchain, apt lists and pre-downloaded .debs
# (acpi-call-dkms; linux-headers + linux-image of the newest kernel ABI in the
# cloud-amd64 and amd64 flavours, and of the next older ABI, cloud-amd64 only),
# so that scenario runs work with `apt-get --no-download`. The ABIs come from
# the linux-headers-cloud-amd64 metapackage's versions (e.g. trixie vs
# trixie-security); choices: /root/e2e-versions.env in the root.
set -euo pipefail
export E2E_SUITE=trixie
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FLAVOUR=cloud-amd64      # the smallest image (~35 MB); every kernel has one
FLAVOUR2=amd64           # a second kernel fed by the same linux-kbuild

e2e_base_begin "$@"
e2e_base_bootstrap dkms build-essential make kmod patch dpkg-dev openssl xz-utils

# linux-image-* depend on `initramfs-tools | linux-initramfs-tool`; building
# initramfs images is slow and beside the point here: a stand-in provides it.
mkdir -p "$E2E_ROOT/root/e2e-no-initramfs/DEBIAN"
cat > "$E2E_ROOT/root/e2e-no-initramfs/DEBIAN/control" <<'EOF'
Package: e2e-no-initramfs
Version: 1.0
Architecture: all
Maintainer: dkms-hook e2e <e2e@example.org>
Provides: linux-initramfs-tool
Description: stand-in for an initramfs generator (dkms-hook e2e tests)
EOF
in_root dpkg-deb -b /root/e2e-no-initramfs /root/e2e-no-initramfs.deb >/dev/null
in_root dpkg -i /root/e2e-no-initramfs.deb >&2
rm -rf "$E2E_ROOT/root/e2e-no-initramfs" "$E2E_ROOT/root/e2e-no-initramfs.deb"

# --- choose kernels ------------------------------------------------------------
# ABI of the kernel that version $1 of linux-headers-$FLAVOUR depends on
abi_of() {
    in_root apt-cache show "linux-headers-$FLAVOUR=$1" \
        | sed -n "s/^Depends:.*linux-headers-\([^ ,]*\)-${FLAVOUR} .*/\1/p" | head -n 1
}
mapfile -t META_VERSIONS < <(e2e_madison "linux-headers-$FLAVOUR" | e2e_sort_desc)
(( ${#META_VERSIONS[@]} > 0 )) || e2e_die "no linux-headers-$FLAVOUR in the archive"
e2e_log "linux-headers-$FLAVOUR versions offered (newest first): ${META_VERSIONS[*]}"
NEW_ABI="$(abi_of "${META_VERSIONS[0]}")" OLD_ABI=""
[[ -n "$NEW_ABI" ]] || e2e_die "cannot read the ABI of linux-headers-$FLAVOUR ${META_VERSIONS[0]}"
for v in "${META_VERSIONS[@]:1}"; do
    a="$(abi_of "$v")"
    if [[ -n "$a" && "$a" != "$NEW_ABI" ]]; then OLD_ABI="$a"; break; fi
done

KBUILD="linux-kbuild-$NEW_ABI"
KBUILD_VERSION="$(in_root apt-cache policy "$KBUILD" | awk '/Candidate:/ { print $2 }')"
[[ -n "$KBUILD_VERSION" && "$KBUILD_VERSION" != "(none)" ]] || e2e_die "$KBUILD not available"

NEW_KERNEL="$NEW_ABI-$FLAVOUR" NEW_KERNEL2="$NEW_ABI-$FLAVOUR2"
if [[ -n "$OLD_ABI" ]]; then
    # the first kernel: the older ABI; the new kernels: both flavours of the newer
    OLD_KERNEL="$OLD_ABI-$FLAVOUR"
    FIRST_KERNELS="$OLD_KERNEL" ADDED_KERNELS="$NEW_KERNEL $NEW_KERNEL2"
else
    e2e_log "NOTE: the archive offers one kernel ABI only ($NEW_ABI)"
    OLD_KERNEL=""
    FIRST_KERNELS="$NEW_KERNEL" ADDED_KERNELS="$NEW_KERNEL2"
fi

ACPI_CALL_VERSION="$(in_root apt-cache policy acpi-call-dkms | awk '/Candidate:/ { print $2 }')"
[[ -n "$ACPI_CALL_VERSION" && "$ACPI_CALL_VERSION" != "(none)" ]] || e2e_die "acpi-call-dkms not available"

cat > "$E2E_ROOT$E2E_VERSIONS_FILE" <<EOF
# written by tests/e2e/make-base-trixie.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)
E2E_NEW_ABI=${NEW_ABI}
E2E_OLD_ABI=${OLD_ABI}
E2E_KBUILD=${KBUILD}
E2E_KBUILD_VERSION=${KBUILD_VERSION}
E2E_OLD_KERNEL=${OLD_KERNEL}
E2E_NEW_KERNEL=${NEW_KERNEL}
E2E_NEW_KERNEL2=${NEW_KERNEL2}
E2E_FIRST_KERNELS="${FIRST_KERNELS}"
E2E_ADDED_KERNELS="${ADDED_KERNELS}"
E2E_ACPI_CALL_VERSION=${ACPI_CALL_VERSION}
E2E_DKMS_VERSION=$(in_root dpkg-query -W -f '${Version}' dkms)
E2E_APT_VERSION=$(in_root dpkg-query -W -f '${Version}' apt)
EOF
e2e_log "chosen versions:"; sed 's/^/    /' "$E2E_ROOT$E2E_VERSIONS_FILE" >&2

# --- pre-download everything the scenarios install -----------------------------
# linux-headers-K pulls linux-image-K, -common and linux-kbuild-ABI.
DEBS=(acpi-call-dkms v4l2loopback-dkms)
for k in $FIRST_KERNELS $ADDED_KERNELS; do DEBS+=("linux-headers-$k"); done
e2e_log "pre-downloading: ${DEBS[*]}"
e2e_retry 3 in_root apt-get -y -q install -d --no-install-recommends "${DEBS[@]}"
# sanity: it must now resolve without network
in_root apt-get -s -q --no-download install "${DEBS[@]}" >/dev/null
find "$E2E_ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -printf '    %s %f\n' | sort -k2 >&2

e2e_base_pack
