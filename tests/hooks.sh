#!/bin/bash
# Tests of the files installed into hook directories: the three kernel hooks,
# the dpkg.cfg.d post-invoke line, each command string of apt.conf.d and the
# Pre-Install-Pkgs script it names. Each is run from a temporary directory
# with /usr/sbin/dkms-hook rewritten to a recording stub (or to a missing
# path). No root, apt or dpkg run needed beyond apt-config, which parses
# apt.conf.d/80dkms-hook as apt does.
#   tests/hooks.sh        # prints "N passed, M failed" last; non-zero on failure
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=lib.sh
source tests/lib.sh

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
BIN=/usr/sbin/dkms-hook
PRE=/etc/dkms/dkms-hook-preflight  # the Pre-Install-Pkgs script (Makefile)
RUN=/run/dkms-hook                 # the JSON hook's quiet records (apt::quiet)
stub=$tmp/present/dkms-hook       # records its argv, prints to stderr
missing=$tmp/missing/dkms-hook    # never exists
calls=$tmp/calls
mkdir -p "$tmp/present" "$tmp/missing" "$tmp/out"
cat > "$stub" <<STUB
#!/bin/sh
{ printf 'call'; for a in "\$@"; do printf ' [%s]' "\$a"; done
  printf ' suspend=%s\n' "\${DKMS_HOOK_SUSPEND:-}"; } >> "$calls"
# STUB_STDIN=FILE: keep what arrives on stdin (apt's info stream).
if [ -n "\${STUB_STDIN:-}" ]; then cat > "\$STUB_STDIN"; fi
echo "stub-stderr" >&2
exit "\${STUB_EXIT:-0}"
STUB
chmod 0755 "$stub"

# rewrite FILE TARGET [SCRIPT]: copy of FILE with the binary path replaced
# by TARGET (and the Pre-Install-Pkgs script's path by SCRIPT).
rewrite() {
    local out
    out=$tmp/out/$(basename "$1").$(basename "$(dirname "$2")")
    sed "s#$BIN#$2#g; s#$PRE#${3:-$PRE}#g; s#$RUN/#$tmp/run/#g" "$1" > "$out"
    chmod --reference="$1" "$out"
    echo "$out"
}

# --- Collect the commands: NAME, KIND, shell command for $stub and $missing.
names=() kinds=() cmd_present=() cmd_missing=() expect_args=()

kargs=(6.1.0-99-amd64 /boot/vmlinuz-6.1.0-99-amd64)
f=hooks/kernel-hook
check "$f: executable, #!/bin/sh, sh -n" \
    bash -c "[ -x '$f' ] && head -n1 '$f' | grep -qx '#!/bin/sh' && sh -n '$f'"
for phase in header_postinst postinst prerm; do
    # Installed under each /etc/kernel/PHASE.d: the directory names the phase.
    for which in present missing; do
        mkdir -p "$tmp/$which/$phase.d"
        if [ "$which" = present ]; then target=$stub; else target=$missing; fi
        sed "s#$BIN#$target#g" "$f" > "$tmp/$which/$phase.d/dkms-hook"
        chmod 0755 "$tmp/$which/$phase.d/dkms-hook"
    done
    names+=("$f in $phase.d") kinds+=(kernel)
    cmd_present+=("$(printf '%q ' "$tmp/present/$phase.d/dkms-hook" "${kargs[@]}")")
    cmd_missing+=("$(printf '%q ' "$tmp/missing/$phase.d/dkms-hook" "${kargs[@]}")")
    expect_args+=("call [kernel-hook] [$phase] [${kargs[0]}] [${kargs[1]}]")
done

# The guard: installed under preinst.d and postinst.d as 00-dkms-hook-guard,
# a name run-parts accepts that sorts before dkms's own "dkms" there.
f=hooks/kernel-guard
guard=00-dkms-hook-guard
check "$f: executable, #!/bin/sh, sh -n" \
    bash -c "[ -x '$f' ] && head -n1 '$f' | grep -qx '#!/bin/sh' && sh -n '$f'"
check "Makefile installs $f as $guard in preinst.d and postinst.d" \
    bash -c "grep -qF 'for phase in preinst postinst; do' Makefile &&
             grep -qF 'install -D -m 0755 $f \$(DESTDIR)\$(SYSCONFDIR)/kernel/\$\$phase.d/$guard' Makefile"
mkdir -p "$tmp/order"
for n in dkms dkms-hook initramfs-tools zz-update-grub "$guard"; do
    printf '#!/bin/sh\necho %s\n' "$n" > "$tmp/order/$n"; chmod 0755 "$tmp/order/$n"
