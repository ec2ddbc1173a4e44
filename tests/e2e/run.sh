#!/bin/bash
# The real-system tier: dkms-hook's .deb in a throwaway Debian 12 root with
# real apt, dpkg, dkms 3.0.10, linux-headers, linux-kbuild-6.1 and real dkms
# modules (acpi-call-dkms and tests/e2e/failmod). Reproduces Debian bug
# #1040401 and shows the fix.
#
#   DKMS_HOOK_DEB=path/to/dkms-hook_*.deb tests/e2e/run.sh
#
# Without DKMS_HOOK_DEB the package is built with tests/package.sh. The base
# root is cached (make-base.sh); a run uses two fresh roots:
#   root A, dkms-hook installed before the upgrades: scenarios 4, 1, 3, 5, 6, 13, 10, 14, 15, 16, 17, 9, 11, 12, 7
#   root B, stock dkms first, dkms-hook later: scenarios 2 and 8
# Prints PASS/FAIL per scenario and ends with "N passed, M failed".
# When the Debian mirror cannot be reached: one "SKIPPED:" line, exit 0.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_run_begin

# A fresh root with the old world: dkms, linux-headers-OLD, linux-kbuild-6.1=OLD,
# acpi-call-dkms built for the OLD kernel.
new_root() {
    e2e_run_root
    [[ "$E2E_SINGLE_KBUILD" == 0 ]] || e2e_skip "the archive offers one linux-kbuild-6.1 version only"
    e2e_install_old_world >&2
    e2e_apt_offline install acpi-call-dkms >&2
    OLD="$E2E_OLD_KERNEL" NEW="$E2E_NEW_KERNEL"
    # dkms's version of the module: the package's upstream version.
    E2E_ACPI_CALL_UPSTREAM="$(find "$E2E_ROOT/var/lib/dkms/acpi-call" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n 1)"
}

T0=$SECONDS
########################################################################## root A
new_root
install_dkms_hook
e2e_dkms_wrapper
e2e_add_failmod >&2
in_root dkms install -m e2e-failmod -v 1.0 -k "$OLD" >&2
# v4l2loopback: its dkms.conf is a script (BUILD_EXCLUSIVE_KERNEL set inside
# an `if` on the kernel's config); read as key=value it was never rebuilt.
e2e_apt_offline install v4l2loopback-dkms >&2
V4L2="v4l2loopback/$(find "$E2E_ROOT/var/lib/dkms/v4l2loopback" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n 1)"
ACPI_OLD="$(ko acpi_call "$OLD")" FAIL_OLD="$(ko e2e_failmod "$OLD")" V4L2_OLD="$(ko v4l2loopback "$OLD")"
[[ -n "$ACPI_OLD" && -n "$FAIL_OLD" && -n "$V4L2_OLD" ]] || e2e_die "modules were not built for $OLD"

scenario "4: apt -s and apt answered 'n' warn before the prompt (reinstalls too) and change nothing"
KB_BEFORE="$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)"
M_BEFORE="$(mtime "$ACPI_OLD")"
o="$(out)"
RC=0; in_root apt -s -o Dpkg::Use-Pty=0 --no-download install "$E2E_NEW_HEADERS=$E2E_NEW_VERSION" > "$o" 2>&1 || RC=$?
sed 's/^/    | /' "$o" | grep -F 'dkms-hook' || true
check "apt -s exits 0" test "$RC" == 0
check "apt -s shows the in-place change of $OLD" contains "$o" "dkms-hook: this upgrade changes the build tree of $OLD in place (linux-kbuild-6.1 $E2E_OLD_VERSION → $E2E_NEW_VERSION)"
check "…and names the module to be rebuilt" contains "$o" "dkms-hook will rebuild acpi-call/"
o3="$(out)"
RC=0; in_root apt -s -o Dpkg::Use-Pty=0 --no-download install --reinstall "linux-kbuild-6.1=$E2E_OLD_VERSION" > "$o3" 2>&1 || RC=$?
sed 's/^/    | /' "$o3" | grep -F 'dkms-hook' || true
check "apt -s install --reinstall: the reinstall, which apt does not list to JSON hooks, is said (rc=$RC)" \
    contains "$o3" "dkms-hook: this reinstall rewrites the build tree of $OLD in place (linux-kbuild-6.1 $E2E_OLD_VERSION reinstalled)"
