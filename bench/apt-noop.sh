#!/bin/bash
# What dkms-hook's hooks add to an apt run that does not concern the
# kernels: `apt-get install --reinstall -y hello` on a real root from the
# end-to-end tier's cached base (Debian 12: apt 2.6, dkms 3.0.10; Debian 13:
# apt 3.0, dkms 3.2), with the project's .deb installed and acpi-call built
# for one kernel, so that the hooks have real work to skip. Each round runs
# apt three times, in turn: with the hooks; without them (their apt.conf.d
# and dpkg.cfg.d files moved away); and with the same hook files calling a
# do-nothing program in place of /usr/sbin/dkms-hook (it answers apt's JSON
# hello and reads the Pre-Install-Pkgs stream): the floor that apt's hook
# protocol and the shells cost whatever the program does; and with every
# hook line starting no program at all (the JSON and Post-Invoke lines
# `:`, the Pre-Install-Pkgs script reading its stream with shell
# builtins): what apt and dpkg spend on the hook points themselves. Medians of RUNS
# rounds. With perf, the same runs also give the time apt and dpkg wait for
# the hook processes, which decides the target (the whole run's median
# moves by tens of ms between rounds). The hello .deb is fetched into the
# root's apt cache by the root's own apt (its sources come from the host's
# when the base was made).
#   DKMS_HOOK_DEB=pkg.deb bash bench/apt-noop.sh SUITE [RUNS]
#     SUITE: bookworm (Debian 12) or trixie (Debian 13); RUNS: default 20
#     (root; prints one Markdown table row, or a line saying why not)
set -euo pipefail
suite=${1:?name the suite: bookworm or trixie} runs=${2:-20}
deb=${DKMS_HOOK_DEB:-}
[[ -n "$deb" && -f "$deb" ]] || { echo "bench/apt-noop.sh: skipped ($suite): DKMS_HOOK_DEB names no package"; exit 0; }
export E2E_SUITE=$suite
# shellcheck source=../tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"
[[ "$(id -u)" == 0 ]] || { echo "bench/apt-noop.sh: skipped ($suite): needs root"; exit 0; }
[[ -f "$E2E_BASE_TARBALL" ]] || { echo "bench/apt-noop.sh: skipped ($suite): no cached base $E2E_BASE_TARBALL"; exit 0; }
case $suite in
    bookworm) release="Debian 12" ;;
    trixie) release="Debian 13" ;;
    *) e2e_die "unknown suite $suite" ;;
esac
trap 'e2e_remove_root "${E2E_ROOT:-}"' EXIT
e2e_extract_base
e2e_load_versions
e2e_mounts "$E2E_ROOT"
if [[ $suite == bookworm ]]; then
    e2e_install_old_world >/dev/null 2>&1
else
    first=${E2E_FIRST_KERNELS%% *}
    e2e_apt_offline install "linux-headers-$first" >/dev/null 2>&1
fi
e2e_apt_offline install acpi-call-dkms >/dev/null 2>&1
cp "$deb" "$E2E_ROOT/root/dkms-hook.deb"
in_root apt-get -y -q -o Dpkg::Use-Pty=0 install /root/dkms-hook.deb >/dev/null 2>&1
[[ -n "$(find "$E2E_ROOT"/lib/modules/*/updates/dkms -name 'acpi_call.ko*' 2>/dev/null)" ]] \
    || e2e_die "acpi-call was not built"
