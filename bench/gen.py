#!/usr/bin/env python3
"""Generate benchmark inputs for dkms-hook: a fake Debian system below DIR.

  gen.py DIR --kernels 8 --modules 6 --packages 6000 --log-bytes N
           [--unrelated-tx 500] [--kbuild-tx]

Debian layout as on bookworm: linux-headers-6.1.0-N-{amd64,common} sharing
linux-kbuild-6.1, dkms pairs for every kernel, a status file with PACKAGES
paragraphs and a .list of realistic size for each, and a dpkg.log of about
LOG_BYTES of unrelated history. --unrelated-tx / --kbuild-tx append a
transaction to a separate file, dpkg.log.tx, for the caller to append.
"""
import argparse, os, random

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--kernels", type=int, default=4)
p.add_argument("--modules", type=int, default=5)
p.add_argument("--packages", type=int, default=2000)
p.add_argument("--log-bytes", type=int, default=1 << 20)
p.add_argument("--unrelated-tx", type=int, default=0)
p.add_argument("--kbuild-tx", action="store_true")
a = p.parse_args()
R = a.dir
rnd = random.Random(1040401)

def w(path, data, mtime=None):
    full = os.path.join(R, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(data)
    if mtime:
        os.utime(full, (mtime, mtime))

def link(path, target):
    full = os.path.join(R, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    if not os.path.lexists(full):
        os.symlink(target, full)

T0 = 1767225600  # 2026-01-01
status = []
def package(name, version, files, arch="amd64", mtime=T0):
    lines = ["/."]
    for f in files:
        parts = f.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/" + "/".join(parts[:i])
            if d not in lines:
                lines.append(d)
        lines.append(f)
    w(f"/var/lib/dpkg/info/{name}.list", "\n".join(lines) + "\n", mtime)
    status.append(f"Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: misc\n"
                  f"Installed-Size: {rnd.randint(10, 9999)}\nMaintainer: Someone <x@example.org>\n"
                  f"Architecture: {arch}\nVersion: {version}\nDepends: libc6 (>= 2.34)\n"
                  f"Description: package {name}\n some long description line\n .\n more text\n")

os.makedirs(os.path.join(R, "usr/lib/modules"), exist_ok=True)
link("/lib", "usr/lib")
kb = "/usr/lib/linux-kbuild-6.1"
package("linux-kbuild-6.1", "6.1.176-1",
        [f"{kb}/scripts/{s}" for s in ("Kbuild.include", "Makefile.build", "basic/fixdep", "mod/modpost", "sign-file")] +
        [f"{kb}/tools/objtool/objtool"], mtime=T0)
for d in ("scripts/basic", "scripts/mod", "tools/objtool"):
    os.makedirs(os.path.join(R, kb.lstrip("/"), d), exist_ok=True)
for i in range(a.kernels):
    abi = f"6.1.0-{10 + i}"
    k = f"{abi}-amd64"
    common, flav = f"/usr/src/linux-headers-{abi}-common", f"/usr/src/linux-headers-{k}"
    # Header packages hold thousands of files.
    package(f"linux-headers-{abi}-common", "6.1.176-1",
            [f"{common}/Makefile"] + [f"{common}/include/linux/h{j}.h" for j in range(3000)], arch="all")
    package(f"linux-headers-{k}", "6.1.176-1",
            [f"{flav}/Makefile", f"{flav}/.config", f"{flav}/scripts", f"{flav}/tools", f"/lib/modules/{k}/build"] +
            [f"{flav}/include/generated/g{j}.h" for j in range(300)])
    w(f"{common}/Makefile", "VERSION = 6\n")
    # A real config's size: what each module's dkms.conf is judged against.
    w(f"{flav}/.config", "".join(f"CONFIG_OPTION_{j}=y\n" for j in range(8000)) + "CONFIG_DRM=m\n")
    w(f"{flav}/Makefile", f"include {common}/Makefile\n")
    link(f"{flav}/scripts", "../../lib/linux-kbuild-6.1/scripts")
    link(f"{flav}/tools", "../../lib/linux-kbuild-6.1/tools")
    link(f"/usr/lib/modules/{k}/build", flav)
    link(f"/usr/lib/modules/{k}/source", common)
    for m in range(a.modules):
        mod = f"mod{m}"
        # Plain assignments, and for one module a script (v4l2loopback's shape).
        conf = (f'PACKAGE_NAME="{mod}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="{mod}"\n'
                f'DEST_MODULE_LOCATION[0]="/updates/dkms"\nAUTOINSTALL="yes"\nBUILD_EXCLUSIVE_CONFIG="CONFIG_DRM"\n')
        if m == 0:
            conf += 'if [ -f $kernel_source_dir/.config ]; then . $kernel_source_dir/.config; fi\n'
        w(f"/usr/src/{mod}-1.0/dkms.conf", conf)
        link(f"/var/lib/dkms/{mod}/1.0/source", f"/usr/src/{mod}-1.0")
        d = f"/var/lib/dkms/{mod}/1.0/{k}/x86_64"
        w(f"{d}/module/{mod}.ko", "ko", T0 + 60)
        w(f"/usr/lib/modules/{k}/updates/dkms/{mod}.ko", "ko", T0 + 60)
        link(f"/var/lib/dkms/{mod}/kernel-{k}-x86_64", f"1.0/{k}/x86_64")
others = [f"libfoo{j}" for j in range(max(0, a.packages - len(status)))]
for name in others:
    package(name, f"1.{rnd.randint(0, 9)}-1",
            [f"/usr/lib/x86_64-linux-gnu/{name}.so.1"] + [f"/usr/share/doc/{name}/f{j}" for j in range(40)])
w("/var/lib/dpkg/status", "\n".join(status) + "\n")

# Unrelated history, bulk-written.
line = "2026-01-0{d} 1{h}:{m:02}:{s:02} status half-configured libfoo{n}:amd64 1.{v}-1\n"
chunk = "".join(
    f"2026-01-02 10:00:{i % 60:02} upgrade libfoo{i % 5000}:amd64 1.0-1 1.1-1\n"
    f"2026-01-02 10:00:{i % 60:02} status half-configured libfoo{i % 5000}:amd64 1.0-1\n"
    f"2026-01-02 10:00:{i % 60:02} status unpacked libfoo{i % 5000}:amd64 1.1-1\n"
    f"2026-01-02 10:00:{i % 60:02} status installed libfoo{i % 5000}:amd64 1.1-1\n"
    for i in range(2000))
log = os.path.join(R, "var/log/dpkg.log")
os.makedirs(os.path.dirname(log), exist_ok=True)
with open(log, "w") as f:
    n = 0
    while n < a.log_bytes:
        f.write(chunk)
        n += len(chunk)

tx = []
if a.unrelated_tx:
    tx.append("2026-02-01 10:00:00 startup archives unpack")
    for j in range(a.unrelated_tx):
        n = others[j % len(others)]
        tx += [f"2026-02-01 10:00:01 upgrade {n}:amd64 1.0-1 1.1-1",
               f"2026-02-01 10:00:01 status half-configured {n}:amd64 1.0-1",
               f"2026-02-01 10:00:01 status unpacked {n}:amd64 1.0-1",
               f"2026-02-01 10:00:01 status half-installed {n}:amd64 1.0-1",
               f"2026-02-01 10:00:02 status unpacked {n}:amd64 1.1-1"]
    tx.append("2026-02-01 10:00:05 startup packages configure")
    for j in range(a.unrelated_tx):
        n = others[j % len(others)]
        tx += [f"2026-02-01 10:00:06 configure {n}:amd64 1.1-1 <none>",
               f"2026-02-01 10:00:06 status unpacked {n}:amd64 1.1-1",
               f"2026-02-01 10:00:06 status half-configured {n}:amd64 1.1-1",
               f"2026-02-01 10:00:06 status installed {n}:amd64 1.1-1"]
        # Trigger churn: what makes real transactions ~20 lines a package.
        tx += [f"2026-02-01 10:00:06 status triggers-pending man-db:amd64 2.11.2-2",
               f"2026-02-01 10:00:06 status triggers-awaited {n}:amd64 1.1-1",
               f"2026-02-01 10:00:07 trigproc man-db:amd64 2.11.2-2 <none>",
               f"2026-02-01 10:00:07 status half-configured man-db:amd64 2.11.2-2",
               f"2026-02-01 10:00:07 status installed man-db:amd64 2.11.2-2",
               f"2026-02-01 10:00:07 status installed {n}:amd64 1.1-1",
               f"2026-02-01 10:00:07 conffile /etc/{n}/{n}.conf keep",
               f"2026-02-01 10:00:07 status triggers-pending libc-bin:amd64 2.36-9",
               f"2026-02-01 10:00:08 trigproc libc-bin:amd64 2.36-9 <none>",
               f"2026-02-01 10:00:08 status installed libc-bin:amd64 2.36-9"]
if a.kbuild_tx:
    tx += ["2026-02-01 11:00:00 startup archives unpack",
           "2026-02-01 11:00:01 upgrade linux-kbuild-6.1:amd64 6.1.176-1 6.1.192-2",
           "2026-02-01 11:00:01 status half-configured linux-kbuild-6.1:amd64 6.1.176-1",
           "2026-02-01 11:00:01 status unpacked linux-kbuild-6.1:amd64 6.1.176-1",
           "2026-02-01 11:00:01 status half-installed linux-kbuild-6.1:amd64 6.1.176-1",
           "2026-02-01 11:00:02 status unpacked linux-kbuild-6.1:amd64 6.1.192-2",
           "2026-02-01 11:00:03 startup packages configure",
           "2026-02-01 11:00:03 configure linux-kbuild-6.1:amd64 6.1.192-2 <none>",
           "2026-02-01 11:00:03 status installed linux-kbuild-6.1:amd64 6.1.192-2"]
    os.utime(os.path.join(R, "var/lib/dpkg/info/linux-kbuild-6.1.list"), (T0 + 3600 * 24 * 31,) * 2)
if tx:
    w("/var/log/dpkg.log.tx", "\n".join(tx) + "\n")
