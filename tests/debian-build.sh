#!/bin/bash
# Build the Debian package as a Debian 13 build daemon would, then check it:
# in a throwaway Debian 13 (trixie) root holding only Debian's packages (the
# Build-Depends: Debian's rustc/cargo, dh-cargo and the librust-*-dev crates),
# `dpkg-buildpackage -b -us -uc` runs as an unprivileged user with the network
# cut (a network namespace of its own: loopback only). Then, in the same root,
# Debian 13's lintian on the result and the package's autopkgtest
# (debian/tests) with the real autopkgtest runner (`-- null`: the root is the
# testbed, thrown away after, hence --ignore-restrictions for the test's
# isolation-machine and breaks-testbed). The autopkgtest has the network
# (it installs kernel headers and downloads linux-kbuild to repack it).
#
#   tests/debian-build.sh               # prints "N passed, M failed" last
#   DKMS_HOOK_DEBIAN_DEB_OUT=/tmp/x.deb tests/debian-build.sh   # keep the .deb
#   DEB_BUILD_OPTIONS=nocheck tests/debian-build.sh  # skip `make check` in the build
#
# Needs root (chroot, mounts, unshare) and the Debian mirror of the machine's
# apt sources; prints SKIPPED and exits 0 without either. The prepared root
# (debootstrap + Build-Depends + lintian + autopkgtest, the test's packages
# downloaded) is cached as /var/cache/dkms-hook-e2e/debian-build-trixie-KEY.tar.zst,
# KEY a hash of the Build-Depends, the test's Depends and this script's own
# package list: a change to any of them prepares a new root.
set -euo pipefail
cd "$(dirname "$0")/.."
export E2E_SUITE=trixie
# shellcheck source=e2e/lib.sh
source tests/e2e/lib.sh
# shellcheck source=lib.sh
source tests/lib.sh

# Beside the Build-Depends: what the checks run, and what the autopkgtest
# installs (downloaded into the root's apt cache; the test installs them).
TOOLS=(lintian autopkgtest)
TEST_DOWNLOADS=(acpi-call-dkms linux-headers-amd64 build-essential dpkg-dev kmod initramfs-tools mokutil)

e2e_require_root
field() {  # field FILE NAME: the value of a (folded) control field, comments dropped
    awk -v want="$2:" '
        /^#/ { next }
        /^[^ \t]/ { on = (tolower($1) == tolower(want)) }
        on { print }
    ' "$1"
}
key=$( { field debian/control Build-Depends; field debian/tests/control Depends
         printf '%s\n' "${TOOLS[@]}" "${TEST_DOWNLOADS[@]}"; } | sha256sum | cut -c1-16)
E2E_BASE_TARBALL=$E2E_CACHE_DIR/debian-build-trixie-$key.tar.zst

# --- the prepared root (cached) ------------------------------------------------
prepare_root() {
    e2e_base_begin --force
    e2e_base_bootstrap "${TOOLS[@]}"
    mkdir -p "$E2E_ROOT/root/bd/debian"
    cp debian/control "$E2E_ROOT/root/bd/debian/"
    e2e_retry 3 in_root apt-get -y -q build-dep ./root/bd
    rm -rf "$E2E_ROOT/root/bd"
    in_root apt-get clean
    e2e_retry 3 in_root apt-get -y -q install -d "${TEST_DOWNLOADS[@]}"
    in_root useradd --create-home --shell /bin/bash builder
    e2e_base_pack
}
if [[ ! -f "$E2E_BASE_TARBALL" ]]; then
    e2e_log "preparing the Debian 13 build root $E2E_BASE_TARBALL"
    out=$( (prepare_root) | tee /dev/stderr)
    if grep -q '^SKIPPED:' <<< "$out"; then exit 0; fi
    [[ -f "$E2E_BASE_TARBALL" ]] || e2e_die "preparing the build root failed"
    # Roots for earlier Build-Depends go.
    find "$E2E_CACHE_DIR" -maxdepth 1 -name 'debian-build-trixie-*.tar.zst' \
        ! -name "${E2E_BASE_TARBALL##*/}" -delete
fi

# --- build, with the network cut -------------------------------------------------
trap 'e2e_remove_root "${E2E_ROOT:-}"' EXIT
trap 'exit 130' INT TERM
e2e_extract_base
e2e_mounts "$E2E_ROOT"
version=$(dpkg-parsechangelog -S Version)
src=/build/dkms-hook-$version
mkdir -p "$E2E_ROOT$src"
git ls-files -z --cached --others --exclude-standard \
    | xargs -0 cp --parents -a -t "$E2E_ROOT$src" 2>/dev/null || true
rm -rf "$E2E_ROOT$src/target"
chown -R "$(in_root id -u builder):$(in_root id -g builder)" "$E2E_ROOT/build"
echo "# Debian 13 root $E2E_ROOT (from ${E2E_BASE_TARBALL##*/}); source in $src"

