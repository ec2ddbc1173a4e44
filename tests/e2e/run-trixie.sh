#!/bin/bash
# The real-system tier on Debian 13 (trixie): dkms-hook's .deb in a throwaway
# trixie root with real apt 3.0, dpkg, dkms 3.2, per-ABI linux-kbuild, signed
# linux-image + linux-headers, and a real dkms module (acpi-call-dkms).
#
#   DKMS_HOOK_DEB=path/to/dkms-hook_*.deb tests/e2e/run-trixie.sh
#
# Without DKMS_HOOK_DEB the package is built with tests/package.sh. The base
# root is cached (make-base-trixie.sh); one fresh root per run: dkms-hook,
# acpi-call-dkms and a first kernel (the older ABI if the archive has two),
# then scenarios 1 to 8 in that order.
# Prints PASS/FAIL per scenario and ends with "N passed, M failed".
# When the Debian mirror cannot be reached: one "SKIPPED:" line, exit 0.
set -euo pipefail
export E2E_SUITE=trixie
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_run_begin

# acpi_call.ko* of kernel $1 (dkms installs it under updates/dkms)
acpi_ko() { ko acpi_call "$1"; }
# dkms's own built copy for kernel $1 (/var/lib/dkms/acpi-call/V/K/ARCH/module/);
# a restored backup keeps its old time, where the installed copy's is new
built_ko() {
    find "$E2E_ROOT/var/lib/dkms/acpi-call" -path "*/$1/*/module/acpi_call.ko*" -print -quit 2>/dev/null
}
# dkms's own install line for kernel $1, as apt shows it
dkms_installs() { printf 'Installing /lib/modules/%s/updates/dkms/acpi_call.ko' "$1"; }

T0=$SECONDS
e2e_run_root
install_dkms_hook
e2e_dkms_wrapper
read -r -a FIRST <<< "$E2E_FIRST_KERNELS"
read -r -a ADDED <<< "$E2E_ADDED_KERNELS"
FED=("$E2E_NEW_KERNEL" "$E2E_NEW_KERNEL2")     # the kernels $E2E_KBUILD feeds
OTHER=()                                       # and the one it does not
[[ -z "$E2E_OLD_KERNEL" ]] || OTHER=("$E2E_OLD_KERNEL")
e2e_log "first kernel: ${FIRST[*]}; added: ${ADDED[*]}; fed by $E2E_KBUILD: ${FED[*]}"
# v4l2loopback's dkms.conf is a script: it sets BUILD_EXCLUSIVE_KERNEL only
# when the kernel's config lacks CONFIG_VIDEO_DEV (the cloud flavour).
e2e_apt_offline install acpi-call-dkms v4l2loopback-dkms "${FIRST[@]/#/linux-headers-}" >&2
M="acpi-call/$(find "$E2E_ROOT/var/lib/dkms/acpi-call" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n 1)"
V4L2="v4l2loopback/$(find "$E2E_ROOT/var/lib/dkms/v4l2loopback" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n 1)"
for k in "${FIRST[@]}"; do
    [[ -n "$(acpi_ko "$k")" ]] || e2e_die "acpi-call was not built for $k"
done
e2e_log "setup done after $((SECONDS - T0)) s"

scenario "1: a new kernel: dkms builds its module once, dkms-hook leaves it alone"
declare -A M_FIRST=()
for k in "${FIRST[@]}"; do M_FIRST[$k]="$(mtime "$(acpi_ko "$k")")"; done
L0="$(log_lines)"
o="$(out)"
RC=0; e2e_apt_offline install "${ADDED[@]/#/linux-headers-}" > "$o" 2>&1 || RC=$?
grep -E 'dkms-hook|^Autoinstall of|^Installing /lib/modules' "$o" | sed 's/^/    | /' || true
log="$(log_since "$L0")"
check "apt-get exits 0 (rc=$RC)" test "$RC" == 0
for k in "${ADDED[@]}"; do
    check "$k: dkms built and installed $M once" once "$o" "$(dkms_installs "$k")"
    check "$k: installed as acpi_call.ko.xz" test -f "$E2E_ROOT/lib/modules/$k/updates/dkms/acpi_call.ko.xz"
    check "$k: dkms status says installed" installed acpi-call "$k"
    check "$k: /var/log/dkms-hook.log has no rebuild of $M" lacks "$log" "rebuilt $M for $k"
done
check "no 'dkms-hook: rebuilt' line in apt's output" lacks "$o" "dkms-hook: rebuilt"
check "no dkms-hook failure" lacks "$o" "dkms-hook: FAILED"
for k in "${FIRST[@]}"; do
    check "$k (first kernel) untouched" test "$(mtime "$(acpi_ko "$k")")" == "${M_FIRST[$k]}"
