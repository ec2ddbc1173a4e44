#!/bin/bash
# Benchmarks of dkms-hook as whole processes (hyperfine, medians).
#   bash bench/run.sh          full run (writes a 1 GB log under $BENCH_DIR)
#   bash bench/run.sh --short  small inputs, checks only that it all runs (CI)
# Prints a Markdown table; docs/benchmarks.md shows the last full run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
short=no; [ "${1:-}" = --short ] && short=yes
work=${BENCH_DIR:-$(mktemp -d /var/tmp/dkms-hook-bench.XXXXXX)}
trap 'rm -rf "$work"' EXIT
export TZ=UTC
# The benchmarks install nothing themselves (.ci/run installs hyperfine).
command -v hyperfine >/dev/null || { echo "bench/run.sh: hyperfine is needed (apt-get install hyperfine)" >&2; exit 2; }
cargo build --release --locked --quiet --manifest-path "$here/../Cargo.toml"
bin=$here/../target/release/dkms-hook
if [ $short = yes ]; then big=$((16 << 20)); huge=$((64 << 20)); runs=(-r 5 -w 1); else big=$((1 << 30)); huge=$((1 << 30)); runs=(-r 30 -w 3); fi

median() { # hyperfine JSON → median in ms
    python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["results"][0]["median"]*1000))' "$1"
}
bench() { # name, command...
    local name=$1; shift
    hyperfine -N "${runs[@]}" --export-json "$work/h.json" "$@" >/dev/null 2>&1 || hyperfine -N "${runs[@]}" "$@"
    printf '| %s | %s ms |\n' "$name" "$(median "$work/h.json")"
}
pair() { # name, command, reference command: run alternately (the machine is
    # noisy, and hyperfine would time one after the other), medians and ratio.
    python3 - "$1" "$2" "$3" "${runs[1]}" <<'PY'
import shlex, statistics, subprocess, sys, time
name, a, b, n = sys.argv[1], shlex.split(sys.argv[2]), shlex.split(sys.argv[3]), int(sys.argv[4])
def once(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000
for _ in range(2):
    once(a); once(b)
ta, tb = [], []
for _ in range(n):
    ta.append(once(a)); tb.append(once(b))
ma, mb = statistics.median(ta), statistics.median(tb)
print("| %s | %.1f ms vs %.1f ms: %.2f× |" % (name, ma, mb, ma / mb))
PY
}
gen() { python3 "$here/gen.py" "$@"; }

echo "| measurement | median |"
echo "|---|---|"
# 1. No-op post-invoke: the cursor at the end of a 1 MB and a 1 GB log.
for size in $((1 << 20)) $big; do
    r=$work/noop-$size; gen "$r" --kernels 4 --modules 5 --packages 2000 --log-bytes "$size"
    "$bin" --root "$r" init
    bench "post-invoke, nothing new, $((size >> 20)) MB dpkg.log" "$bin --root $r post-invoke"
done
# 2. After an unrelated 500-package transaction (~10,000 new lines).
r=$work/tx; gen "$r" --kernels 4 --modules 5 --packages 2000 --log-bytes $((1 << 20)) --unrelated-tx 500
"$bin" --root "$r" init; cp "$r/var/lib/dkms-hook/cursor.json" "$work/cursor"; cat "$r/var/log/dpkg.log.tx" >> "$r/var/log/dpkg.log"
bench "post-invoke after an unrelated 500-package transaction ($(wc -l < "$r/var/log/dpkg.log.tx") lines)" \
    --prepare "cp $work/cursor $r/var/lib/dkms-hook/cursor.json" "$bin --root $r post-invoke"
# 3. One kbuild upgrade, 4 kernels × 5 modules: reading, inventory and plan.
r=$work/kb; gen "$r" --kernels 4 --modules 5 --packages 2000 --log-bytes 0 --kbuild-tx
bench "plan for one kbuild upgrade, 4 kernels × 5 modules (replay --dry-run)" "$bin --root $r replay --dry-run $r/var/log/dpkg.log.tx"
# 4. status: 8 kernels × 6 modules, 6,000 packages; without the file-list
# cache (as root this run writes it), then from it, against merely reading
# every list once.
r=$work/st; gen "$r" --kernels 8 --modules 6 --packages 6000 --log-bytes 0
cache=$r/var/lib/dkms-hook/file-lists.cache
bench "status, 8 kernels × 6 modules, 6,000 packages, no file-list cache" \
    --prepare "rm -f $cache" "$bin --root $r status"
"$bin" --root "$r" status > /dev/null
if [ -f "$cache" ]; then
    pair "status from the file-list cache vs \`cat\` of every \`.list\`" \
        "$bin --root $r status" "sh -c 'cat $r/var/lib/dpkg/info/*.list > /dev/null'"
else
    echo "| status from the file-list cache | not measured: only root writes the cache |"
fi
# 5. replay throughput on a mostly unrelated log, against wc -l (both in one
# hyperfine run); peak memory of one replay.
r=$work/big; gen "$r" --kernels 4 --modules 5 --packages 200 --log-bytes "$huge"
log=$r/var/log/dpkg.log; cat "$log" > /dev/null
mb=$(( $(stat -c %s "$log") >> 20 ))
pair "\`replay --dry-run\` of a $mb MB log vs \`wc -l\` (time ratio; throughput is its inverse)" \
    "$bin --root $r replay --dry-run $log" "wc -l $log"
peak=$(python3 - "$bin" "$r" "$log" <<'PY'
import resource, subprocess, sys
subprocess.run([sys.argv[1], "--root", sys.argv[2], "replay", "--dry-run", sys.argv[3]], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
PY
)
echo "| peak RSS of that replay | $peak MB |"
# 6. Against dkms itself on a real system (full run, root, e2e base cached).
if [ $short = no ]; then bash "$here/dkms-status.sh" "$bin" || true; fi
# 7. The rebuild itself against a naive dkms loop, on a real root (root, e2e
# base cached; one round in the smoke run).
if [ $short = yes ]; then bash "$here/rebuild.sh" "$bin" 1; else bash "$here/rebuild.sh" "$bin" 3 --kernel-tree || true; fi
# 8. Preflight's overhead over a plain dkms build (full run, a built .deb).
if [ $short = no ] && [ -n "${DKMS_HOOK_DEB:-}" ]; then bash "$here/preflight.sh" || true; bash "$here/preflight-upgrade.sh" || true; fi
# 9. What the hooks add to an apt run that does not concern the kernels, on
# real Debian 12 and 13 roots (root, e2e bases cached, a built .deb; the
# smoke run: Debian 12, 2 rounds). Each says why when it cannot run.
if [ $short = yes ]; then
    bash "$here/apt-noop.sh" bookworm 2 || true
else
    for suite in bookworm trixie; do bash "$here/apt-noop.sh" "$suite" 20 || true; done
fi