as_builder_offline() {  # CMD...: in the root as user builder, in a new network namespace
    unshare --net chroot --userspec=builder:builder "$E2E_ROOT" /usr/bin/env -i \
        PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/builder LANG=C.UTF-8 \
        DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-}" "$@"
}
check "the build's network namespace has the loopback interface only" \
    test "$(as_builder_offline awk 'NR > 2 { print $1 }' /proc/net/dev)" = "lo:"
log=$(mktemp)
trap 'e2e_remove_root "${E2E_ROOT:-}"; rm -f "$log"' EXIT
if as_builder_offline sh -c "cd '$src' && dpkg-buildpackage -b -us -uc" > "$log" 2>&1; then
    ok "dpkg-buildpackage -b -us -uc (Debian's cargo $(in_root dpkg-query -W -f '${Version}' cargo), no network)"
else
    nok "dpkg-buildpackage -b -us -uc (Debian 13, no network)"
    tail -n 60 "$log" | sed 's/^/# /'
    finish
fi
deb=$(ls "$E2E_ROOT"/build/dkms-hook_*.deb 2>/dev/null | head -n1)
check "one .deb built" test -f "$deb"
[[ -f "$deb" ]] || finish
echo "# $(basename "$deb")"
if [[ -n "${DKMS_HOOK_DEBIAN_DEB_OUT:-}" ]]; then
    check "copied to \$DKMS_HOOK_DEBIAN_DEB_OUT=$DKMS_HOOK_DEBIAN_DEB_OUT" cp "$deb" "$DKMS_HOOK_DEBIAN_DEB_OUT"
fi
check "the tree's Cargo.lock is back after the build" cmp -s Cargo.lock "$E2E_ROOT$src/Cargo.lock"

# --- what the package says -------------------------------------------------------
control=$(dpkg-deb -f "$deb")
echo "$control" | grep -E '^(Depends|Recommends|Built-Using|Static-Built-Using):' | cut -c1-300 | sed 's/^/# /'
sbu=$(dpkg-deb -f "$deb" Static-Built-Using)
check "Static-Built-Using names rustc and the crates" \
    bash -c "grep -q 'rustc (= ' <<< '$sbu' && grep -q 'rust-clap (= ' <<< '$sbu'"
for crate in $(sed -n '/^\[dependencies\]/,/^\[/{s/^\([a-z0-9_-]*\) *=.*/\1/p}' Cargo.toml); do
    src_pkg="rust-${crate//_/-}"
    check "Static-Built-Using names $src_pkg" grep -q "$src_pkg (= " <<< "$sbu"
done
check "Depends names dkms, kmod (modinfo, depmod) and apt" \
    bash -c "dpkg-deb -f '$deb' Depends | grep -qE '(^|, )dkms(,|$)' && dpkg-deb -f '$deb' Depends | grep -qE '(^|, )kmod(,|$)' && dpkg-deb -f '$deb' Depends | grep -qE '(^|, )apt(,|$)'"
check "Recommends names update-initramfs's and mokutil's packages" \
    bash -c "dpkg-deb -f '$deb' Recommends | grep -q initramfs-tools && dpkg-deb -f '$deb' Recommends | grep -q mokutil"
contents=$(dpkg-deb -c "$deb")
check "the unit is under /usr/lib/systemd/system" \
    grep -q ' ./usr/lib/systemd/system/dkms-hook.service$' <<< "$contents"
check "the retry timer and its service are there too" \
    bash -c "grep -q ' ./usr/lib/systemd/system/dkms-hook-retry.timer\$' <<< \"\$1\" && grep -q ' ./usr/lib/systemd/system/dkms-hook-retry.service\$' <<< \"\$1\"" _ "$contents"
check "the packaged binary runs in the root (--version)" in_root sh -c 'd=$(mktemp -d) && dpkg-deb -x "$1" "$d" && "$d/usr/sbin/dkms-hook" --version' _ "${deb#"$E2E_ROOT"}"

# --- lintian and autopkgtest (Debian 13's) ----------------------------------------
rc=0
lintian_out=$(in_root lintian --fail-on error,warning --display-info "${deb#"$E2E_ROOT"}" 2>&1) || rc=$?
[[ -z "$lintian_out" ]] || sed 's/^/# lintian: /' <<< "$lintian_out"
check "lintian $(in_root dpkg-query -W -f '${Version}' lintian) --fail-on error,warning" test "$rc" = 0

apt_log=$(mktemp)
trap 'e2e_remove_root "${E2E_ROOT:-}"; rm -f "$log" "$apt_log"' EXIT
rc=0
in_root autopkgtest --ignore-restrictions=isolation-machine,breaks-testbed \
    "${deb#"$E2E_ROOT"}" "$src/" -- null > "$apt_log" 2>&1 || rc=$?
grep -E '^(kbuild-in-place|autopkgtest \[[0-9:]+\]: (test|@@@))|PASS|FAIL' "$apt_log" | tail -n 20 | sed 's/^/# /'
[[ "$rc" == 0 ]] || tail -n 40 "$apt_log" | sed 's/^/# autopkgtest: /'
check "autopkgtest $(in_root dpkg-query -W -f '${Version}' autopkgtest) (debian/tests, -- null) passes (exit $rc)" test "$rc" = 0
finish