o2="$(out)"
RC=0; echo n | in_root apt -o Dpkg::Use-Pty=0 --no-download install "$E2E_NEW_HEADERS=$E2E_NEW_VERSION" > "$o2" 2>&1 || RC=$?
check "apt answered 'n': the warning comes before the prompt" before "$o2" "dkms-hook: this upgrade changes the build tree of $OLD" "Do you want to continue?"
check "nothing changed: linux-kbuild-6.1 still $KB_BEFORE" test "$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)" == "$KB_BEFORE"
check "nothing changed: $OLD module untouched" test "$(mtime "$ACPI_OLD")" == "$M_BEFORE"
verdict

scenario "18: an apt run that concerns no kernel starts dkms-hook's JSON hook once, not at each of apt's calls"
e2e_check_json_quiet
verdict

scenario "1+3: #1040401 fixed; a failing rebuild keeps the working module"
echo "$OLD" > "$E2E_ROOT/etc/e2e-failmod-break"   # failmod fails for OLD only
FAIL_SHA="$(sha "$FAIL_OLD")" V4L2_BEFORE="$(mtime "$V4L2_OLD")"
DEP_BEFORE="$(mtime "$E2E_ROOT/lib/modules/$OLD/modules.dep")"
sleep 1
o="$(out)"
RC=0; e2e_apt_offline install "$E2E_NEW_HEADERS=$E2E_NEW_VERSION" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "apt-get exits 0 (rc=$RC)" test "$RC" == 0
check "linux-kbuild-6.1 upgraded in place" test "$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)" == "$E2E_NEW_VERSION"
check "apt's output has the rebuild line for $OLD" contains "$o" "dkms-hook: rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD (linux-kbuild-6.1 $E2E_OLD_VERSION → $E2E_NEW_VERSION)"
check "a start line comes before the result line" before "$o" "dkms-hook: rebuilding acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD (" "dkms-hook: rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD"
check "no dkms 'Error!' line of our rebuilds reaches apt's output" lacks "$o" "Error! Bad return status"
check "no dkms 'Consult …make.log' line reaches apt's output" lacks "$o" "Consult /var/lib/dkms"
check "$OLD acpi_call.ko is new (mtime $M_BEFORE → $(mtime "$ACPI_OLD"))" test "$(mtime "$ACPI_OLD")" -gt "$M_BEFORE"
check "dkms status: acpi-call installed for $OLD" installed acpi-call "$OLD"
check "the rebuilt module's vermagic is for $OLD (dkms-hook checks it too)" vermagic_is "$ACPI_OLD" "$OLD"
check "dkms installed with --no-depmod; dkms-hook ran depmod for $OLD (modules.dep is new)" \
    test "$(mtime "$E2E_ROOT/lib/modules/$OLD/modules.dep")" -gt "$DEP_BEFORE"
check "…and it lists the rebuilt module" grep -q 'updates/dkms/acpi_call.ko' "$E2E_ROOT/lib/modules/$OLD/modules.dep"
check "$NEW got acpi-call from dkms itself" test -n "$(ko acpi_call "$NEW")"
check "dkms-hook did not build $NEW again (fresh)" lacks "$o" "rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $NEW"
check "the kbuild warning is printed once in this apt run (before dpkg, not again after)" \
    once "$o" "is newer than $E2E_OLD_HEADERS"
check "the failure is reported with its make.log" contains "$o" "dkms-hook: FAILED to rebuild e2e-failmod/1.0 for $OLD"
check "…naming the kept make.log" contains "$o" "see /var/lib/dkms-hook/logs/e2e-failmod-1.0-$OLD.make.log"
check "the kept make.log holds the compiler's error" grep -q 'deliberately broken' "$E2E_ROOT/var/lib/dkms-hook/logs/e2e-failmod-1.0-$OLD.make.log"
check "the old e2e_failmod.ko is byte-identical" test "$(sha "$FAIL_OLD")" == "$FAIL_SHA"
check "modinfo still reads it" in_root modinfo "${FAIL_OLD#"$E2E_ROOT"}"
check "dkms status: e2e-failmod still installed for $OLD" installed e2e-failmod "$OLD"
st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
sed 's/^/    | /' "$st"
check "dkms-hook status shows it failed" grep -qE "^e2e-failmod/1.0 +$OLD +failed" "$st"
motd="$(out)"; in_root /etc/update-motd.d/90-dkms-hook > "$motd" 2>&1 || true
sed 's/^/    | /' "$motd"
check "the login notice names the failed pair" contains "$motd" "dkms-hook: e2e-failmod/1.0 for $OLD failed to rebuild"
check "dkms-hook status shows acpi-call fresh for $OLD" grep -qE "^acpi-call/[^ ]+ +$OLD +fresh" "$st"
check "$V4L2 (a dkms.conf that is a script) is rebuilt for $OLD" contains "$o" "dkms-hook: rebuilt $V4L2 for $OLD (linux-kbuild-6.1"
check "…its module is new" test "$(mtime "$V4L2_OLD")" -gt "$V4L2_BEFORE"
check "…and dkms-hook status shows it fresh, not excluded" state_is "$st" "$V4L2" "$OLD" fresh
sj="$(out)"; in_root dkms-hook status --json > "$sj" 2>/dev/null || true
check "status --json: acpi-call's signature for $OLD as modinfo reads it" signed_agrees "$sj" acpi-call "$OLD" "$ACPI_OLD"
rm -f "$E2E_ROOT/etc/e2e-failmod-break"
verdict

