#!/bin/bash
# Build the Debian package from a copy of the checkout (tracked and untracked,
# not ignored files: the checkout stays clean), run lintian on it and check
# its contents. Needs dpkg-dev, debhelper, fakeroot and lintian installed,
# and a rustup toolchain in ~/.cargo/bin with the crates of Cargo.lock in the
# registry cache (run `make check` first; the build runs offline).
#   tests/package.sh                  # prints "N passed, M failed" last
#   DKMS_HOOK_DEB_OUT=/tmp/dkms-hook.deb tests/package.sh   # keep the .deb
# DEB_BUILD_OPTIONS defaults to nocheck (the unit tests are `make check`);
# set DEB_BUILD_OPTIONS= to run them inside the package build as well.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$PWD
# shellcheck source=lib.sh
source tests/lib.sh

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/dkms-hook-0.1.0
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard \
    | (cd "$repo" && xargs -0 cp --parents -a -t "$src" 2>/dev/null)
# Files deleted in the work tree but still in the index are skipped above.

export DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS-nocheck}
echo "# dpkg-buildpackage in a copy: $src"
if (cd "$src" && dpkg-buildpackage -b -us -uc -Ppkg.dkms-hook.rustup) \
        > "$tmp/build.log" 2>&1; then
    ok "dpkg-buildpackage -b -us -uc -Ppkg.dkms-hook.rustup"
else
    nok "dpkg-buildpackage -b -us -uc -Ppkg.dkms-hook.rustup"
    tail -n 40 "$tmp/build.log" | sed "s/^/# /"
    finish
fi
deb=$(ls "$tmp"/dkms-hook_*.deb 2>/dev/null | head -n1)
check "one .deb built" test -f "$deb"
[ -f "$deb" ] || finish
echo "# $(basename "$deb")"
if [ -n "${DKMS_HOOK_DEB_OUT:-}" ]; then
    check "copied to \$DKMS_HOOK_DEB_OUT=$DKMS_HOOK_DEB_OUT" cp "$deb" "$DKMS_HOOK_DEB_OUT"
fi

lintian_out=$(lintian --fail-on error,warning --display-info "$deb" 2>&1); rc=$?
[ -z "$lintian_out" ] || sed 's/^/# lintian: /' <<< "$lintian_out"
check "lintian --fail-on error,warning" test "$rc" = 0

contents=$(dpkg-deb -c "$deb" | awk '{print $1, $NF}')
has() { grep -qxF -- "$1 ./${2#/}" <<< "$contents"; }
for f in /usr/sbin/dkms-hook /etc/kernel/header_postinst.d/dkms-hook \
         /etc/kernel/postinst.d/dkms-hook /etc/kernel/prerm.d/dkms-hook \
         /etc/kernel/preinst.d/00-dkms-hook-guard /etc/kernel/postinst.d/00-dkms-hook-guard \
         /etc/update-motd.d/90-dkms-hook /etc/dkms/dkms-hook-preflight; do
    check "contains $f (0755)" has -rwxr-xr-x "$f"
done
for f in /usr/share/man/man8/dkms-hook.8.gz \
         /usr/share/bash-completion/completions/dkms-hook \
         /etc/dkms/dkms-hook.conf /etc/apt/apt.conf.d/80dkms-hook \
         /etc/dpkg/dpkg.cfg.d/dkms-hook /etc/logrotate.d/dkms-hook \
         /usr/share/doc/dkms-hook/copyright; do
    check "contains $f (0644)" has -rw-r--r-- "$f"
done

conffiles=$(dpkg-deb -I "$deb" conffiles 2>/dev/null)
for f in /etc/dkms/dkms-hook.conf /etc/apt/apt.conf.d/80dkms-hook \
         /etc/dpkg/dpkg.cfg.d/dkms-hook /etc/kernel/header_postinst.d/dkms-hook \
         /etc/kernel/postinst.d/dkms-hook /etc/kernel/prerm.d/dkms-hook \
         /etc/kernel/preinst.d/00-dkms-hook-guard /etc/kernel/postinst.d/00-dkms-hook-guard \
         /etc/logrotate.d/dkms-hook /etc/update-motd.d/90-dkms-hook \
         /etc/dkms/dkms-hook-preflight; do
    check "conffile $f" grep -qxF "$f" <<< "$conffiles"
