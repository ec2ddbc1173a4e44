#!/bin/bash
# The rebuild itself, on a real Debian 12 root from the end-to-end tier's
# cached base (dkms 3.0.10): two real dkms modules (acpi-call and the e2e
# tier's e2e-failmod, which builds) on two kernels, all four pairs made
# stale by reinstalling linux-kbuild-6.1. `dkms-hook sync` against the
# naive loop an admin would write (`dkms build --force` + `dkms install
# --force` per pair), same pairs, same root, alternating, ROUNDS times each;
# both must leave the same modules installed.
# With a real kernel's module tree in /lib/modules/K (the full run: the
# old kernel's linux-image-*-unsigned, fetched once with the host's apt and
# kept in the e2e cache), depmod costs what it costs on a real machine;
# without it (the smoke run) /lib/modules/K holds only the dkms modules.
#   bash bench/rebuild.sh BIN [ROUNDS] [--kernel-tree]
#                                     (root; prints one Markdown table row)
set -euo pipefail
bin=$1 rounds=${2:-2} tree=${3:-}
# shellcheck source=../tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"
e2e_bench_root
e2e_apt_offline install "$E2E_NEW_HEADERS=$E2E_NEW_VERSION" >/dev/null 2>&1
e2e_add_failmod >/dev/null 2>&1
kernels=("$E2E_OLD_KERNEL" "$E2E_NEW_KERNEL")
acpi="$(find "$E2E_ROOT/var/lib/dkms/acpi-call" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*' -printf '%f\n' | head -n 1)"
pairs=()
for k in "${kernels[@]}"; do pairs+=("acpi-call $acpi $k" "e2e-failmod 1.0 $k"); done
if [[ "$tree" == --kernel-tree ]]; then
    image=linux-image-$E2E_OLD_KERNEL-unsigned
    deb=$E2E_CACHE_DIR/${image}_$E2E_OLD_VERSION.deb
    if [[ ! -f "$deb" ]]; then
        (cd "$E2E_CACHE_DIR" && apt-get download -q -o APT::Sandbox::User=root "$image=$E2E_OLD_VERSION" >/dev/null) \
            || e2e_die "cannot download $image=$E2E_OLD_VERSION with the host's apt"
        mv "$E2E_CACHE_DIR/${image}_${E2E_OLD_VERSION//:/%3a}_amd64.deb" "$deb"
    fi
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$E2E_ROOT" --keep-directory-symlink --wildcards "./lib/modules/$E2E_OLD_KERNEL/*" "./usr/lib/modules/$E2E_OLD_KERNEL/*" 2>/dev/null || true
    old=$(readlink -f "$E2E_ROOT/lib/modules/$E2E_OLD_KERNEL") new=$(readlink -f "$E2E_ROOT/lib/modules")/$E2E_NEW_KERNEL
    [[ -d "$old/kernel" ]] || e2e_die "$image has no module tree"
    cp -al "$old/kernel" "$new/"
    cp "$old"/modules.order "$old"/modules.builtin* "$new/"
    in_root depmod -a "$E2E_OLD_KERNEL"; in_root depmod -a "$E2E_NEW_KERNEL"
    tree_note=", each with the $(find "$old/kernel" -name '*.ko*' | wc -l) modules of $image"
fi
install -m 0755 "$bin" "$E2E_ROOT/usr/local/sbin/dkms-hook"
in_root dkms-hook init
kbuild=/var/cache/apt/archives/linux-kbuild-6.1_${E2E_NEW_VERSION}_amd64.deb
stale_all() { # a kbuild reinstall rewrites its .list: every pair is stale
    sleep 1
    in_root dpkg -i "$kbuild" >/dev/null 2>&1
    local n
    # (status exits 1: stale pairs need attention)
    n="$({ in_root dkms-hook status --json || true; } | /usr/bin/python3 -c 'import json,sys; print(sum(p["state"] == "stale" for p in json.load(sys.stdin)["pairs"]))')"
    [[ "$n" == 4 ]] || e2e_die "expected 4 stale pairs, status says $n"
}
installed() { # what is installed, by content
    find "$E2E_ROOT"/lib/modules/*/updates/dkms -name '*.ko*' -printf '%P %s\n' | sort
}
naive() {
    local m v k
    for p in "${pairs[@]}"; do
        read -r m v k <<< "$p"
        in_root dkms build --force -m "$m" -v "$v" -k "$k"
        in_root dkms install --force -m "$m" -v "$v" -k "$k"
    done
}
seconds() { # the wall time of a command; its output is shown only if it fails
    local t0=$EPOCHREALTIME log=$E2E_ROOT/bench.log
    "$@" >"$log" 2>&1 || { tail -n 30 "$log" >&2; e2e_die "$* failed"; }
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f\n", b - a }'
}
for k in "${kernels[@]}"; do in_root dkms install -m e2e-failmod -v 1.0 -k "$k" >/dev/null 2>&1; done
t_naive=() t_hook=()
for ((i = 0; i < rounds; i++)); do
    stale_all; t_naive+=("$(seconds naive)"); after_naive="$(installed)"
    stale_all; t_hook+=("$(seconds in_root dkms-hook sync)"); after_hook="$(installed)"
    [[ "$after_naive" == "$after_hook" ]] || e2e_die "dkms-hook sync left other modules installed than the naive loop"
done
/usr/bin/python3 - "${t_naive[*]}" "${t_hook[*]}" "$(nproc)" "${tree_note:-}" <<'PY'
import statistics, sys
naive = statistics.median(map(float, sys.argv[1].split()))
hook = statistics.median(map(float, sys.argv[2].split()))
print("| rebuild of 4 stale pairs (acpi-call, e2e-failmod × 2 kernels%s), real Debian 12 root, %s cores: `dkms-hook sync` %.1f s vs naive `dkms build --force` + `install --force` loop %.1f s | %.2f× |"
      % (sys.argv[4], sys.argv[3], hook, naive, hook / naive))
PY