scenario "5: plain dpkg -i of a newer linux-kbuild-6.1 rebuilds through dpkg's post-invoke"
KB_V="$(e2e_repack_bump linux-kbuild-6.1 "$E2E_NEW_VERSION")"
M_BEFORE="$(mtime "$ACPI_OLD")"
sleep 1
o="$(out)"
RC=0; in_root dpkg -i "/var/cache/apt/archives/linux-kbuild-6.1_${KB_V}_amd64.deb" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "dpkg -i exits 0 (rc=$RC)" test "$RC" == 0
check "dpkg's output has the rebuild line for $OLD" contains "$o" "dkms-hook: rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD (linux-kbuild-6.1 $E2E_NEW_VERSION → $KB_V)"
check "…and for $NEW, whose tree it feeds too" contains "$o" "dkms-hook: rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $NEW"
check "$OLD acpi_call.ko is new" test "$(mtime "$ACPI_OLD")" -gt "$M_BEFORE"
check "the failed pair was retried and now builds" contains "$o" "dkms-hook: rebuilt e2e-failmod/1.0 for $OLD"
verdict

scenario "6: an in-place upgrade of linux-headers-$OLD through apt rebuilds its modules, one build per pair"
H_V="$(e2e_repack_bump "$E2E_OLD_HEADERS" "$E2E_OLD_VERSION")"
M_BEFORE="$(mtime "$ACPI_OLD")" M_NEW_BEFORE="$(mtime "$(ko acpi_call "$NEW")")"
S6="$(sha "$ACPI_OLD")" B6="$(mtime "$(e2e_built_ko "acpi-call/$E2E_ACPI_CALL_UPSTREAM" "$OLD")")"
sleep 1
T6="$(date +%s)"
o="$(out)"
RC=0; e2e_apt_offline install "$E2E_OLD_HEADERS=$H_V" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "apt-get exits 0 (rc=$RC)" test "$RC" == 0
check "the rebuild line names the headers package" contains "$o" "dkms-hook: rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD ($E2E_OLD_HEADERS $E2E_OLD_VERSION → $H_V)"
check "$OLD acpi_call.ko is new" test "$(mtime "$ACPI_OLD")" -gt "$M_BEFORE"
check "$NEW is not touched" test "$(mtime "$(ko acpi_call "$NEW")")" == "$M_NEW_BEFORE"
for m in acpi-call e2e-failmod; do
    n="$(builds_since "$T6" "$m" "$OLD")"
    check "default configuration (preflight = warn): $m for $OLD built once in this upgrade ($n)" test "$n" == 1
done
check "apt's output says preflight's build was installed, not compiled again" \
    contains "$o" "installed preflight's build against these packages, not compiled again"
check "dkms status: e2e-failmod installed for $OLD" installed e2e-failmod "$OLD"
check "the installed e2e_failmod.ko's vermagic is for $OLD" vermagic_is "$(ko e2e_failmod "$OLD")" "$OLD"
verdict

scenario "13: rollback puts the module from before scenario 6's rebuild back, held; unhold"
e2e_check_rollback "acpi-call/$E2E_ACPI_CALL_UPSTREAM" "$OLD" "$S6" "$B6"
verdict