done
check "run-parts runs $guard first, before dkms (also under LC_ALL=C.UTF-8)" \
    bash -c "[ \"\$(run-parts '$tmp/order' | head -n1)\" = '$guard' ] &&
             [ \"\$(LC_ALL=C.UTF-8 run-parts '$tmp/order' | head -n1)\" = '$guard' ]"
for phase in preinst postinst; do
    for which in present missing; do
        mkdir -p "$tmp/$which/$phase.d"
        if [ "$which" = present ]; then target=$stub; else target=$missing; fi
        sed "s#$BIN#$target#g" "$f" > "$tmp/$which/$phase.d/$guard"
        chmod 0755 "$tmp/$which/$phase.d/$guard"
    done
    names+=("$f in $phase.d") kinds+=(kernel)
    cmd_present+=("$(printf '%q ' "$tmp/present/$phase.d/$guard" "${kargs[@]}")")
    cmd_missing+=("$(printf '%q ' "$tmp/missing/$phase.d/$guard" "${kargs[@]}")")
    expect_args+=("call [kernel-guard] [$phase] [${kargs[0]}] [${kargs[1]}]")
done

# update-motd.d: pam_motd runs it at login.
f=hooks/update-motd
check "$f: executable, #!/bin/sh, sh -n" \
    bash -c "[ -x '$f' ] && head -n1 '$f' | grep -qx '#!/bin/sh' && sh -n '$f'"
names+=("$f") kinds+=(motd)
cmd_present+=("$(printf '%q' "$(rewrite "$f" "$stub")")")
cmd_missing+=("$(printf '%q' "$(rewrite "$f" "$missing")")")
expect_args+=("call [motd]")

# dpkg.cfg.d: dpkg runs the value of post-invoke= with sh -c.
dpkg_line() { sed -n 's/^post-invoke=//p' "$1"; }
f=hooks/dpkg.cfg.d-dkms-hook
check "$f: exactly one post-invoke line" \
    test "$(grep -c '^post-invoke=' "$f")" = 1
names+=("$f") kinds+=(dpkg)
cmd_present+=("$(dpkg_line "$(rewrite "$f" "$stub")")")
cmd_missing+=("$(dpkg_line "$(rewrite "$f" "$missing")")")
expect_args+=("call [post-invoke]")

# The Pre-Install-Pkgs script, run by apt through apt.conf.d's line.
f=hooks/dkms-hook-preflight
check "$f: executable, #!/bin/sh, sh -n" \
    bash -c "[ -x '$f' ] && head -n1 '$f' | grep -qx '#!/bin/sh' && sh -n '$f'"
check "Makefile installs $f as $PRE (0755)" \
    grep -qF "install -D -m 0755 $f \$(DESTDIR)\$(SYSCONFDIR)/${PRE#/etc/}" Makefile
pre_present=$(rewrite "$f" "$stub") pre_missing=$(rewrite "$f" "$missing")

# apt.conf.d: let apt-config parse the file; keep the entries that name the
# (rewritten) binary or script, which excludes the host's own configuration.
f=apt.conf.d/80dkms-hook
apt_dump() { apt-config -c "$1" dump --no-empty --format '%f=%v%n' | grep -F "$tmp/"; }
apt_value() { sed -n "s#^$2::=##p" <<< "$1"; }
dump_present=$(apt_dump "$(rewrite "$f" "$stub" "$pre_present")")
dump_missing=$(apt_dump "$(rewrite "$f" "$missing" "$pre_missing")")
declare -A apt_expect=(
    [DPkg::Post-Invoke]="call [post-invoke]"
    [AptCli::Hooks::Install]="call [apt-json-hook]"
    [AptCli::Hooks::Upgrade]="call [apt-json-hook]"
    [DPkg::Pre-Install-Pkgs]="call [pre-install-pkgs]"
)
for key in DPkg::Post-Invoke AptCli::Hooks::Install AptCli::Hooks::Upgrade DPkg::Pre-Install-Pkgs; do
    p=$(apt_value "$dump_present" "$key") m=$(apt_value "$dump_missing" "$key")
    check "$f: $key has exactly one command" \
        test -n "$p" -a "$(grep -c . <<< "$p")" = 1
    names+=("$f $key")
    if [ "$key" = DPkg::Pre-Install-Pkgs ]; then kinds+=(preinst); else kinds+=(apt); fi
    cmd_present+=("$p") cmd_missing+=("$m") expect_args+=("${apt_expect[$key]}")
done
# apt keys the protocol version on the first word of the command, and shows
# the whole command in its error line when the hook stops it (issue 20.6):
# the command is the script's path alone.
pre=$(apt_value "$dump_present" DPkg::Pre-Install-Pkgs)
check "$f: Pre-Install-Pkgs is $PRE alone (apt's error line names it plainly)" \
    test "$pre" = "$pre_present"
check "$f: Version 3 keyed on the script's path" \
    grep -qxF "DPkg::Tools::Options::$pre_present::Version=3" <<< "$dump_present"
check "$f: no other Pre-Install-Pkgs option of ours" \
    test "$(grep -c '^DPkg::Tools::Options::' <<< "$dump_present")" = 1

# --- Run every command in every situation.
# run CMD [ENV...]: run CMD with sh -c (or execute a kernel hook) with env
# assignments; sets rc, out (stdout+stderr) and called (stub's log).
run() {
    local cmd=$1; shift
    : > "$calls"
    out=$(env "$@" sh -c "$cmd" < /dev/null 2>&1); rc=$?
    called=$(cat "$calls")
}

for i in "${!names[@]}"; do
    n=${names[$i]} k=${kinds[$i]} cp=${cmd_present[$i]} cm=${cmd_missing[$i]} want=${expect_args[$i]}
    base=(-u DKMS_HOOK_SUSPEND -u DPKG_FRONTEND_LOCKED STUB_EXIT=0)

    run "$cp" "${base[@]}"
    check "$n: present: exit 0" test "$rc" = 0
    check "$n: present: stub called once with the arguments" test "$called" = "$want suspend="
    if [ "$k" = motd ]; then
        check "$n: present: the binary's stderr stays out of the login notice" test -z "$out"
    else
        check "$n: present: stderr of the binary reaches the caller" grep -q stub-stderr <<< "$out"
    fi

    run "$cm" "${base[@]}"
    check "$n: missing binary: exit 0" test "$rc" = 0
    check "$n: missing binary: silent" test -z "$out"

    run "$cp" "${base[@]}" STUB_EXIT=1
    check "$n: failing binary: exit 0" test "$rc" = 0
    run "$cp" "${base[@]}" STUB_EXIT=2
    check "$n: binary exits 2: exit 0" test "$rc" = 0
    run "$cp" "${base[@]}" STUB_EXIT=100
    if [ "$k" = preinst ]; then
        # preflight = block: the one status that stops apt.
        check "$n: exit 100 (preflight = block) stops apt with 100" test "$rc" = 100
        check "$n: exit 100: the binary's message reaches apt's output" grep -q stub-stderr <<< "$out"
        # apt's info stream: stdin (or the fd in APT_HOOK_INFO_FD) reaches the binary.
        : > "$calls"
        printf 'VERSION 3\n\n' | env "${base[@]}" STUB_STDIN="$tmp/stdin" sh -c "$cp" > /dev/null 2>&1
        check "$n: apt's info stream on stdin reaches the binary" \
            test "$(cat "$tmp/stdin" 2>/dev/null)" = "VERSION 3"
    else
        check "$n: exit 100: still exit 0" test "$rc" = 0
    fi

    run "$cp" "${base[@]}" DKMS_HOOK_SUSPEND=1
    check "$n: DKMS_HOOK_SUSPEND=1: exit 0" test "$rc" = 0
    if [ "$k" = preinst ] || [ "$k" = motd ]; then
        # No guard precedes the binary here: the binary honours it (motd
        # only reads state, so it speaks even when hooks are suspended).
        check "$n: DKMS_HOOK_SUSPEND=1: passed on to the binary" test "$called" = "$want suspend=1"
    else
        check "$n: DKMS_HOOK_SUSPEND=1: binary not called" test -z "$called"
    fi
    run "$cp" "${base[@]}" DKMS_HOOK_SUSPEND=0
    check "$n: DKMS_HOOK_SUSPEND=0: binary called" test -n "$called"
    # Regression (issue 11.17): an unquoted test printed "[: unexpected
    # operator" for a value with a space and skipped the hook.
    run "$cp" "${base[@]}" "DKMS_HOOK_SUSPEND=a b"
    check "$n: DKMS_HOOK_SUSPEND='a b': exit 0, no shell error, binary called" \
        test "$rc" = 0 -a -n "$called" -a -z "$(grep -v stub-stderr <<< "$out")"

    if [ "$k" = dpkg ]; then
        run "$cp" "${base[@]}" DPKG_FRONTEND_LOCKED=1
        check "$n: under apt (DPKG_FRONTEND_LOCKED set): exit 0" test "$rc" = 0
        check "$n: under apt (DPKG_FRONTEND_LOCKED set): silent, not called" \
            test -z "$out$called"
    fi
    if [ "$k" = kernel ]; then
        f=$(eval "set -- $cp"; echo "$1")
        : > "$calls"; "$f" 6.1.0-99-amd64 > /dev/null 2>&1; rc=$?
        check "$n: one argument (header_postinst style): exit 0, passed on" \
            test "$rc:$(cat "$calls")" = "0:${want% \[*} suspend="
    fi
done

# --- The JSON hook's fast path: a later call of an apt run that the first
# call left quiet (json-quiet-PID-START of the sh's parent, apt) ends in the
# shell: the binary is not started and apt's socket is not read.
f=apt.conf.d/80dkms-hook
json=$(apt_value "$dump_present" AptCli::Hooks::Install)
mkdir -p "$tmp/run"
# quiet_run START: the line run by a parent (standing in for apt) that has
# left a record for itself with start time START ("own": its real one).
quiet_run() {
    : > "$calls"
    out=$(env -u DKMS_HOOK_SUSPEND RUN="$tmp/run" WANT="$1" CMD="$json" sh -c '
        read -r s < /proc/$$/stat; set -- ${s##*) }
        [ "$WANT" = own ] && WANT=${20}
        : > "$RUN/json-quiet-$$-$WANT"
        sh -c "$CMD"; rc=$?; rm -f "$RUN/json-quiet-$$-$WANT"; exit $rc' 2>&1); rc=$?
    called=$(cat "$calls")
}
quiet_run own
check "$f AptCli::Hooks::Install: apt's quiet record: exit 0, silent, binary not called" \
    test "$rc:$out:$called" = "0::"
quiet_run 1
check "$f AptCli::Hooks::Install: a record of another process with apt's pid: binary called" \
    test "$rc:$called" = "0:call [apt-json-hook] suspend="
if [ "$(id -u)" = 0 ]; then
    # A record that is not root's (apt runs as root) is not taken.
    : > "$calls"
    out=$(env -u DKMS_HOOK_SUSPEND RUN="$tmp/run" CMD="$json" sh -c '
        read -r s < /proc/$$/stat; set -- ${s##*) }
        : > "$RUN/json-quiet-$$-${20}"; chown nobody "$RUN/json-quiet-$$-${20}"
        sh -c "$CMD"; rc=$?; rm -f "$RUN/json-quiet-$$-${20}"; exit $rc' 2>&1); rc=$?
    check "$f AptCli::Hooks::Install: a record that is not root's: binary called" \
        test "$rc:$(cat "$calls")" = "0:call [apt-json-hook] suspend="
fi
# /proc unreadable: the line does not take s from the environment (here
# one whose 20th field names a record that exists).
: > "$calls"
out=$(env -u DKMS_HOOK_SUSPEND RUN="$tmp/run" CMD="${json//\/proc\/\$PPID\/stat//nonexistent}" sh -c '
    : > "$RUN/json-quiet-$$-20"
    s="1) $(seq -s " " 1 20)" sh -c "$CMD"; rc=$?; rm -f "$RUN/json-quiet-$$-20"; exit $rc' 2>&1); rc=$?
check "$f AptCli::Hooks::Install: /proc unreadable, s in the environment: binary called, no shell error" \
    test "$rc:$(cat "$calls"):$(grep -v stub-stderr <<< "$out")" = "0:call [apt-json-hook] suspend=:"
check "$f: both JSON hook lines are the same" \
    test "$json" = "$(apt_value "$dump_present" AptCli::Hooks::Upgrade)"

# --- Bash completion, as `make install` writes it from the built binary.
bin=${DKMS_HOOK_BIN:-target/debug/dkms-hook}
[ -x "$bin" ] || cargo build --locked -q
comp=$tmp/dkms-hook.bash
"$bin" completions bash > "$comp"
# The function `complete -F` names (_dkms__hook; _dkms-hook with Debian 13's clap_complete).
func=$(sed -n 's/^ *complete -F \([^ ]*\) .*/\1/p' "$comp" | head -n 1)
complete_words() { # complete_words WORD...: what bash offers after them
    bash -c 'f=$1; source "$2"; shift 2; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1));
             "$f" dkms-hook "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}";
             echo "${COMPREPLY[*]}"' _ "$func" "$comp" "$@"
}
# Regression (issue 12.13): clap_complete's case labels did not match.
check "completion: 'replay --' offers --dry-run and --json" \
    bash -c '[[ " $1 " == *" --dry-run "* && " $1 " == *" --json "* ]]' _ "$(complete_words dkms-hook replay --)"
check "completion: 'status --' offers --json" \
    bash -c '[[ " $1 " == *" --json "* ]]' _ "$(complete_words dkms-hook status --)"
top=$(complete_words dkms-hook "")
check "completion: commands offered" bash -c '[[ " $1 " == *" replay "* && " $1 " == *" sync "* ]]' _ "$top"
check "completion: hidden commands (init, man, completions) not offered" \
    bash -c '[[ " $1 " != *" init "* && " $1 " != *" man "* && " $1 " != *" completions "* ]]' _ "$top"

finish