# hello into the root's apt cache, by the root's apt (its lists may be older
# than the archive: refreshed once if the download fails).
fetch_hello() {
    in_root apt-get -y -q install -d hello >/dev/null 2>&1 && return
    e2e_retry 3 in_root apt-get -q update >/dev/null 2>&1 || return
    e2e_retry 3 in_root apt-get -y -q install -d hello >/dev/null 2>&1
}
fetch_hello || { echo "bench/apt-noop.sh: skipped ($suite): cannot download hello with the root's apt"; exit 0; }
e2e_apt_offline install hello >/dev/null 2>&1
# The do-nothing program, built with the C compiler cargo links with.
work=$(mktemp -d "$E2E_TMP_BASE/dkms-hook-bench.XXXXXX")
trap 'rm -rf "$work"; e2e_remove_root "${E2E_ROOT:-}"' EXIT
cat > "$work/null.c" <<'EOF'
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
/* Reads until `end` has been received (or EOF). */
static void until(int fd, const char *end) {
    static char buf[1 << 20];
    size_t n = 0;
    ssize_t r;
    buf[0] = 0;
    while (n < sizeof buf - 1 && (r = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0) {
        n += (size_t)r;
        buf[n] = 0;
        if (strstr(buf, end)) return;
    }
}
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "apt-json-hook") && getenv("APT_HOOK_SOCKET")) {
        int fd = atoi(getenv("APT_HOOK_SOCKET"));
        const char *hello = "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"version\":\"0.2\"}}\n\n";
        until(fd, "\n\n");
        send(fd, hello, strlen(hello), MSG_NOSIGNAL);
        until(fd, "hooks.bye");
    } else if (argc > 1 && !strcmp(argv[1], "pre-install-pkgs")) {
        char b[65536];
        while (read(0, b, sizeof b) > 0) {}
    }
    return 0;
}
EOF
cc -O2 -o "$work/null" "$work/null.c"
# The hook files with lines that start no program, swapped in by rename.
sed -E '/^(AptCli::Hooks::(Install|Upgrade)|DPkg::Post-Invoke) \{$/{n;s/^  ".*";$/  ":";/}' \
    "$E2E_ROOT/etc/apt/apt.conf.d/80dkms-hook" > "$E2E_ROOT/etc/apt/apt.conf.d/80dkms-hook.bench-lines"
[[ "$(grep -c '^  ":";$' "$E2E_ROOT/etc/apt/apt.conf.d/80dkms-hook.bench-lines")" == 3 ]] \
    || e2e_die "the hook lines were not replaced"
printf '#!/bin/sh\nwhile read -r l; do :; done\n' > "$E2E_ROOT/etc/dkms/dkms-hook-preflight.bench-lines"
chmod 0755 "$E2E_ROOT/etc/dkms/dkms-hook-preflight.bench-lines"
cp -p "$E2E_ROOT/etc/apt/apt.conf.d/80dkms-hook" "$E2E_ROOT/etc/apt/apt.conf.d/80dkms-hook.bench-real"
cp -p "$E2E_ROOT/etc/dkms/dkms-hook-preflight" "$E2E_ROOT/etc/dkms/dkms-hook-preflight.bench-real"
# Both programs beside the hook's path, switched by renaming a hard link.
cp "$work/null" "$E2E_ROOT/usr/sbin/dkms-hook.bench-null"
cp "$E2E_ROOT/usr/sbin/dkms-hook" "$E2E_ROOT/usr/sbin/dkms-hook.bench-real"
# shellcheck disable=SC2016 # dpkg-query's own ${Version}
apt_version=$(in_root dpkg-query -W -f '${Version}' apt)
# shellcheck disable=SC2016
dkms_version=$(in_root dpkg-query -W -f '${Version}' dkms)
# The timed loop; when perf can record the scheduler's process events, the
# same runs also tell how long apt and dpkg waited for the hook processes
# (fork to exit of each shell they start for a hook line, apt's JSON
# messages built meanwhile included): the hooks' share of the run without
# the noise of the rest of it (dpkg's own work varies by tens of ms).
cat > "$work/loop.py" <<'PY'
import json, os, subprocess, sys, time
root, runs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cmd = ["chroot", root, "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
       "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
       "apt-get", "install", "--reinstall", "-y", "-q", "--no-download", "hello"]
hooks = [root + "/etc/apt/apt.conf.d/80dkms-hook", root + "/etc/dpkg/dpkg.cfg.d/dkms-hook"]
binary = root + "/usr/sbin/dkms-hook"
lined = [root + "/etc/apt/apt.conf.d/80dkms-hook", root + "/etc/dkms/dkms-hook-preflight"]
def arm(name):
    for f in lined:
        tmp = f + ".bench-new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.link(f + (".bench-lines" if name == "lines" else ".bench-real"), tmp)
        os.rename(tmp, f)
    for h in hooks:
        if name == "without":
            if os.path.exists(h): os.rename(h, h + ".off")
        elif os.path.exists(h + ".off"):
            os.rename(h + ".off", h)
    new = binary + ".bench-new"
    if os.path.lexists(new):
        os.unlink(new)
    os.link(binary + (".bench-null" if name == "floor" else ".bench-real"), new)
    os.rename(new, binary)  # a no-op when both name the same file
    if os.path.lexists(new):
        os.unlink(new)
done = []
for i in range(runs + 1):
    for a in ["with", "without", "floor", "lines"]:
        arm(a)
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if p.wait() != 0:
            sys.exit("apt-get failed")
        if i:  # the first round warms the caches
            done.append({"arm": a, "pid": p.pid, "ms": (time.perf_counter() - t) * 1000})