scenario "10: preflight test-builds against an upgrade before dpkg unpacks it, and changes nothing"
KB_NOW="$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)"
POISON_V="$(e2e_repack_bump linux-kbuild-6.1 "$KB_NOW" +poison /usr/lib/linux-kbuild-6.1/scripts/preflight-poison)"
POISON_DEB="/var/cache/apt/archives/linux-kbuild-6.1_${POISON_V}_amd64.deb"
snapshot() {
    in_root sh -c 'find /var/lib/dkms /usr/lib/modules /usr/src /usr/lib/linux-kbuild-6.1 -printf "%p %s %T@ %l\n" | sort; dpkg -l'
}
BEFORE="$(out)"; snapshot > "$BEFORE"
o="$(out)"
RC=0; in_root dkms-hook preflight "$POISON_DEB" > "$o" 2>&1 || RC=$?
sed 's/^/    | /' "$o"
check "preflight exits 1 (rc=$RC)" test "$RC" == 1
check "acpi-call builds against it" contains "$o" "dkms-hook: preflight: acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD builds against linux-kbuild-6.1 $POISON_V ("
check "e2e-failmod does not, with its make.log" contains "$o" "dkms-hook: preflight: FAILED e2e-failmod/1.0 for $OLD against linux-kbuild-6.1 $POISON_V: dkms build exited 10; see /var/lib/dkms-hook/preflight/e2e-failmod-1.0-$OLD.make.log"
AFTER="$(out)"; snapshot > "$AFTER"
check "nothing changed: /var/lib/dkms, /lib/modules, /usr/src, the kbuild tree, dpkg -l" cmp -s "$BEFORE" "$AFTER"
check "no mount left" bash -c "! grep -q ' $E2E_ROOT/usr\| $E2E_ROOT/var/lib/dkms' /proc/mounts"
o="$(out)"
RC=0; in_root dkms-hook preflight "/var/cache/apt/archives/linux-kbuild-6.1_${E2E_NEW_VERSION}_amd64.deb" > "$o" 2>&1 || RC=$?
sed 's/^/    | /' "$o"
check "the archive's kbuild: everything builds, exit 0 (rc=$RC)" test "$RC" == 0
o="$(out)"
RC=0; in_root dkms-hook preflight > "$o" 2>&1 || RC=$?
sed 's/^/    | /' "$o"
check "without DEBs: what apt-get upgrade would install is downloaded and tested (rc=$RC)" test "$RC" == 1
check "…the same failure" contains "$o" "dkms-hook: preflight: FAILED e2e-failmod/1.0 for $OLD against linux-kbuild-6.1 $POISON_V"
echo "preflight=block" > "$E2E_ROOT/etc/dkms/dkms-hook.conf"
o="$(out)"
RC=0; e2e_apt_offline install "linux-kbuild-6.1=$POISON_V" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "preflight=block: apt-get fails (rc=$RC)" test "$RC" != 0
check "…and apt's error line names the hook script plainly" \
    contains "$o" "E: Sub-process /etc/dkms/dkms-hook-preflight returned an error code (100)"
check "…and linux-kbuild-6.1 keeps $KB_NOW" test "$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)" == "$KB_NOW"
rm -f "$E2E_ROOT/etc/dkms/dkms-hook.conf"
o="$(out)"
RC=0; e2e_apt_offline install "linux-kbuild-6.1=$POISON_V" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "preflight=warn (default): apt-get exits 0 (rc=$RC)" test "$RC" == 0
check "…the failure is shown before dpkg unpacks" before "$o" "dkms-hook: preflight: FAILED e2e-failmod/1.0 for $OLD" "Unpacking linux-kbuild-6.1"
check "…and acpi-call is rebuilt afterwards" contains "$o" "dkms-hook: rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD"
verdict

