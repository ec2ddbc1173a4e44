#!/bin/bash
# What preflight costs an in-place upgrade through apt, on a real Debian 12
# root from the end-to-end tier's cached base (dkms 3.0.10): acpi-call and
# e2e-failmod made slow (each pass over its Makefile sleeps 2 s: a module
# whose build takes several seconds) built for the old kernel, then
# linux-headers-OLD upgraded in place with `apt-get install` (a repacked
# version each time), with `preflight = warn` (the default) and with `off`,
# alternating, ROUNDS times each. With warn, preflight test-builds both
# pairs before dpkg and the rebuild after dpkg installs those builds; with
# off, only the rebuild after dpkg builds. Medians.
#   bash bench/preflight-upgrade.sh [ROUNDS [BIN]]   (root, DKMS_HOOK_DEB; one row)
# BIN, when given, replaces the package's binary (a fresh build).
set -euo pipefail
rounds=${1:-3} bin=${2:-}
# shellcheck source=../tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"
deb=${DKMS_HOOK_DEB:?name the package to install in DKMS_HOOK_DEB}
e2e_bench_root
cp "$deb" "$E2E_ROOT/root/dkms-hook.deb"
in_root apt-get -y -q install /root/dkms-hook.deb >/dev/null 2>&1
[[ -z "$bin" ]] || install -m 0755 "$bin" "$E2E_ROOT/usr/sbin/dkms-hook"
e2e_add_failmod >/dev/null 2>&1
echo 2 > "$E2E_ROOT/etc/e2e-failmod-slow"
in_root dkms install -m e2e-failmod -v 1.0 -k "$E2E_OLD_KERNEL" >/dev/null 2>&1
upgrade() { # upgrade MODE N: one in-place upgrade of the old kernel's headers
    echo "preflight=$1" > "$E2E_ROOT/etc/dkms/dkms-hook.conf"
    local v log=$E2E_ROOT/bench.log t0
    v="$(e2e_repack_bump "$E2E_OLD_HEADERS" "$E2E_OLD_VERSION" "+bench$2" 2>/dev/null)"
    sleep 1
    t0=$EPOCHREALTIME
    e2e_apt_offline install "$E2E_OLD_HEADERS=$v" >"$log" 2>&1 || { tail -n 30 "$log" >&2; e2e_die "apt-get failed"; }
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f\n", b - a }'
    grep -c 'dkms-hook: rebuilt' "$log" >/dev/null || e2e_die "no rebuild in the $1 upgrade"
    # With warn, the rebuild after dpkg must have installed preflight's builds.
    if [[ "$1" == warn ]] && [[ "$(grep -c 'not compiled again' "$log")" != 2 ]]; then
        grep -F 'dkms-hook' "$log" >&2
        e2e_die "preflight's builds were not installed"
    fi
}
t_warn=() t_off=()
for ((i = 0; i < rounds; i++)); do
    t_warn+=("$(upgrade warn "$((2 * i + 1))")")
    t_off+=("$(upgrade off "$((2 * i + 2))")")
done
/usr/bin/python3 - "${t_warn[*]}" "${t_off[*]}" <<'PY'
import statistics, sys
warn = statistics.median(map(float, sys.argv[1].split()))
off = statistics.median(map(float, sys.argv[2].split()))
print("| in-place upgrade of linux-headers-OLD through apt, 2 slow modules (real Debian 12 root): `preflight = warn` vs `off` | %.1f s vs %.1f s: %.2f× | ≤ 1.1× + 1 s: %s |"
      % (warn, off, warn / off, "met" if warn <= 1.1 * off + 1 else "MISSED"))
PY
