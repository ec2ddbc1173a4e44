#!/bin/sh
# Fuzz dkms-hook's parsers with cargo-fuzz (libFuzzer) on stable Rust.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Builds the fuzz targets, then runs each TARGET (default: all) for SECONDS
# (default 60), one at a time under `nice -n 19`. Prints per target the
# executions and crashes found, then `N passed, M failed`; exits 1 if any
# target crashed (its input is in fuzz/artifacts/TARGET/).
#
# Seeds are read from fuzz/corpus/TARGET/ (never written); inputs libFuzzer
# finds go to fuzz/work/TARGET/ (git-ignored) and are reused by later runs.
#
# Environment: SANITIZER (default none; address also works, ~2x slower),
# FUZZ_ARGS (extra libFuzzer flags), CARGO_FUZZ_VERSION (installed if missing).
#
# Stable Rust only: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the -Z flags it needs.
set -eu

secs=${1:-60}
[ $# -gt 0 ] && shift
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

export RUSTC_BOOTSTRAP=1
sanitizer=${SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz ..." >&2
    nice -n 19 cargo install cargo-fuzz --locked ${CARGO_FUZZ_VERSION:+--version "$CARGO_FUZZ_VERSION"} >&2
fi

if [ $# -eq 0 ]; then
    # shellcheck disable=SC2046 # target names have no spaces
    set -- $(cargo fuzz list)
fi

echo "building: $*" >&2
start=$(date +%s)
for t in "$@"; do
    nice -n 19 cargo fuzz build -s "$sanitizer" "$t" >&2
done
echo "build took $(( $(date +%s) - start ))s" >&2

mkdir -p logs
passed=0
failed=0
for t in "$@"; do
    mkdir -p "work/$t" "corpus/$t" "artifacts/$t"
    marker=$(mktemp)
    log="logs/$t.log"
    rc=0
    # First corpus dir receives new inputs; corpus/ stays seeds only.
    # shellcheck disable=SC2086
    nice -n 19 cargo fuzz run -s "$sanitizer" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -max_len=65536 ${FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    found=$(find "artifacts/$t" -type f -newer "$marker" \
        \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \))
    crashes=$(printf '%s' "$found" | grep -c . || true)
    rm -f "$marker"
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="? (exit $rc, see fuzz/$log)"
    fi
    if [ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ]; then
        passed=$((passed + 1))
        status=ok
    else
        failed=$((failed + 1))
        status=FAILED
    fi
    printf '%-18s %-6s executions=%s crashes=%s\n' "$t" "$status" "${execs:-?}" "$crashes"
    if [ "$status" = FAILED ]; then
        grep -m 1 -A 2 "panicked at" "$log" | sed 's/^/    /' || true
        printf '%s\n' "$found" | grep . | sed 's/^/    artifact: fuzz\//' || true
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