scenario "14: unattended-upgrades: python-apt runs each hook twice per dpkg run; the work is done and said once"
RC=0; uu_setup || RC=$?
check "unattended-upgrades installed (rc=$RC)" test "$RC" == 0
UU_V="$(uu_repack linux-kbuild-6.1 "$KB_NOW" +uu)"
o="$(out)"
in_root python3 -c 'import apt, apt_pkg; apt.Cache(rootdir="/"); print("\n".join(apt_pkg.config.value_list("DPkg::Post-Invoke") + apt_pkg.config.value_list("DPkg::Pre-Install-Pkgs")))' > "$o" 2>&1 || true
check "the premise: after apt.Cache(rootdir=\"/\") python-apt lists post-invoke twice" test "$(count "$o" "dkms-hook post-invoke")" == 2
check "…and the preflight script twice" test "$(count "$o" "/etc/dkms/dkms-hook-preflight")" == 2
UU_LOG="$E2E_ROOT/var/log/unattended-upgrades/unattended-upgrades-dpkg.log"
rm -f "$UU_LOG"
M14="$(log_lines)"
o="$(out)"
RC=0; in_root unattended-upgrade -v > "$o" 2>&1 || RC=$?
sed 's/^/    | /' "$o" | tail -n 5
grep -F 'dkms-hook' "$UU_LOG" | sed 's/^/    | /' || true
check "unattended-upgrade exits 0 (rc=$RC)" test "$RC" == 0
check "the rebuild waits for the end of the run, said once" once "$UU_LOG" "rebuild(s) wait until unattended-upgrades ends"
check "…and is done then" uu_wait
L14="$(log_since "$M14")"
sed 's/^/    | log: /' "$L14"
check "linux-kbuild-6.1 upgraded to $UU_V" test "$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)" == "$UU_V"
check "the forecast for $OLD, once" once "$UU_LOG" "dkms-hook: this upgrade changes the build tree of $OLD in place (linux-kbuild-6.1 $POISON_V → $UU_V)"
check "one test build of acpi-call for $OLD, its result said once" \
    once "$UU_LOG" "dkms-hook: preflight: acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD builds against linux-kbuild-6.1 $UU_V ("
check "one rebuild of acpi-call for $OLD, in dkms-hook's log" once "$L14" "rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD (linux-kbuild-6.1 $POISON_V → $UU_V)"
check "no line of dkms-hook's said twice" test -z "$(grep -F 'dkms-hook:' "$UU_LOG" | sort | uniq -d)"
verdict

scenario "15: unattended-upgrades: a failed rebuild reaches the admin by mail, and so does the timer's retry"
# A stub MTA keeps each mail; unattended-upgrades mails root, and so must
# dkms-hook, with a subject that says FAILED (unattended-upgrades' says SUCCESS).
mkdir -p "$E2E_ROOT/var/mail/e2e"
printf '%s\n' '#!/bin/sh' 'cat > "$(mktemp /var/mail/e2e/mail.XXXXXX)"' > "$E2E_ROOT/usr/sbin/sendmail"
chmod 755 "$E2E_ROOT/usr/sbin/sendmail"
printf '%s\n' 'Unattended-Upgrade::Mail "root";' > "$E2E_ROOT/etc/apt/apt.conf.d/52e2e-mail"
FAIL_V="$(uu_repack linux-kbuild-6.1 "$UU_V" +poison2 /usr/lib/linux-kbuild-6.1/scripts/preflight-poison)"
rm -f "$UU_LOG"
M15="$(log_lines)"
o="$(out)"
RC=0; in_root unattended-upgrade -v > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$UU_LOG" | sed 's/^/    | /' || true
check "unattended-upgrade exits 0 (rc=$RC)" test "$RC" == 0
check "linux-kbuild-6.1 upgraded to $FAIL_V" test "$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)" == "$FAIL_V"
check "the rebuild after the run is done" uu_wait
L15="$(log_since "$M15")"
check "e2e-failmod's rebuild for $OLD failed (and kept the module)" contains "$L15" "FAILED to rebuild e2e-failmod/1.0 for $OLD"
mails() { grep -lF "$1" "$E2E_ROOT"/var/mail/e2e/mail.* 2>/dev/null | wc -l; }
check "one mail from dkms-hook whose subject says FAILED ($(mails 'Subject: FAILED: dkms-hook on'))" \
    test "$(mails 'Subject: FAILED: dkms-hook on')" == 1
M15="$(grep -lF 'Subject: FAILED: dkms-hook on' "$E2E_ROOT"/var/mail/e2e/mail.* 2>/dev/null | head -n 1)"
sed -n '1,/^$/p' "$M15" 2>/dev/null | sed 's/^/    | /'
check "…to root" grep -qE '^To: root$' "$M15"
check "…naming the pair, the make.log and what to run" \
    bash -c 'grep -qF "e2e-failmod/1.0 for $2" "$1" && grep -qF "make.log" "$1" && grep -qF "dkms-hook retry" "$1"' _ "$M15" "$OLD"
