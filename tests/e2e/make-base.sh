#!/bin/bash
# Build (or reuse) the cached Debian base root for the dkms-hook e2e tier.
#
#   tests/e2e/make-base.sh           reuse $E2E_BASE_TARBALL if present
#   tests/e2e/make-base.sh --force   rebuild it
#
# The root contains dkms + toolchain, apt lists, and pre-downloaded .debs for
# the scenarios (old & new linux-headers/-common/linux-kbuild-6.1/
# linux-compiler-gcc-12-x86, acpi-call-dkms), so that scenario runs work with
# `apt-get --no-download`. Chosen versions: /root/e2e-versions.env in the root.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

e2e_require_root

if [[ -f "$E2E_BASE_TARBALL" && "$FORCE" == 0 ]]; then
    e2e_log "reusing cached base $E2E_BASE_TARBALL"
    exit 0
fi

e2e_detect_mirror
e2e_check_mirror
e2e_log "mirror: $E2E_MIRROR  security: ${E2E_SECURITY_MIRROR:-<none>}  updates: $E2E_HAVE_UPDATES"

for tool in debootstrap zstd; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        e2e_log "installing host tool $tool"
        e2e_retry 3 apt-get update -q
        e2e_retry 3 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool"
    fi
done

E2E_ROOT="$(e2e_new_root_dir)"
export E2E_ROOT
cleanup() {
    local rc=$?
    e2e_remove_root "$E2E_ROOT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- debootstrap -------------------------------------------------------------
bootstrap() {
    # a failed debootstrap leaves junk behind: start from an empty dir each time
    e2e_umounts "$E2E_ROOT"
    find "$E2E_ROOT" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
    debootstrap --variant=minbase "$E2E_SUITE" "$E2E_ROOT" "$E2E_MIRROR"
}
e2e_log "debootstrap $E2E_SUITE into $E2E_ROOT"
e2e_retry 3 bootstrap

# --- apt configuration -------------------------------------------------------
{
    echo "deb ${E2E_MIRROR} ${E2E_SUITE} main"
    [[ "$E2E_HAVE_UPDATES" == 1 ]] && echo "deb ${E2E_MIRROR} ${E2E_SUITE}-updates main"
    [[ -n "$E2E_SECURITY_MIRROR" ]] && echo "deb ${E2E_SECURITY_MIRROR} ${E2E_SUITE}-security main"
    true
} > "$E2E_ROOT/etc/apt/sources.list"

cat > "$E2E_ROOT/etc/apt/apt.conf.d/90dkms-hook-e2e" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
Binary::apt::APT::Keep-Downloaded-Packages "true";
APT::Keep-Downloaded-Packages "true";
Dpkg::Use-Pty "false";
EOF

# never start services inside the throw-away root
cat > "$E2E_ROOT/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
exit 101
EOF
chmod 0755 "$E2E_ROOT/usr/sbin/policy-rc.d"

e2e_mounts "$E2E_ROOT"

e2e_log "apt-get update + dkms toolchain"
e2e_retry 3 in_root apt-get -q update
e2e_retry 3 in_root apt-get -y -q dist-upgrade
e2e_retry 3 in_root apt-get -y -q install --no-install-recommends \
    dkms build-essential gcc-12 make kmod patch dpkg-dev openssl

# keep only the scenario .debs (pre-downloaded below) in the archive cache
in_root apt-get clean

# --- choose versions ---------------------------------------------------------
mapfile -t KBUILD_VERSIONS < <(
    in_root apt-cache madison linux-kbuild-6.1 \
        | awk -F'|' '{ gsub(/[ \t]/, "", $2); print $2 }' | sort -u
)
(( ${#KBUILD_VERSIONS[@]} > 0 )) || e2e_die "no linux-kbuild-6.1 in the archive"
# sort descending with dpkg's comparison
sorted=()
for v in "${KBUILD_VERSIONS[@]}"; do
    i=0
    while (( i < ${#sorted[@]} )) && in_root dpkg --compare-versions "${sorted[$i]}" gt "$v"; do
        i=$((i + 1))
    done
    sorted=("${sorted[@]:0:$i}" "$v" "${sorted[@]:$i}")
done
KBUILD_VERSIONS=("${sorted[@]}")
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
    done < <(in_root apt-cache madison "$name" | awk -F'|' '{ gsub(/[ \t]/, "", $2); print $2 }')
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

compiler_has() { in_root apt-cache madison linux-compiler-gcc-12-x86 | awk -F'|' '{ gsub(/[ \t]/, "", $2); print $2 }' | grep -qxF "$1"; }
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
e2e_log "pre-downloading: ${old_set[*]} acpi-call-dkms"
e2e_retry 3 in_root apt-get -y -q install -d --no-install-recommends "${old_set[@]}" acpi-call-dkms
e2e_log "pre-downloading: ${new_set[*]}"
e2e_retry 3 in_root apt-get -y -q install -d --no-install-recommends "${new_set[@]}"

# sanity: both sets must now resolve without network
in_root apt-get -s -q --no-download install "${old_set[@]}" acpi-call-dkms >/dev/null
in_root apt-get -s -q --no-download install "${new_set[@]}" >/dev/null
find "$E2E_ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -printf '    %s %f\n' | sort -k2 >&2

# --- pack ----------------------------------------------------------------------
e2e_umounts "$E2E_ROOT"
rm -rf "$E2E_ROOT"/tmp/* "$E2E_ROOT"/var/tmp/* || true
mkdir -p "$E2E_CACHE_DIR"
tmp_tar="$(mktemp "$E2E_CACHE_DIR/.base-${E2E_SUITE}.XXXXXX")"
e2e_log "packing $E2E_BASE_TARBALL"
tar -C "$E2E_ROOT" --numeric-owner --one-file-system -cpf - . | zstd -q -T1 -6 -f -o "$tmp_tar"
mv -f "$tmp_tar" "$E2E_BASE_TARBALL"
e2e_log "base ready: $E2E_BASE_TARBALL ($(du -h "$E2E_BASE_TARBALL" | cut -f1))"
