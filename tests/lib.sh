# shellcheck shell=bash
# The test harness of the shell tiers (tests/hooks.sh, tests/package.sh):
# `check DESCRIPTION COMMAND...` passes when COMMAND succeeds; `finish`
# prints the closing line "N passed, M failed" and exits non-zero on a
# failure. Source it from bash.
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   - $*"; }
nok() { fail=$((fail + 1)); echo "FAIL - $*"; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else nok "$d"; fi; }
finish() { echo "$pass passed, $fail failed"; [ "$fail" = 0 ]; exit; }