UNIT="$(find "$E2E_ROOT"/usr/lib/systemd/system "$E2E_ROOT"/lib/systemd/system -name dkms-hook-retry.service -print -quit 2>/dev/null)"
check "dkms-hook-retry.timer is installed" test -n "$(find "$E2E_ROOT"/usr/lib/systemd/system "$E2E_ROOT"/lib/systemd/system -name dkms-hook-retry.timer -print -quit 2>/dev/null)"
RETRY="$(sed -n 's/^ExecStart=//p' "$UNIT" 2>/dev/null)"
check "its service runs 'dkms-hook retry --scheduled' ($RETRY)" test "$RETRY" == "/usr/sbin/dkms-hook retry --scheduled"
o="$(out)"
RC=0; in_root /usr/sbin/dkms-hook retry --scheduled > "$o" 2>&1 || RC=$?
sed 's/^/    | /' "$o" | tail -n 3
check "the timer's retry fails again (rc=$RC)" test "$RC" == 1
check "…and is mailed: FAILED again, retry 1 of 3" test "$(mails 'scheduled retry 1 of 3')" == 1
check "the first failure is not mailed twice" test "$(mails 'Subject: FAILED: dkms-hook on')" == 1
check "e2e-failmod still installed for $OLD" installed e2e-failmod "$OLD"
verdict

scenario "16: unattended-upgrades with preflight = block: the block is recorded and said, and not test-built again the next night"
DH_CONF="$E2E_ROOT/etc/dkms/dkms-hook.conf"
# (an earlier scenario may have left no configuration file: the defaults)
DH_SAVED="$(out)"
[[ -e "$DH_CONF" ]] && cp "$DH_CONF" "$DH_SAVED" || DH_SAVED=
printf '%s\n' preflight=block prometheus_textfile=/var/lib/prom >> "$DH_CONF"
mkdir -p "$E2E_ROOT/var/lib/prom"
BLOCK_V="$(uu_repack linux-kbuild-6.1 "$FAIL_V" +poison3 /usr/lib/linux-kbuild-6.1/scripts/preflight-poison)"
rm -f "$UU_LOG"
sleep 1
T16="$(date +%s)"
o="$(out)"
RC=0; in_root unattended-upgrade -v > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$UU_LOG" | sed 's/^/    | /' || true
check "unattended-upgrade reports the failed step (rc=$RC)" test "$RC" != 0
check "linux-kbuild-6.1 is not upgraded: still $FAIL_V" test "$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)" == "$FAIL_V"
check "the block says so in unattended-upgrades' log, and how to go on" \
    bash -c 'grep -qF "preflight = block: stopping apt" "$1" && grep -qF "apt-mark hold linux-kbuild-6.1" "$1"' _ "$UU_LOG"
N1="$(builds_since "$T16" e2e-failmod "$OLD")"
check "e2e-failmod was test-built for $OLD that night ($N1)" test "$N1" -ge 1
st="$(out)"; RC=0; in_root dkms-hook status > "$st" 2>&1 || RC=$?
grep -F BLOCKED "$st" | sed 's/^/    | /' || true
check "status exits 1 and says BLOCKED for e2e-failmod/1.0 against $BLOCK_V (rc=$RC)" \
    bash -c '[[ $1 == 1 ]] && grep "BLOCKED since" "$2" | grep -F "e2e-failmod/1.0" | grep -qF "linux-kbuild-6.1 $3"' _ "$RC" "$st" "$BLOCK_V"
o="$(out)"; in_root dkms-hook motd > "$o" 2>&1 || true
check "the login notice says the upgrade is blocked" contains "$o" "the upgrade to linux-kbuild-6.1 $BLOCK_V is blocked since"
check "the textfile counts the block" grep -qE '^dkms_hook_preflight_blocked [1-9]' "$E2E_ROOT/var/lib/prom/dkms_hook.prom"
check "the log has it" contains "$E2E_ROOT/var/log/dkms-hook.log" "preflight = block stopped apt: e2e-failmod/1.0"
# The next night: the same package version, nothing it reads has changed.
rm -f "$UU_LOG"
sleep 1
T16B="$(date +%s)"
RC=0; in_root unattended-upgrade -v > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$UU_LOG" | sed 's/^/    | /' || true
check "the next night: blocked again (rc=$RC), from the record" contains "$UU_LOG" "against linux-kbuild-6.1 $BLOCK_V still fails, as at"
check "…without a test build of e2e-failmod ($(builds_since "$T16B" e2e-failmod "$OLD"))" test "$(builds_since "$T16B" e2e-failmod "$OLD")" == 0
# Later scenarios run with the configuration as it was, and no block.
if [[ -n "$DH_SAVED" ]]; then cp "$DH_SAVED" "$DH_CONF"; else rm -f "$DH_CONF"; fi
rm -f "$E2E_ROOT/var/lib/dkms-hook/blocked.json"
verdict