done

control=$(dpkg-deb -f "$deb")
check "Depends on dkms" grep -qE '^Depends:.*\bdkms\b' <<< "$control"
check "Section admin" test "$(dpkg-deb -f "$deb" Section)" = admin
check "version 0.1.0" test "$(dpkg-deb -f "$deb" Version)" = 0.1.0
check "postinst runs dkms-hook init" \
    bash -c "dpkg-deb --ctrl-tarfile '$deb' | tar -xO ./postinst | grep -q 'dkms-hook init'"
check "postrm purges /var/lib/dkms-hook" \
    bash -c "dpkg-deb --ctrl-tarfile '$deb' | tar -xO ./postrm | grep -q '/var/lib/dkms-hook'"
x=$tmp/x; dpkg-deb -x "$deb" "$x"
check "man page is section 8" bash -c "zcat '$x/usr/share/man/man8/dkms-hook.8.gz' | grep -q '^\.TH [^ ]* 8'"
check "packaged binary runs (--version)" "$x/usr/sbin/dkms-hook" --version
# apt.conf.d's Pre-Install-Pkgs is one packaged script, by path alone, with
# the protocol version keyed on it (as apt-config reads the packaged file).
aptconf=$(apt-config -c "$x/etc/apt/apt.conf.d/80dkms-hook" dump --no-empty --format '%f=%v%n')
pre=$(sed -n 's#^DPkg::Pre-Install-Pkgs::=##p' <<< "$aptconf" | grep -F dkms-hook)
check "Pre-Install-Pkgs names a packaged executable, alone ($pre)" \
    test -n "$pre" -a "${pre%% *}" = "$pre" -a -x "$x$pre"
check "…with Version 3 keyed on it" grep -qxF "DPkg::Tools::Options::$pre::Version=3" <<< "$aptconf"
unit=$(find "$x/lib/systemd/system" "$x/usr/lib/systemd/system" -name dkms-hook.service 2>/dev/null | head -n1)
check "contains the systemd unit dkms-hook.service" test -n "$unit"
# Verified with ExecStart pointing into the unpacked package.
sed "s#/usr/sbin/dkms-hook#$x/usr/sbin/dkms-hook#" "$unit" > "$tmp/dkms-hook.service"
check "systemd-analyze verify accepts the unit" \
    systemd-analyze verify --man=no "$tmp/dkms-hook.service"
postinst=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst)
check "postinst enables dkms-hook.service, does not start it" \
    bash -c "grep -q 'deb-systemd-helper.*enable.*dkms-hook.service' <<< \"\$1\" && ! grep -q \"deb-systemd-invoke.*'dkms-hook.service'\" <<< \"\$1\"" _ "$postinst"
# The scheduled retry of failed rebuilds: a timer (enabled and started; it
# runs nothing before its time) and the oneshot it starts.
for u in dkms-hook-retry.timer dkms-hook-retry.service; do
    f=$(find "$x/lib/systemd/system" "$x/usr/lib/systemd/system" -name "$u" 2>/dev/null | head -n1)
    check "contains the systemd unit $u" test -n "$f"
    [ -n "$f" ] && sed "s#/usr/sbin/dkms-hook#$x/usr/sbin/dkms-hook#" "$f" > "$tmp/$u"
done
check "systemd-analyze verify accepts dkms-hook-retry.timer and .service" \
    bash -c "cd '$tmp' && systemd-analyze verify --man=no ./dkms-hook-retry.timer ./dkms-hook-retry.service"
check "dkms-hook-retry.service runs retry --scheduled" \
    grep -qxF "ExecStart=$x/usr/sbin/dkms-hook retry --scheduled" "$tmp/dkms-hook-retry.service"
check "postinst enables and starts dkms-hook-retry.timer" \
    bash -c "grep -q 'deb-systemd-helper.*enable.*dkms-hook-retry.timer' <<< \"\$1\" && grep -q \"deb-systemd-invoke [^ ]*_dh_action 'dkms-hook-retry.timer'\" <<< \"\$1\"" _ "$postinst"

finish
