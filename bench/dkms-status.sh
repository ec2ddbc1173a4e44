#!/bin/bash
# `dkms status` against a no-op `dkms-hook post-invoke` on the same real
# system: a throwaway Debian 12 root from the end-to-end tier's cached base,
# with dkms 3.0.10, two kernels' headers and acpi-call built for one.
#   bash bench/dkms-status.sh BIN     (root; prints one Markdown table row)
set -euo pipefail
bin=$1
# shellcheck source=../tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"
e2e_bench_root
"$bin" --root "$E2E_ROOT" init
hyperfine -N -r 20 -w 2 --export-json "$E2E_ROOT/h.json" \
    "chroot $E2E_ROOT dkms status" "$bin --root $E2E_ROOT post-invoke" >/dev/null 2>&1
python3 - "$E2E_ROOT/h.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
d, h = r[0]["median"] * 1000, r[1]["median"] * 1000
print("| real Debian 12 root: `dkms status` %.0f ms, no-op post-invoke %.1f ms | %.0f× cheaper |" % (d, h, d / h))
PY