done
verdict

scenario "2: an in-place change of $E2E_KBUILD rebuilds each kernel it feeds, once"
KV="$(e2e_repack_bump "$E2E_KBUILD" "$E2E_KBUILD_VERSION")"
declare -A M_BEFORE=() B_BEFORE=()
for k in "${FED[@]}" "${OTHER[@]}"; do
    M_BEFORE[$k]="$(mtime "$(acpi_ko "$k")")" B_BEFORE[$k]="$(mtime "$(built_ko "$k")")"
done
L0="$(log_lines)"
sleep 1
o="$(out)"
RC=0; in_root dpkg -i "/var/cache/apt/archives/${E2E_KBUILD}_${KV}_amd64.deb" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
log="$(log_since "$L0")"
check "dpkg -i exits 0 (rc=$RC)" test "$RC" == 0
check "$E2E_KBUILD upgraded in place to $KV" test "$(in_root dpkg-query -W -f '${Version}' "$E2E_KBUILD")" == "$KV"
for k in "${FED[@]}"; do
    check "$k: dpkg's output has the rebuild line, once" \
        once "$o" "dkms-hook: rebuilt $M for $k ($E2E_KBUILD $E2E_KBUILD_VERSION → $KV)"
    check "$k: /var/log/dkms-hook.log has it once" once "$log" "rebuilt $M for $k ($E2E_KBUILD"
    check "$k: acpi_call.ko.xz is new (mtime ${M_BEFORE[$k]} → $(mtime "$(acpi_ko "$k")"))" \
        test "$(mtime "$(acpi_ko "$k")")" -gt "${M_BEFORE[$k]}"
    check "$k: …and so is dkms's built copy (mtime ${B_BEFORE[$k]} → $(mtime "$(built_ko "$k")"))" \
        test "$(mtime "$(built_ko "$k")")" -gt "${B_BEFORE[$k]}"
    check "$k: dkms status says installed" installed acpi-call "$k"
    check "$k: the rebuilt module's vermagic is for $k" vermagic_is "$(acpi_ko "$k")" "$k"
done
sj="$(out)"; in_root dkms-hook status --json > "$sj" 2>/dev/null || true
for k in "${FED[@]}"; do
    check "$k: status --json: the signature of acpi_call.ko.xz as modinfo reads it" \
        signed_agrees "$sj" acpi-call "$k" "$(acpi_ko "$k")"
done
check "no dkms-hook failure" lacks "$o" "dkms-hook: FAILED"
st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
sed 's/^/    | /' "$st"
for k in "${FED[@]}"; do
    if [[ "$k" == *-cloud-amd64 ]]; then
        check "$k: $V4L2 is excluded (no CONFIG_VIDEO_DEV), not rebuilt" state_is "$st" "$V4L2" "$k" excluded
        check "$k: …and dkms-hook did not try it" lacks "$o" "$V4L2 for $k"
    else
        check "$k: $V4L2 (a dkms.conf that is a script) is rebuilt, once" \
            once "$o" "dkms-hook: rebuilt $V4L2 for $k ($E2E_KBUILD $E2E_KBUILD_VERSION → $KV)"
        check "$k: …and status shows it fresh" state_is "$st" "$V4L2" "$k" fresh
    fi
done
for k in "${OTHER[@]}"; do
    check "$k (not fed by $E2E_KBUILD): no rebuild line" lacks "$o" "for $k"
    check "$k: its acpi_call.ko.xz untouched" test "$(mtime "$(acpi_ko "$k")")" == "${M_BEFORE[$k]}"
    check "$k: dkms status says installed" installed acpi-call "$k"
