#!/bin/bash
# Preflight's own cost over the plain `dkms build` of the same pair, on a
# real Debian 12 root from the end-to-end tier's cached base (dkms 3.0.10,
# one kernel's headers, acpi-call): `dkms-hook preflight` of the archive's
# newer linux-kbuild-6.1 (one pair test-built in a private mount namespace
# over overlayfs) against `dkms build --force` of that pair. Medians of 5.
#   bash bench/preflight.sh          (root; prints one Markdown table row)
set -euo pipefail
# shellcheck source=../tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"
deb=${DKMS_HOOK_DEB:?name the package to install in DKMS_HOOK_DEB}
e2e_bench_root
cp "$deb" "$E2E_ROOT/root/dkms-hook.deb"
in_root apt-get -y -q install /root/dkms-hook.deb >/dev/null 2>&1
v="$(find "$E2E_ROOT/var/lib/dkms/acpi-call" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n 1)"
new="/var/cache/apt/archives/linux-kbuild-6.1_${E2E_NEW_VERSION}_amd64.deb"
hyperfine -N -r 5 -w 1 --export-json "$E2E_ROOT/h.json" \
    "chroot $E2E_ROOT dkms build --force -m acpi-call -v $v -k $E2E_OLD_KERNEL" \
    "chroot $E2E_ROOT dkms-hook preflight $new" >/dev/null 2>&1
python3 - "$E2E_ROOT/h.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
b, p = r[0]["median"], r[1]["median"]
over = p - b
print("| preflight of one pair vs. its plain `dkms build` (real Debian 12 root) | %.2f s vs %.2f s: +%.2f s (%.0f%%) | under 10%% + 1 s: %s |"
      % (p, b, over, 100 * over / b, "met" if over <= 0.1 * b + 1 else "MISSED"))
PY