arm("with")
json.dump(done, open(out, "w"))
PY
if command -v perf >/dev/null && perf record -q -e sched:sched_process_exec -a -o "$work/probe.data" -- true >/dev/null 2>&1; then
    perf record -q -e sched:sched_process_fork,sched:sched_process_exec,sched:sched_process_exit \
        -a -o "$work/sched.data" -- /usr/bin/python3 "$work/loop.py" "$E2E_ROOT" "$runs" "$work/runs.json" >/dev/null 2>&1
    perf script -i "$work/sched.data" -F pid,time,event,trace > "$work/sched.txt" 2>/dev/null
else
    /usr/bin/python3 "$work/loop.py" "$E2E_ROOT" "$runs" "$work/runs.json"
    : > "$work/sched.txt"
fi
/usr/bin/python3 - "$work/runs.json" "$work/sched.txt" "$runs" "$release" "$apt_version" "$dkms_version" <<'PY'
import json, re, statistics, sys
done, sched, runs, release, apt, dkms = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), *sys.argv[4:7]
arms = ["with", "without", "floor", "lines"]
m = {a: statistics.median(r["ms"] for r in done if r["arm"] == a) for a in arms}
added, floor = m["with"] - m["without"], m["floor"] - m["without"]
# Processes from the scheduler's events: parent, first exec, fork and exit times.
parent, forked, exited, execs, pcomm = {}, {}, {}, {}, {}
for line in open(sched):
    f = re.match(r"\s*(\d+)\s+([\d.]+):\s+sched:(\w+):\s+(.*)", line)
    if not f:
        continue
    pid, t, ev, rest = int(f[1]), float(f[2]) * 1000, f[3], f[4]
    kv = dict(re.findall(r"(\w+)=(\S+)", rest))
    if ev == "sched_process_fork":
        c = int(kv["child_pid"])
        parent[c], forked[c], pcomm[c] = int(kv["pid"]), t, kv["comm"]
    elif ev == "sched_process_exec":
        execs.setdefault(pid, []).append(kv["filename"])
    elif ev == "sched_process_exit":
        exited[pid] = t
children = {}
for c, p in parent.items():
    children.setdefault(p, []).append(c)
def subtree(p):
    out, todo = [], [p]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += children.get(q, [])
    return out
def hook_ms(run_pid):
    # Shells apt or dpkg start for dkms-hook's lines: one running dkms-hook
    # or its preflight script, or none (dpkg's post-invoke= line under apt,
    # a JSON hook call that the apt run's quiet record ends in the shell,
    # the "lines" arm). No other line of the root starts nothing: the
    # "without" arm measures 0.
    total = 0.0
    for q in subtree(run_pid):
        if pcomm.get(q) not in ("apt-get", "dpkg") or not execs.get(q, [""])[0].endswith("/sh"):
            continue
        below = [e for r in subtree(q) for e in execs.get(r, [])][1:]
        ours = any(e.endswith(("/dkms-hook", "/dkms-hook-preflight")) for e in below)
        if (ours or not below) and q in exited:
            total += exited[q] - forked[q]
    return total
version = lambda v: v.split("-")[0].split("+")[0]
head = ("| no-op apt run, real %s root (apt %s, dkms %s): `apt-get install --reinstall hello`, %d rounds alternating with and without the hooks"
        % (release, version(apt), version(dkms), runs))
whole = "whole run: %+.1f ms (do-nothing program: %+.1f ms)" % (added, floor)
if forked:
    # The hooks' share, measured without the rest of the run's noise,
    # decides.
    h = {a: statistics.median(hook_ms(r["pid"]) for r in done if r["arm"] == a) for a in arms}
    print("%s (`bench/apt-noop.sh`); apt and dpkg waited for the hook processes %.1f ms, %.1f ms with a do-nothing program in dkms-hook's place, %.1f ms with hook lines that start no program (without the hooks: %.1f ms) | %s | ≤ 15 ms: %s |"
          % (head, h["with"], h["floor"], h["lines"], h["without"], whole,
             "met" if h["with"] <= 15 else "missed" + (" (below what the hook lines alone cost)" if h["lines"] > 15 else "")))
else:
    print("%s (`bench/apt-noop.sh`; no perf: the hook processes not timed) | %s | ≤ 15 ms: %s |"
          % (head, whole, "met" if added <= 15 else "missed"))
PY