done
(( ${#OTHER[@]} > 0 )) \
    || echo "  skip  one kernel ABI only in the archive ($E2E_NEW_ABI): no kernel outside $E2E_KBUILD to leave alone"
verdict

K="$E2E_NEW_KERNEL"
scenario "3: removing linux-headers-$K warns before the prompt"
WARN="$K: removing linux-headers-$K leaves this kernel without headers"
o="$(out)"
RC=0; in_root apt -s -o Dpkg::Use-Pty=0 --no-download remove "linux-headers-$K" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "apt -s exits 0 (rc=$RC)" test "$RC" == 0
check "apt -s: a dkms-hook line" contains "$o" "dkms-hook: "
check "apt -s: '$WARN'" contains "$o" "$WARN"
o2="$(out)"
RC=0; echo n | in_root apt -o Dpkg::Use-Pty=0 --no-download remove "linux-headers-$K" > "$o2" 2>&1 || RC=$?
check "apt answered 'n': the warning comes before 'Continue? [Y/n]'" before "$o2" "$WARN" "Continue? [Y/n]"
check "nothing removed: linux-headers-$K still installed" \
    test "$(in_root dpkg-query -W -f '${db:Status-Abbrev}' "linux-headers-$K")" == "ii "
check "$K: dkms status says installed" installed acpi-call "$K"
verdict

scenario "9: an apt run that concerns no kernel starts dkms-hook's JSON hook once, not at each of apt's calls"
e2e_check_json_quiet
verdict

scenario "4: an in-place change of $E2E_KBUILD through apt, default configuration: one build per pair"
KV2="$(e2e_repack_bump "$E2E_KBUILD" "$KV" +e2e2)"
declare -A M_BEFORE4=()
declare -A SHA_BEFORE4=() B_BEFORE4=()
for k in "${FED[@]}"; do
    M_BEFORE4[$k]="$(mtime "$(acpi_ko "$k")")" SHA_BEFORE4[$k]="$(sha "$(acpi_ko "$k")")"
    B_BEFORE4[$k]="$(mtime "$(built_ko "$k")")"
done
sleep 1
T4="$(date +%s)"
o="$(out)"
RC=0; e2e_apt_offline install "$E2E_KBUILD=$KV2" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "apt-get exits 0 (rc=$RC)" test "$RC" == 0
check "$E2E_KBUILD upgraded in place to $KV2" test "$(in_root dpkg-query -W -f '${Version}' "$E2E_KBUILD")" == "$KV2"
for k in "${FED[@]}"; do
    n="$(builds_since "$T4" acpi-call "$k")"
    check "$k: acpi-call built once in this upgrade, by preflight ($n)" test "$n" == 1
    check "$k: the rebuild line says preflight's build was installed" \
        contains "$o" "dkms-hook: rebuilt $M for $k ($E2E_KBUILD $KV → $KV2) in"
    check "$k: acpi_call.ko.xz is new" test "$(mtime "$(acpi_ko "$k")")" -gt "${M_BEFORE4[$k]}"
    check "$k: dkms status says installed" installed acpi-call "$k"
    check "$k: the installed module's vermagic is for $k" vermagic_is "$(acpi_ko "$k")" "$k"
done
check "…not compiled again" contains "$o" "installed preflight's build against these packages, not compiled again"
check "no dkms-hook failure" lacks "$o" "dkms-hook: FAILED"
verdict

scenario "5: every dkms.conf of Debian 13 main, on amd64 and cloud-amd64: dkms-hook excludes what dkms excludes"
e2e_check_dkms_conf_corpus
verdict

K="${FIRST[0]}"
scenario "6: dkms's kernel_preinst on an in-place reinstall of linux-image-$K, the module's source broken: nothing lost"
# dkms 3.2's preinst.d hook unbuilds every module of K before the image is
# unpacked again, and its postinst.d hook builds them again: with a source
# that no longer compiles, the module would be gone and apt would exit 100.
# E2E_REMOVE_GUARD=1 removes the guard's hook files first: this scenario
# must then fail (the proof that it tests the guard).
if [[ "${E2E_REMOVE_GUARD:-0}" == 1 ]]; then
    rm -f "$E2E_ROOT"/etc/kernel/{preinst,postinst}.d/00-dkms-hook-guard
    echo "  note  E2E_REMOVE_GUARD=1: the guard's hook files are removed"
fi
check "dkms's own preinst.d hook is installed (dkms $E2E_DKMS_VERSION)" test -x "$E2E_ROOT/etc/kernel/preinst.d/dkms"
# What linux-run-hooks (linux-base) runs: run-parts over /etc/kernel/P.d and
# /usr/share/kernel/P.d, where they exist.
first_hook() {
    in_root sh -c 'set --; for d in /etc/kernel/$0.d /usr/share/kernel/$0.d; do [ -d "$d" ] && set -- "$@" "$d"; done
                   run-parts --list "$@" | sed "s#.*/##" | grep -xE "00-dkms-hook-guard|dkms" | head -n 1' "$1"
}
for p in preinst postinst; do
    [[ "${E2E_REMOVE_GUARD:-0}" == 1 ]] ||
        check "run-parts runs the guard before dkms in $p.d" test "$(first_hook "$p")" == 00-dkms-hook-guard
done
SRC="$(find "$E2E_ROOT/usr/src/acpi-call-${M#acpi-call/}" -maxdepth 1 -name '*.c' -print -quit)"
printf '\n#error "dkms-hook e2e: this source no longer builds"\n' >> "$SRC"
KO6="$(acpi_ko "$K")" BK6="$(built_ko "$K")"
SHA6="$(sha "$KO6")" BSHA6="$(sha "$BK6")"
L0="$(log_lines)"
o="$(out)"
RC=0; e2e_apt_offline install --reinstall "linux-image-$K" > "$o" 2>&1 || RC=$?
grep -E 'dkms-hook|dkms: removing|[Aa]utoinstall|^E: ' "$o" | sed 's/^/    | /' || true
check "apt-get install --reinstall exits 0 (rc=$RC)" test "$RC" == 0
check "linux-image-$K is configured" \
    test "$(in_root dpkg-query -W -f '${db:Status-Abbrev}' "linux-image-$K")" == "ii "
check "dkms's kernel_preinst did remove the module" contains "$o" "dkms: removing module $M for kernel $K"
check "apt's output says it was put back" contains "$o" "dkms-hook: put back $M for $K"
check "$K: acpi_call.ko.xz is byte-identical" test "$(sha "$(acpi_ko "$K")")" == "$SHA6"
check "$K: dkms's built copy is byte-identical" test "$(sha "$(built_ko "$K")")" == "$BSHA6"
check "$K: dkms status says installed" installed acpi-call "$K"
check "$K: modules.dep lists it (depmod ran)" grep -q 'updates/dkms/acpi_call.ko' "$E2E_ROOT/lib/modules/$K/modules.dep"
check "nothing left saved" test ! -e "$E2E_ROOT/var/lib/dkms-hook/guarded.json" -a ! -e "$E2E_ROOT/var/lib/dkms-hook/guarded"
check "no dkms-hook failure" lacks "$o" "dkms-hook: FAILED"
# Later, the source still broken: an in-place change of K's kbuild fails the
# safe rebuild, which keeps the module, as always.
if [[ "$K" == "$E2E_OLD_KERNEL" ]]; then KB6="linux-kbuild-$E2E_OLD_ABI"; else KB6="$E2E_KBUILD"; fi
KB6V="$(in_root dpkg-query -W -f '${Version}' "$KB6")"
KB6N="$(e2e_repack_bump "$KB6" "$KB6V" +e2e6)"
sleep 1
o="$(out)"
RC=0; in_root dpkg -i "/var/cache/apt/archives/${KB6}_${KB6N}_amd64.deb" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "dpkg -i $KB6 $KB6N exits 0 (rc=$RC)" test "$RC" == 0
check "$K: the safe rebuild failed and said so" contains "$o" "dkms-hook: FAILED to rebuild $M for $K"
check "$K: acpi_call.ko.xz is still byte-identical" test "$(sha "$(acpi_ko "$K")")" == "$SHA6"
check "$K: dkms status still says installed" installed acpi-call "$K"
log="$(log_since "$L0")"
check "/var/log/dkms-hook.log: saved, then put back" \
    bash -c 'grep -q "saved $1 for $2 before" "$3" && grep -q "put back $1 for $2" "$3"' _ "$M" "$K" "$log"
verdict

K="${FED[0]}"
scenario "7: rollback puts the module from before scenario 4's rebuild back, held; unhold"
e2e_check_rollback "$M" "$K" "${SHA_BEFORE4[$K]}" "${B_BEFORE4[$K]}"
verdict

scenario "8: unattended-upgrades installs new headers and a new $E2E_KBUILD in separate steps: one test build and one build per pair"
# Scenario 6 left acpi-call's source broken: mended, and everything made
# fresh, before the night.
sed -i '/dkms-hook e2e: this source no longer builds/d' "$SRC"
in_root dkms-hook sync > /dev/null 2>&1 || true
K="${FED[0]}"
RC=0; uu_setup || RC=$?
check "unattended-upgrades installed (rc=$RC)" test "$RC" == 0
e2e_check_uu_two_steps "linux-headers-$K" "$E2E_KBUILD" "$M" "$K" +uu8
for k in "${FED[@]:1}"; do
    n="$(builds_since "$UU_T" acpi-call "$k")"
    check "$k (fed by $E2E_KBUILD only): its one test build is installed, not compiled again ($n)" test "$n" == 1
done
for k in "${FED[@]}"; do
    check "$k: dkms status says installed" installed acpi-call "$k"
    check "$k: the installed module's vermagic is for $k" vermagic_is "$(acpi_ko "$k")" "$k"
done
st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
check "status: $M fresh for $K" state_is "$st" "$M" "$K" fresh
verdict

echo "e2e trixie: $((SECONDS - T0)) s for setup and scenarios (dkms $E2E_DKMS_VERSION, apt $E2E_APT_VERSION)"
e2e_summary