scenario "17: unattended-upgrades installs new headers and a new linux-kbuild in separate steps: one test build and one build per pair"
# Both feed $OLD's build tree; unattended-upgrades installs each in its own
# minimal step (the headers do not need the new kbuild), each step its own
# dpkg run with its own hooks.
e2e_check_uu_two_steps "$E2E_OLD_HEADERS" linux-kbuild-6.1 "acpi-call/$E2E_ACPI_CALL_UPSTREAM" "$OLD" +uu17
T17="$UU_T"
N17N="$(builds_since "$T17" acpi-call "$NEW")"
check "$NEW (fed by the kbuild only): its one test build is installed, not compiled again ($N17N)" test "$N17N" == 1
V4L2_N="$(builds_since "$T17" v4l2loopback "$OLD")"
check "…and so was $V4L2 ($V4L2_N)" test "$V4L2_N" == 2
st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
check "status: acpi-call fresh for $OLD" state_is "$st" "acpi-call/$E2E_ACPI_CALL_UPSTREAM" "$OLD" fresh
check "dkms status: installed for $OLD" installed acpi-call "$OLD"
verdict

scenario "9: removing the headers of $OLD: a warning after the removal, the module stays"
o="$(out)"
RC=0; e2e_apt_offline remove "$E2E_OLD_HEADERS" > "$o" 2>&1 || RC=$?
grep -F 'dkms-hook' "$o" | sed 's/^/    | /' || true
check "apt-get exits 0 (rc=$RC)" test "$RC" == 0
check "the warning names the removed headers" contains "$o" "dkms-hook: warning: $OLD: headers are gone ($E2E_OLD_HEADERS): its dkms modules (acpi-call"
check "…and says what really happens" contains "$o" "stay installed but can no longer be rebuilt for $OLD"
check "dkms status: acpi-call still installed for $OLD" installed acpi-call "$OLD"
check "the .ko stays" test -n "$(ko acpi_call "$OLD")"
verdict

scenario "11: every dkms.conf of Debian 12 main, on amd64 and cloud-amd64: dkms-hook excludes what dkms excludes"
CLOUD="${NEW%-amd64}-cloud-amd64"
# Unpacked, not configured: dkms 3.0.10's autoinstall fails the headers
# package of a kernel that v4l2loopback's BUILD_EXCLUSIVE excludes (exit 11,
# "One or more modules failed to install"); the tree is what matters here.
RC=0; e2e_retry 3 in_root sh -c 'cd /var/cache/apt/archives && apt-get -q download "$1"' _ "linux-headers-$CLOUD=$E2E_NEW_VERSION" >&2 || RC=$?
check "linux-headers-$CLOUD downloaded (rc=$RC)" test "$RC" == 0
in_root sh -c 'dpkg --unpack /var/cache/apt/archives/"$1"_*.deb' _ "linux-headers-$CLOUD" >&2
st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
sed 's/^/    | /' "$st"
check "$V4L2 is excluded for $CLOUD (no CONFIG_VIDEO_DEV there)" state_is "$st" "$V4L2" "$CLOUD" excluded
check "…and fresh for $NEW" state_is "$st" "$V4L2" "$NEW" fresh
e2e_check_dkms_conf_corpus
in_root dpkg --purge "linux-headers-$CLOUD" >&2
verdict

scenario "12: dkms 3.0.10 has no kernel_preinst: the guard does nothing and prints nothing"
check "no preinst.d hook of dkms's" test ! -e "$E2E_ROOT/etc/kernel/preinst.d/dkms"
check "the guard is installed in preinst.d and postinst.d" \
    test -x "$E2E_ROOT/etc/kernel/preinst.d/00-dkms-hook-guard" -a -x "$E2E_ROOT/etc/kernel/postinst.d/00-dkms-hook-guard"
SHA12="$(sha "$(ko acpi_call "$NEW")")"
# As linux-image-NEW's preinst runs its hooks on an upgrade or reinstall.
o="$(out)"
RC=0; in_root run-parts --report --exit-on-error --arg="$NEW" --arg="/boot/vmlinuz-$NEW" /etc/kernel/preinst.d > "$o" 2>&1 || RC=$?
check "preinst.d: run-parts exits 0 (rc=$RC)" test "$RC" == 0
check "preinst.d: nothing printed" test ! -s "$o"
o="$(out)"
RC=0; in_root /etc/kernel/postinst.d/00-dkms-hook-guard "$NEW" "/boot/vmlinuz-$NEW" > "$o" 2>&1 || RC=$?
check "postinst.d's guard: exit 0 (rc=$RC), nothing printed" test "$RC" == 0 -a ! -s "$o"
check "$NEW: acpi_call.ko unchanged" test "$(sha "$(ko acpi_call "$NEW")")" == "$SHA12"
check "nothing saved" test ! -e "$E2E_ROOT/var/lib/dkms-hook/guarded.json" -a ! -e "$E2E_ROOT/var/lib/dkms-hook/guarded"
verdict

