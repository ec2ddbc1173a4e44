#!/bin/bash
# Record dkms's own verdicts for the committed corpus: for every dkms.conf
# in tests/data/dkms-conf/confs, every kernel config in
# tests/data/dkms-conf/kernels and every dkms script named, one line
# `CONF KERNEL DKMS_VERSION excluded|builds` from oracle.sh (dkms's own
# read_conf). The integration test dkms_conf::the_corpus_agrees_with_dkms
# compares dkms-hook with these lines; the real-system tiers check them
# again against the dkms installed there (tests/e2e/lib.sh,
# e2e_check_dkms_conf_corpus).
#
#   record.sh DKMS_SCRIPT... > tests/data/dkms-conf/expected.txt
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="$here/../data/dkms-conf"
trees="$(mktemp -d)"
trap 'rm -rf "$trees"' EXIT
for k in "$data"/kernels/*/; do
    k="$(basename "$k")"
    mkdir -p "$trees/$k/build/include/config"
    gzip -dc "$data/kernels/$k/config.gz" > "$trees/$k/build/.config"
    gzip -dc "$data/kernels/$k/auto.conf.gz" > "$trees/$k/build/include/config/auto.conf"
done
echo "# dkms's own verdicts (tests/dkms-conf/record.sh); CONF KERNEL DKMS VERDICT"
for dkms in "$@"; do
    version="$(sed -n 's/^ *echo \$\{0,1\}"dkms-\([0-9.]*\)"$/\1/p' "$dkms" | head -n 1)"
    [[ -n "$version" ]] || { echo "record.sh: no version in $dkms" >&2; exit 2; }
    for conf in "$data"/confs/*/dkms.conf; do
        name="$(basename "$(dirname "$conf")")"
        for k in "$data"/kernels/*/; do
            k="$(basename "$k")"
            verdict="$(bash "$here/oracle.sh" "$dkms" probe 1 "$k" x86_64 "$conf" "$trees")"
            echo "$name $k $version $verdict"
        done
    done
done