scenario "7: after apt remove dkms-hook (conffiles kept), apt still works"
e2e_apt_offline remove dkms-hook >&2
check "the conffiles stay" test -f "$E2E_ROOT/etc/apt/apt.conf.d/80dkms-hook"
check "…the Pre-Install-Pkgs script too" test -x "$E2E_ROOT/etc/dkms/dkms-hook-preflight"
mkdir -p "$E2E_ROOT/root/tiny/DEBIAN"
printf 'Package: e2e-tiny\nVersion: 1.0\nArchitecture: all\nMaintainer: e2e <e2e@example.org>\nDescription: tiny package\n' \
    > "$E2E_ROOT/root/tiny/DEBIAN/control"
in_root dpkg-deb -b /root/tiny /root/e2e-tiny.deb >/dev/null
o="$(out)"
RC=0; in_root apt-get -y -q -o Dpkg::Use-Pty=0 install /root/e2e-tiny.deb > "$o" 2>&1 || RC=$?
check "apt-get install exits 0 (rc=$RC)" test "$RC" == 0
check "no error line" lacks "$o" "E: "
o="$(out)"
RC=0; in_root apt -y -o Dpkg::Use-Pty=0 --no-download remove e2e-tiny > "$o" 2>&1 || RC=$?
check "apt (JSON hooks) remove exits 0 (rc=$RC)" test "$RC" == 0
check "no error line" lacks "$o" "E: "
verdict

########################################################################## root B
new_root
ACPI_OLD="$(ko acpi_call "$OLD")"
[[ -n "$ACPI_OLD" ]] || e2e_die "acpi-call was not built for $OLD"

scenario "2: control, stock dkms only: the module of $OLD stays stale (the bug)"
M_BEFORE="$(mtime "$ACPI_OLD")" S_BEFORE="$(sha "$ACPI_OLD")"
sleep 1
RC=0; e2e_apt_offline install "$E2E_NEW_HEADERS=$E2E_NEW_VERSION" > "$(out)" 2>&1 || RC=$?
check "apt-get exits 0" test "$RC" == 0
check "linux-kbuild-6.1 upgraded in place" test "$(in_root dpkg-query -W -f '${Version}' linux-kbuild-6.1)" == "$E2E_NEW_VERSION"
check "$NEW got acpi-call" test -n "$(ko acpi_call "$NEW")"
check "BUG: $OLD acpi_call.ko not rebuilt (mtime unchanged)" test "$(mtime "$ACPI_OLD")" == "$M_BEFORE"
check "BUG: …byte-identical" test "$(sha "$ACPI_OLD")" == "$S_BEFORE"
verdict

scenario "8: dkms-hook installed afterwards finds the stale module; replay rebuilds it"
install_dkms_hook
st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
sed 's/^/    | /' "$st"
check "status says stale" grep -qE "^acpi-call/[^ ]+ +$OLD +stale +built before linux-kbuild-6.1 was unpacked" "$st"
o="$(out)"
RC=0; in_root dkms-hook replay /var/log/dpkg.log > "$o" 2>&1 || RC=$?
sed 's/^/    | /' "$o"
check "replay exits 0 (rc=$RC)" test "$RC" == 0
check "replay rebuilt $OLD" contains "$o" "dkms-hook: rebuilt acpi-call/$E2E_ACPI_CALL_UPSTREAM for $OLD (linux-kbuild-6.1 $E2E_OLD_VERSION → $E2E_NEW_VERSION)"
check "$OLD acpi_call.ko is new" test "$(mtime "$ACPI_OLD")" -gt "$M_BEFORE"
check "dkms status: installed for $OLD" installed acpi-call "$OLD"
check "replay left $NEW alone (fresh)" lacks "$o" "for $NEW"
in_root dkms-hook status > "$st" 2>&1 || true
check "status now says fresh" grep -qE "^acpi-call/[^ ]+ +$OLD +fresh" "$st"
verdict

echo "e2e: $((SECONDS - T0)) s for the scenarios"
e2e_summary
