# shellcheck shell=bash
# Shared helpers for the dkms-hook real-system end-to-end tier.
# Source this file from bash scripts running with `set -euo pipefail`.
#
# Environment knobs (all optional):
#   E2E_CACHE_DIR       where the cached base tarball lives  (/var/cache/dkms-hook-e2e)
#   E2E_TMP_BASE        where throw-away roots are extracted  (/var/tmp)
#   E2E_SUITE           Debian suite: bookworm (run.sh) or trixie (run-trixie.sh sets it)
#   E2E_MIRROR          override the Debian mirror URL (normally parsed from host apt sources)
#   E2E_SECURITY_MIRROR override the security mirror URL
#   E2E_KEEP_ROOT=1     do not delete the extracted root at the end (debugging)

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_CACHE_DIR="${E2E_CACHE_DIR:-/var/cache/dkms-hook-e2e}"
E2E_TMP_BASE="${E2E_TMP_BASE:-/var/tmp}"
E2E_SUITE="${E2E_SUITE:-bookworm}"
E2E_BASE_TARBALL="${E2E_CACHE_DIR}/base-${E2E_SUITE}.tar.zst"
E2E_VERSIONS_FILE="/root/e2e-versions.env"   # path inside the root
E2E_ROOT="${E2E_ROOT:-}"
E2E_MOUNTED=()

e2e_log()  { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
e2e_die()  { printf '[e2e] FATAL: %s\n' "$*" >&2; exit 1; }

# Loud skip: one line starting with SKIPPED:, exit 0 (callers treat as skip).
e2e_skip() {
    printf 'SKIPPED: %s\n' "$*"
    exit 0
}

e2e_require_root() {
    [[ "$(id -u)" == 0 ]] || e2e_skip "dkms-hook e2e tests need root (chroot, mount)"
}

# e2e_retry ATTEMPTS CMD... -- retry a command with a growing pause.
e2e_retry() {
    local attempts="$1"; shift
    local n=1 rc=0
    while :; do
        rc=0
        "$@" || rc=$?
        [[ "$rc" == 0 ]] && return 0
        if (( n >= attempts )); then
            e2e_log "giving up after ${n} attempts (rc=${rc}): $*"
            return "$rc"
        fi
        e2e_log "attempt ${n}/${attempts} failed (rc=${rc}), retrying in $((n * 5))s: $*"
        sleep "$((n * 5))"
        n=$((n + 1))
    done
}

# --- mirror detection --------------------------------------------------------

# Print "URI<TAB>SUITE" pairs for every enabled `deb` entry of the host's apt sources.
_e2e_host_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        awk '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
                    n = split(uris, U, /[ \t]+/); m = split(suites, S, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (U[i] != "" && S[j] != "") print U[i] "\t" S[j]
                }
                types = ""; uris = ""; suites = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        # deb [opts] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2 "\t" $3 }'
    done
}

# _e2e_pick_mirror PAIRS SUITE -- from "URI<TAB>SUITE" lines, set E2E_MIRROR,
# E2E_SECURITY_MIRROR (unless already set) and E2E_HAVE_UPDATES for SUITE.
_e2e_pick_mirror() {
    local pairs="$1" want="$2" uri suite
    while IFS=$'\t' read -r uri suite; do
        [[ -n "$uri" ]] || continue
        uri="${uri%/}"
        case "$suite" in
            "$want")               [[ -n "${E2E_MIRROR:-}" ]] || E2E_MIRROR="$uri" ;;
            "$want-security"|"$want/updates")
                                   [[ -n "${E2E_SECURITY_MIRROR:-}" ]] || E2E_SECURITY_MIRROR="$uri" ;;
            "$want-updates")       E2E_HAVE_UPDATES=1 ;;
        esac
    done <<< "$pairs"
}

# Sets E2E_MIRROR (Debian archive for $E2E_SUITE) and E2E_SECURITY_MIRROR
# (may stay empty), plus E2E_HAVE_UPDATES=1 if the host uses $E2E_SUITE-updates.
# A host without $E2E_SUITE entries (a Debian 12 host testing trixie): the URIs
# of its own release's entries, which a Debian mirror serves for every suite;
# E2E_GUESSED_MIRROR=1 then makes e2e_check_mirror probe -updates and -security.
e2e_detect_mirror() {
    local pairs host
    pairs="$(_e2e_host_sources || true)"
    E2E_HAVE_UPDATES="${E2E_HAVE_UPDATES:-0}"
    E2E_GUESSED_MIRROR=0
    _e2e_pick_mirror "$pairs" "$E2E_SUITE"
    if [[ -z "${E2E_MIRROR:-}" ]]; then
        host="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"')"
        if [[ -n "$host" && "$host" != "$E2E_SUITE" ]]; then
            _e2e_pick_mirror "$pairs" "$host"
            if [[ -n "${E2E_MIRROR:-}" ]]; then
                E2E_GUESSED_MIRROR=1
                E2E_HAVE_UPDATES=1   # e2e_check_mirror probes it
                e2e_log "no '${E2E_SUITE}' entry in the host's apt sources: using the URIs of its '${host}' entries"
            fi
        fi
    fi
    E2E_MIRROR="${E2E_MIRROR:-}"
    E2E_SECURITY_MIRROR="${E2E_SECURITY_MIRROR:-}"
    [[ -n "$E2E_MIRROR" ]] || e2e_skip "no '${E2E_SUITE}' Debian mirror found in host apt sources"
    export E2E_MIRROR E2E_SECURITY_MIRROR E2E_HAVE_UPDATES E2E_GUESSED_MIRROR
}

_e2e_fetch_head() {
    local url="$1"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 30 -o /dev/null "$url"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -T 30 -O /dev/null "$url"
    else
        # No HTTP client: let apt/debootstrap find out later.
        return 0
    fi
}

# Loud skip if the mirror cannot be reached at all. With a guessed mirror,
# drop -updates / -security when those URIs do not serve $E2E_SUITE.
e2e_check_mirror() {
    e2e_retry 3 _e2e_fetch_head "${E2E_MIRROR}/dists/${E2E_SUITE}/Release" \
        || e2e_skip "Debian mirror ${E2E_MIRROR} unreachable; cannot build the e2e base root"
    [[ "${E2E_GUESSED_MIRROR:-0}" == 1 ]] || return 0
    if [[ "$E2E_HAVE_UPDATES" == 1 ]] \
        && ! e2e_retry 2 _e2e_fetch_head "${E2E_MIRROR}/dists/${E2E_SUITE}-updates/Release"; then
        e2e_log "NOTE: ${E2E_MIRROR} has no ${E2E_SUITE}-updates; going without"
        E2E_HAVE_UPDATES=0
    fi
    if [[ -n "$E2E_SECURITY_MIRROR" ]] \
        && ! e2e_retry 2 _e2e_fetch_head "${E2E_SECURITY_MIRROR}/dists/${E2E_SUITE}-security/Release"; then
        e2e_log "NOTE: ${E2E_SECURITY_MIRROR} has no ${E2E_SUITE}-security; going without"
        E2E_SECURITY_MIRROR=""
    fi
}

# --- root handling -----------------------------------------------------------

# List mount points at or below $1 (deepest first).
_e2e_mounts_under() {
    local root="$1"
    awk -v r="$root" '{ gsub(/\\040/, " ", $2); if ($2 == r || index($2, r "/") == 1) print $2 }' /proc/self/mounts \
        | sort -r
}

# e2e_mounts [ROOT] -- mount proc, sys, dev (+devpts) into the root.
e2e_mounts() {
    local root="${1:-$E2E_ROOT}"
    [[ -n "$root" && -d "$root" ]] || e2e_die "e2e_mounts: bad root '${root}'"
    mkdir -p "$root/proc" "$root/sys" "$root/dev"
    # The root a mount point of its own, as "/" is on a real system: a
    # private mount namespace inside the chroot (dkms-hook preflight) can
    # then make "/" private, which needs a mount point.
    mount --bind "$root" "$root";               E2E_MOUNTED+=("$root")
    mount -t proc proc "$root/proc";            E2E_MOUNTED+=("$root/proc")
    mount -t sysfs -o ro sysfs "$root/sys";     E2E_MOUNTED+=("$root/sys")
    mount --bind /dev "$root/dev";              E2E_MOUNTED+=("$root/dev")
    if [[ -d /dev/pts ]]; then
        mount --bind /dev/pts "$root/dev/pts" && E2E_MOUNTED+=("$root/dev/pts")
    fi
}

# e2e_umounts [ROOT] -- unmount everything below the root (idempotent, never fails).
e2e_umounts() {
    local root="${1:-$E2E_ROOT}" mp
    [[ -n "$root" ]] || return 0
    root="$(readlink -f "$root" 2>/dev/null || printf '%s' "$root")"
    while read -r mp; do
        [[ -n "$mp" ]] || continue
        umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || e2e_log "WARNING: cannot unmount $mp"
    done < <(_e2e_mounts_under "$root")
    E2E_MOUNTED=()
    return 0
}

# e2e_remove_root [ROOT] -- unmount, then delete, refusing if anything is still mounted.
e2e_remove_root() {
    local root="${1:-$E2E_ROOT}"
    [[ -n "$root" && -d "$root" ]] || return 0
    case "$root" in
        "$E2E_TMP_BASE"/dkms-hook-e2e.*) ;;
        *) e2e_log "WARNING: refusing to delete unexpected path $root"; return 0 ;;
    esac
    e2e_umounts "$root"
    if [[ -n "$(_e2e_mounts_under "$(readlink -f "$root")")" ]]; then
        e2e_log "WARNING: mounts remain below $root; NOT deleting it"
        return 0
    fi
    if [[ "${E2E_KEEP_ROOT:-0}" == 1 ]]; then
        e2e_log "E2E_KEEP_ROOT=1: leaving $root in place"
        return 0
    fi
    rm -rf --one-file-system "$root"
}

# New empty root directory under $E2E_TMP_BASE; prints its path.
e2e_new_root_dir() {
    local d
    mkdir -p "$E2E_TMP_BASE"
    d="$(mktemp -d "$E2E_TMP_BASE/dkms-hook-e2e.XXXXXXXX")"
    # mktemp makes it 0700; as the chroot's "/" that locks out apt's _apt user
    chmod 0755 "$d"
    printf '%s\n' "$d"
}

# e2e_extract_base -- extract the cached base tarball into a fresh root; sets E2E_ROOT.
e2e_extract_base() {
    [[ -f "$E2E_BASE_TARBALL" ]] || e2e_die "no base tarball at $E2E_BASE_TARBALL (run make-base.sh)"
    E2E_ROOT="$(e2e_new_root_dir)"
    zstd -q -d -c "$E2E_BASE_TARBALL" | tar -C "$E2E_ROOT" --numeric-owner -xpf -
    export E2E_ROOT
}

# in_root CMD... -- run a command inside the root with a sane, minimal environment.
in_root() {
    [[ -n "$E2E_ROOT" ]] || e2e_die "in_root: E2E_ROOT not set"
    chroot "$E2E_ROOT" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=/root TERM=dumb \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
        "$@"
}

# e2e_apt_offline ARGS... -- apt-get inside the root, never touching the network.
e2e_apt_offline() {
    in_root apt-get -y -q --no-download -o Dpkg::Use-Pty=0 "$@"
}

# e2e_load_versions -- source the versions file written by make-base.sh.
e2e_load_versions() {
    [[ -f "$E2E_ROOT$E2E_VERSIONS_FILE" ]] || e2e_die "missing $E2E_VERSIONS_FILE in root"
    # shellcheck disable=SC1090
    source "$E2E_ROOT$E2E_VERSIONS_FILE"
}

# e2e_ensure_base -- build the base tarball if missing (skip-propagating).
e2e_ensure_base() {
    if [[ ! -f "$E2E_BASE_TARBALL" ]]; then
        local out
        out="$("$E2E_DIR/make-base.sh" | tee /dev/stderr)"
        if grep -q '^SKIPPED:' <<< "$out" || [[ ! -f "$E2E_BASE_TARBALL" ]]; then
            e2e_skip "base root unavailable (see make-base.sh output above)"
        fi
    fi
}

# --- base building (make-base*.sh) ---------------------------------------------

# e2e_base_begin [--force] -- common start of a base builder: exit 0 if the
# cached tarball is there (unless --force), find and check the mirror, install
# host tools, make an empty E2E_ROOT and remove it on every exit.
e2e_base_begin() {
    e2e_require_root
    if [[ -f "$E2E_BASE_TARBALL" && "${1:-}" != "--force" ]]; then
        e2e_log "reusing cached base $E2E_BASE_TARBALL"
        exit 0
    fi
    e2e_detect_mirror
    e2e_check_mirror
    e2e_log "suite: $E2E_SUITE  mirror: $E2E_MIRROR  security: ${E2E_SECURITY_MIRROR:-<none>}  updates: $E2E_HAVE_UPDATES"
    local tool
    for tool in debootstrap zstd; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            e2e_log "installing host tool $tool"
            e2e_retry 3 apt-get update -q
            e2e_retry 3 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool"
        fi
    done
    E2E_ROOT="$(e2e_new_root_dir)"
    export E2E_ROOT
    trap _e2e_base_cleanup EXIT
    trap 'exit 130' INT TERM
}

_e2e_base_cleanup() {
    local rc=$?
    e2e_remove_root "$E2E_ROOT"
    exit "$rc"
}

_e2e_debootstrap() {
    # a failed debootstrap leaves junk behind: start from an empty dir each time
    e2e_umounts "$E2E_ROOT"
    find "$E2E_ROOT" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
    # A debootstrap too old to know the suite takes sid's script (4th argument).
    local script=()
    [[ -e "/usr/share/debootstrap/scripts/$E2E_SUITE" ]] || script=(sid)
    debootstrap --variant=minbase "$E2E_SUITE" "$E2E_ROOT" "$E2E_MIRROR" "${script[@]}"
}

# e2e_base_bootstrap PACKAGES... -- debootstrap --variant=minbase into the empty
# E2E_ROOT, configure apt (sources from the detected mirror, no recommends, keep
# downloaded .debs), forbid services, mount, upgrade, install PACKAGES, and
# empty the archive cache (builders pre-download the scenarios' .debs next).
e2e_base_bootstrap() {
    e2e_log "debootstrap $E2E_SUITE into $E2E_ROOT"
    e2e_retry 3 _e2e_debootstrap
    {
        echo "deb ${E2E_MIRROR} ${E2E_SUITE} main"
        [[ "$E2E_HAVE_UPDATES" == 1 ]] && echo "deb ${E2E_MIRROR} ${E2E_SUITE}-updates main"
        [[ -n "$E2E_SECURITY_MIRROR" ]] && echo "deb ${E2E_SECURITY_MIRROR} ${E2E_SUITE}-security main"
        true
    } > "$E2E_ROOT/etc/apt/sources.list"
    # trixie's debootstrap writes deb822 sources too: keep one definition
    rm -f "$E2E_ROOT/etc/apt/sources.list.d/debian.sources"
    cat > "$E2E_ROOT/etc/apt/apt.conf.d/90dkms-hook-e2e" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
Binary::apt::APT::Keep-Downloaded-Packages "true";
APT::Keep-Downloaded-Packages "true";
Dpkg::Use-Pty "false";
EOF
    # never start services inside the throw-away root
    printf '#!/bin/sh\nexit 101\n' > "$E2E_ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$E2E_ROOT/usr/sbin/policy-rc.d"
    e2e_mounts "$E2E_ROOT"
    e2e_log "apt-get update + $*"
    e2e_retry 3 in_root apt-get -q update
    e2e_retry 3 in_root apt-get -y -q dist-upgrade
    e2e_retry 3 in_root apt-get -y -q install --no-install-recommends "$@"
    in_root apt-get clean
}

# e2e_base_pack -- unmount and pack E2E_ROOT into E2E_BASE_TARBALL (atomically).
e2e_base_pack() {
    local tmp_tar
    e2e_umounts "$E2E_ROOT"
    rm -rf "$E2E_ROOT"/tmp/* "$E2E_ROOT"/var/tmp/* || true
    mkdir -p "$E2E_CACHE_DIR"
    tmp_tar="$(mktemp "$E2E_CACHE_DIR/.base-${E2E_SUITE}.XXXXXX")"
    e2e_log "packing $E2E_BASE_TARBALL"
    tar -C "$E2E_ROOT" --numeric-owner --one-file-system -cpf - . | zstd -q -T1 -6 -f -o "$tmp_tar"
    mv -f "$tmp_tar" "$E2E_BASE_TARBALL"
    e2e_log "base ready: $E2E_BASE_TARBALL ($(du -h "$E2E_BASE_TARBALL" | cut -f1))"
}

# e2e_madison PKG -- the versions of PKG that the root's apt offers, one a line.
e2e_madison() {
    in_root apt-cache madison "$1" | awk -F'|' '{ gsub(/[ \t]/, "", $2); print $2 }'
}

# e2e_sort_desc -- versions on stdin, printed unique and newest first (dpkg order).
e2e_sort_desc() {
    local v i sorted=()
    while read -r v; do
        [[ -n "$v" ]] || continue
        i=0
        while (( i < ${#sorted[@]} )) && in_root dpkg --compare-versions "${sorted[$i]}" ge "$v"; do
            [[ "${sorted[$i]}" == "$v" ]] && continue 2
            i=$((i + 1))
        done
        sorted=("${sorted[@]:0:$i}" "$v" "${sorted[@]:$i}")
    done
    (( ${#sorted[@]} == 0 )) || printf '%s\n' "${sorted[@]}"
}

# e2e_install_old_world -- install dkms + OLD linux-kbuild-6.1/headers/-common
# (+ matching linux-compiler-gcc-12-x86) from the pre-downloaded cache.
# Needs e2e_load_versions and e2e_mounts first.
e2e_install_old_world() {
    # shellcheck disable=SC2206
    local set=(dkms linux-kbuild-6.1="$E2E_OLD_VERSION" "$E2E_OLD_COMMON=$E2E_OLD_VERSION"
               "$E2E_OLD_HEADERS=$E2E_OLD_VERSION" $E2E_OLD_COMPILER_PIN)
    e2e_log "installing old kernel headers: ${set[*]}"
    e2e_apt_offline install "${set[@]}"
}

# e2e_bench_root -- for the benchmarks: a throwaway root (removed on exit)
# from the cached base with the old kernel headers and acpi-call built for
# them. Skips (says so, exit 0) without root or without a cached base.
e2e_bench_root() {
    e2e_require_root
    [[ -f "$E2E_BASE_TARBALL" ]] || e2e_skip "no cached e2e base root (run tests/e2e/make-base.sh)"
    trap 'e2e_remove_root "${E2E_ROOT:-}"' EXIT
    e2e_extract_base
    e2e_load_versions
    e2e_mounts "$E2E_ROOT"
    e2e_install_old_world >/dev/null 2>&1
    e2e_apt_offline install acpi-call-dkms >/dev/null 2>&1
}

# e2e_dkms_wrapper -- /usr/local/sbin/dkms, first on the PATH apt and the hooks
# see: notes each call ("EPOCH ARGS") in /var/log/e2e-dkms-calls.log, or, in
# preflight's read-only sandbox, on its output (preflight keeps each pair's
# run log as /var/lib/dkms-hook/preflight/M-V-K.dkms.log), then runs dkms.
e2e_dkms_wrapper() {
    cat > "$E2E_ROOT/usr/local/sbin/dkms" <<'EOF'
#!/bin/sh
line="$(date +%s) $*"
{ echo "$line" >> /var/log/e2e-dkms-calls.log; } 2>/dev/null || echo "e2e-dkms-call: $line"
exec /usr/sbin/dkms "$@"
EOF
    chmod 0755 "$E2E_ROOT/usr/local/sbin/dkms"
}

# builds_since EPOCH MODULE KERNEL -- how many `dkms build`s of MODULE for KERNEL
# ran since EPOCH (post-invoke's and preflight's), by e2e_dkms_wrapper's notes.
builds_since() {
    { cat "$E2E_ROOT/var/log/e2e-dkms-calls.log" 2>/dev/null
      cat "$E2E_ROOT"/var/lib/dkms-hook/preflight/*.dkms.log 2>/dev/null | sed -n 's/^e2e-dkms-call: //p'
    } | awk -v t="$1" -v m="$2" -v k="$3" '
        $1 >= t && $2 == "build" {
            mm = ""; kk = ""
            for (i = 3; i < NF; i++) { if ($i == "-m") mm = $(i + 1); if ($i == "-k") kk = $(i + 1) }
            if (mm == m && kk == k) n++
        }
        END { print n + 0 }'
}

# e2e_add_failmod -- copy tests/e2e/failmod into the root as /usr/src/e2e-failmod-1.0
# and `dkms add` it (no build).
e2e_add_failmod() {
    rm -rf "$E2E_ROOT/usr/src/e2e-failmod-1.0"
    mkdir -p "$E2E_ROOT/usr/src/e2e-failmod-1.0"
    cp -a "$E2E_DIR/failmod/." "$E2E_ROOT/usr/src/e2e-failmod-1.0/"
    in_root dkms add -m e2e-failmod -v 1.0
}

# e2e_repack_bump PKG VERSION [SUFFIX [EXTRA_FILE]]
# Take PKG_VERSION's .deb from the root's apt cache, rebuild it as VERSION+SUFFIX
# (default suffix: +e2e1) and publish it in a local, trusted file: repository
# /var/local/e2e-repo inside the root (apt lists refreshed offline for it only).
# Prints the new version.
e2e_repack_bump() {
    local pkg="$1" ver="$2" suffix="${3:-+e2e1}" extra="${4:-}"
    local newver="${ver}${suffix}" repo=/var/local/e2e-repo work=/var/tmp/e2e-repack
    local deb
    deb="$(in_root sh -c 'ls /var/cache/apt/archives/"$1"_"$(printf %s "$2" | sed "s/:/%3a/")"_*.deb' \
              _ "$pkg" "$ver" | head -n 1)"
    [[ -n "$deb" ]] || e2e_die "e2e_repack_bump: no cached .deb for ${pkg}=${ver}"
    in_root rm -rf "$work"
    in_root mkdir -p "$work" "$repo"
    in_root dpkg-deb -R "$deb" "$work/pkg"
    in_root sed -i "s/^Version: .*/Version: ${newver}/" "$work/pkg/DEBIAN/control"
    # EXTRA: one more file in the package (e.g. a file a module refuses).
    if [[ -n "$extra" ]]; then
        in_root mkdir -p "$work/pkg$(dirname "$extra")"
        in_root touch "$work/pkg$extra"
    fi
    in_root dpkg-deb -b "$work/pkg" "$repo/" >&2
    # apt --no-download refuses file: debs ("Pathname to install is not
    # absolute"); pre-seed the archive cache so offline installs find it.
    in_root sh -c 'cp "$1"/"$2"_*.deb /var/cache/apt/archives/' _ "$repo" "$pkg"
    in_root rm -rf "$work"
    in_root sh -c 'cd "$1" && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null' _ "$repo"
    echo "deb [trusted=yes] file:${repo} ./" > "$E2E_ROOT/etc/apt/sources.list.d/e2e-local.list"
    in_root apt-get -q update \
        -o Dir::Etc::sourcelist=sources.list.d/e2e-local.list \
        -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >&2
    printf '%s\n' "$newver"
}

# --- scenario runners (run*.sh) --------------------------------------------------

# e2e_run_begin -- common start of a scenario runner: root, cached base (built
# if missing), the package to test in DEB (DKMS_HOOK_DEB, else built with
# tests/package.sh), counters, and removal of every root and output on exit.
e2e_run_begin() {
    e2e_require_root
    e2e_ensure_base
    DEB="${DKMS_HOOK_DEB:-}"
    if [[ -z "$DEB" ]]; then
        DEB=/var/tmp/dkms-hook-e2e.deb
        DKMS_HOOK_DEB_OUT="$DEB" bash "$E2E_DIR/../package.sh" >&2
    fi
    [[ -f "$DEB" ]] || e2e_die "no package at $DEB"
    ROOTS=()
    mkdir -p "$E2E_TMP_BASE"
    E2E_OUT_DIR="$(mktemp -d "$E2E_TMP_BASE/dkms-hook-e2e-out.XXXXXX")"
    PASSED=0 FAILED=0 FAILS=0 SCENARIO=""
    trap _e2e_run_cleanup EXIT
    trap 'exit 130' INT TERM
}

_e2e_run_cleanup() {
    local rc=$? r
    for r in "${ROOTS[@]}"; do e2e_remove_root "$r"; done
    [[ "${E2E_KEEP_ROOT:-0}" == 1 ]] || rm -rf "${E2E_OUT_DIR:?}"
    exit "$rc"
}

# e2e_run_root -- a fresh root from the cached base, mounted, versions loaded.
e2e_run_root() {
    e2e_extract_base
    ROOTS+=("$E2E_ROOT")
    e2e_load_versions
    e2e_mounts "$E2E_ROOT"
}

# install_dkms_hook -- the package under test, installed as an administrator would.
install_dkms_hook() {
    cp "$DEB" "$E2E_ROOT/root/dkms-hook.deb"
    # apt refuses local files with --no-download, and dkms, the only
    # dependency, is installed already.
    in_root apt-get -y -q -o Dpkg::Use-Pty=0 install /root/dkms-hook.deb >&2
}

scenario() { SCENARIO="$1"; FAILS=0; echo "--- scenario $SCENARIO"; }
check() {   # check DESCRIPTION CMD...
    local desc="$1"; shift
    if "$@"; then
        printf '  ok    %s\n' "$desc"
    else
        printf '  FAIL  %s\n' "$desc"
        FAILS=$((FAILS + 1))
    fi
}
verdict() {
    if (( FAILS == 0 )); then
        echo "PASS: $SCENARIO"; PASSED=$((PASSED + 1))
    else
        echo "FAIL: $SCENARIO ($FAILS checks)"; FAILED=$((FAILED + 1))
    fi
}
# e2e_summary -- the last line, "N passed, M failed"; fails if any failed.
e2e_summary() {
    echo "$PASSED passed, $FAILED failed"
    (( FAILED == 0 ))
}

ko() {  # ko MODULE_FILE KERNEL -> host path of the installed module
    find "$E2E_ROOT/lib/modules/$2" -name "$1.ko*" -print -quit 2>/dev/null
}
mtime() { stat -c %Y "$1" 2>/dev/null || echo missing; }
# vermagic_is HOSTPATH K: the module's vermagic (modinfo in the root) is for K.
vermagic_is() { in_root modinfo -F vermagic "${1#"$E2E_ROOT"}" | grep -q "^$2 "; }
# signed_agrees JSON MODULE KERNEL FILE: `status --json` (in JSON) says of
# the pair what kmod's modinfo says of its installed FILE: signed exactly
# when modinfo finds a signer, and the same signer. Prints what it saw.
signed_agrees() {
    local signer
    signer="$(in_root modinfo -F signer "${4#"$E2E_ROOT"}" 2>/dev/null || true)"
    /usr/bin/python3 - "$1" "$2" "$3" "$signer" <<'PY'
import json, sys
doc, module, kernel, signer = json.load(open(sys.argv[1])), *sys.argv[2:5]
rows = [p for p in doc["pairs"] if p["module"] == module and p["kernel"] == kernel]
row = rows[0] if rows else {}
print("    | status --json: signed=%s signer=%s key_enrolled=%s; modinfo signer=%r"
      % (row.get("signed"), row.get("signer"), row.get("key_enrolled"), signer))
ok = row.get("signed") == bool(signer) and (not signer or row.get("signer") == signer)
sys.exit(0 if ok else 1)
PY
}
sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
installed() {  # installed MODULE KERNEL: dkms status says installed
    in_root dkms status -m "$1" -k "$2" 2>/dev/null | grep -q ': installed'
}
# state_is STATUS_FILE MODULE/VERSION KERNEL STATE: `dkms-hook status` says so.
state_is() { [[ "$(awk -v p="$2" -v k="$3" '$1 == p && $2 == k { print $3 }' "$1")" == "$4" ]]; }
contains() { grep -qF -- "$2" "$1"; }
lacks() { ! grep -qF -- "$2" "$1"; }
count() { grep -cF -- "$2" "$1" || true; }     # lines of file $1 holding $2
once() { [[ "$(count "$1" "$2")" == 1 ]]; }
# The line holding $2 comes before the line holding $3 in file $1.
before() {
    local a b
    a="$(grep -nF -- "$2" "$1" | head -n 1 | cut -d: -f1)"
    b="$(grep -nF -- "$3" "$1" | head -n 1 | cut -d: -f1)"
    [[ -n "$a" && -n "$b" ]] && (( a < b ))
}
# e2e_built_ko MODULE/VERSION K: dkms's own built copy of acpi_call for K.
e2e_built_ko() {
    find "$E2E_ROOT/var/lib/dkms/$1/$2" -path '*/module/acpi_call.ko*' -print -quit 2>/dev/null
}
# e2e_check_rollback MODULE/VERSION K SHA MTIME: after dkms-hook rebuilt
# acpi-call for K, whose installed module had SHA and whose dkms build
# (e2e_built_ko) had MTIME before that rebuild, `rollback` puts exactly that
# build back (dkms's own tree and install, checked by dkms and kmod; kbuild
# builds are reproducible, so the build's time tells the two apart), holds
# the pair against sync, a second rollback brings the rebuilt one back, and
# `unhold` ends the hold.
e2e_check_rollback() {
    local m=$1 k=$2 sha0=$3 mtime0=$4 new_mtime o rc st
    new_mtime="$(mtime "$(e2e_built_ko "$m" "$k")")"
    check "$k: the build before the rebuild is kept as the previous one" \
        test -e "$E2E_ROOT/var/lib/dkms-hook/previous/$m/$k/x86_64/complete"
    o="$(out)"
    rc=0; in_root dkms-hook rollback "$m" "$k" --reason "e2e" > "$o" 2>&1 || rc=$?
    sed 's/^/    | /' "$o"
    check "dkms-hook rollback exits 0 (rc=$rc)" test "$rc" == 0
    check "$k: the installed module is the one from before the rebuild (sha256)" \
        test "$(sha "$(ko acpi_call "$k")")" == "$sha0"
    check "$k: dkms's built copy is the build from before ($mtime0)" test "$(mtime "$(e2e_built_ko "$m" "$k")")" == "$mtime0"
    check "$k: dkms status says installed" installed acpi-call "$k"
    check "$k: its vermagic is for $k" vermagic_is "$(ko acpi_call "$k")" "$k"
    check "$k: modules.dep lists it (depmod ran)" grep -q 'updates/dkms/acpi_call.ko' "$E2E_ROOT/lib/modules/$k/modules.dep"
    st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
    check "$k: status says held" state_is "$st" "$m" "$k" held
    o="$(out)"; in_root dkms-hook sync > "$o" 2>&1 || true
    check "sync leaves the held pair alone, and says so" \
        bash -c '! grep -qF "rebuilding $1 for $2" "$3" && grep -qF "left $1 for $2 alone: held" "$3"' _ "$m" "$k" "$o"
    check "$k: …the module is still the one from before" test "$(sha "$(ko acpi_call "$k")")" == "$sha0"
    rc=0; in_root dkms-hook rollback "$m" "$k" > "$o" 2>&1 || rc=$?
    check "a second rollback exits 0 (rc=$rc)" test "$rc" == 0
    check "$k: …and puts the rebuilt build back ($new_mtime)" test "$(mtime "$(e2e_built_ko "$m" "$k")")" == "$new_mtime"
    check "$k: dkms status says installed" installed acpi-call "$k"
    rc=0; in_root dkms-hook unhold "$m" "$k" > "$o" 2>&1 || rc=$?
    check "unhold exits 0 (rc=$rc)" test "$rc" == 0
    st="$(out)"; in_root dkms-hook status > "$st" 2>&1 || true
    check "$k: status no longer says held" bash -c '! grep -qE "^$1 +$2 +held" "$3"' _ "$m" "$k" "$st"
}
out() { mktemp "${E2E_OUT_DIR:-$E2E_TMP_BASE}/out.XXXXXX"; }

# e2e_check_dkms_conf_corpus -- dkms.conf as dkms reads it (a scenario's
# checks). Every *-dkms package of the root's archive (downloaded now; only
# its dkms.conf is extracted) and the committed corpus become dkms modules
# of the root, built for the first kernel with headers; dkms-hook's `status
# --json` must call a pair `excluded` exactly where dkms's own read_conf
# (tests/dkms-conf/oracle.sh, run on the root's /usr/sbin/dkms) sets
# build_exclude, for every kernel with headers, and never `undecided`. The
# same from the host with `--root` (nothing in the root executed): each
# verdict is dkms's or `undecided`. Then tests/data/dkms-conf/expected.txt
# is recorded again with the root's dkms and compared. Removes what it made.
e2e_check_dkms_conf_corpus() {
    local work=/root/dkms-conf-corpus repo="$E2E_DIR/../.."
    rm -rf "${E2E_ROOT:?}$work"
    mkdir -p "$E2E_ROOT$work/debs" "$E2E_ROOT$work/confs" "$E2E_ROOT$work/tests/data"
    cp -a "$repo/tests/dkms-conf" "$E2E_ROOT$work/tests/"
    cp -a "$repo/tests/data/dkms-conf" "$E2E_ROOT$work/tests/data/"
    local -a pkgs
    mapfile -t pkgs < <(in_root apt-cache search --names-only -- '-dkms$' | awk '{ print $1 }' | sort)
    e2e_log "dkms.conf corpus: ${#pkgs[@]} *-dkms packages in the archive"
    e2e_retry 3 in_root sh -c 'cd "$1" && shift && apt-get -q download "$@"' _ "$work/debs" "${pkgs[@]}" >&2
    local deb name conf
    for deb in "$E2E_ROOT$work"/debs/*.deb; do
        name="$(basename "$deb" .deb)"
        mkdir -p "$E2E_ROOT$work/x/$name"
        in_root sh -c 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./usr/src/*/dkms.conf"' \
            _ "${deb#"$E2E_ROOT"}" "$work/x/$name" 2>/dev/null || true
        conf="$(find "$E2E_ROOT$work/x/$name/usr/src" -name dkms.conf -print -quit 2>/dev/null || true)"
        [[ -n "$conf" ]] && mkdir -p "$E2E_ROOT$work/confs/$name" && cp "$conf" "$E2E_ROOT$work/confs/$name/"
    done
    cp -a "$E2E_ROOT$work"/tests/data/dkms-conf/confs/. "$E2E_ROOT$work/confs/"
    local -a kernels confs
    # In the root: Debian 12's build links are absolute.
    mapfile -t kernels < <(in_root sh -c 'for k in /lib/modules/*; do [ -e "$k/build/.config" ] && basename "$k"; done; true')
    mapfile -t confs < <(cd "$E2E_ROOT$work/confs" && ls)
    check "dkms.conf corpus: ${#confs[@]} files (archive and committed)" test "${#confs[@]}" -gt 20
    check "dkms.conf corpus: kernels with headers: ${kernels[*]}" test "${#kernels[@]}" -gt 0
    # Each file becomes module corpus-N version 1, installed for a kernel
    # that is gone (so every real kernel is judged by its dkms.conf alone:
    # excluded, missing, or under --root undecided).
    local i=0 m gone=0.0.0-corpus-gone
    for name in "${confs[@]}"; do
        i=$((i + 1)); m="corpus-$i"
        mkdir -p "$E2E_ROOT/usr/src/$m-1" "$E2E_ROOT/var/lib/dkms/$m/1/$gone/x86_64/module"
        cp "$E2E_ROOT$work/confs/$name/dkms.conf" "$E2E_ROOT/usr/src/$m-1/dkms.conf"
        ln -sfn "/usr/src/$m-1" "$E2E_ROOT/var/lib/dkms/$m/1/source"
        : > "$E2E_ROOT/var/lib/dkms/$m/1/$gone/x86_64/module/$m.ko"
        ln -sfn "1/$gone/x86_64" "$E2E_ROOT/var/lib/dkms/$m/kernel-$gone-x86_64"
    done
    local oracle_out inside outside k want got_in got_out mismatches=0 undecided=0 excluded=0
    oracle_out="$(out)" inside="$(out)" outside="$(out)"
    i=0
    for name in "${confs[@]}"; do
        i=$((i + 1))
        for k in "${kernels[@]}"; do
            printf '%s %s %s %s\n' "corpus-$i" "$k" "$name" \
                "$(in_root bash "$work/tests/dkms-conf/oracle.sh" /usr/sbin/dkms "corpus-$i" 1 "$k" x86_64 "/usr/src/corpus-$i-1/dkms.conf")"
        done
    done > "$oracle_out"
    in_root dkms-hook status --json > "$inside" 2>/dev/null || true
    "$E2E_ROOT/usr/sbin/dkms-hook" --root "$E2E_ROOT" status --json > "$outside" 2>/dev/null || true
    local verdicts
    verdicts="$(out)"
    /usr/bin/python3 - "$inside" "$outside" <<'PY' > "$verdicts" || true
import json, sys
for label, path in (("in", sys.argv[1]), ("out", sys.argv[2])):
    for p in json.load(open(path))["pairs"]:
        if p["module"].startswith("corpus-"):
            print(label, p["module"], p["kernel"], p["state"])
PY
    [[ -s "$verdicts" ]] || echo "    | no verdicts: status --json printed nothing usable"
    while read -r m k name want; do
        got_in="$(awk -v m="$m" -v k="$k" '$1 == "in" && $2 == m && $3 == k { print $4 }' "$verdicts")"
        got_out="$(awk -v m="$m" -v k="$k" '$1 == "out" && $2 == m && $3 == k { print $4 }' "$verdicts")"
        [[ "$want" == excluded ]] && excluded=$((excluded + 1))
        [[ "$got_out" == undecided ]] && undecided=$((undecided + 1))
        local w=0 i_ex=0 o_ex=0
        [[ "$want" == excluded ]] && w=1
        [[ "$got_in" == excluded ]] && i_ex=1
        [[ "$got_out" == excluded ]] && o_ex=1
        if (( w != i_ex )) || [[ -z "$got_in" || "$got_in" == undecided ]] \
            || { [[ "$got_out" != undecided ]] && (( w != o_ex )); }; then
            printf '    | MISMATCH %s %s: dkms %s, dkms-hook %s, with --root %s\n' "$name" "$k" "$want" "$got_in" "$got_out"
            mismatches=$((mismatches + 1))
        fi
    done < "$oracle_out"
    echo "    | $(wc -l < "$oracle_out") pairs, $excluded excluded by dkms; with --root $undecided undecided"
    check "every pair: dkms-hook excludes exactly what dkms's read_conf excludes, in the root and with --root" \
        test "$mismatches" == 0
    # The committed verdicts, recorded again with this dkms.
    local dv recorded
    dv="$(in_root sh -c "sed -n 's/^ *echo \\\$\\{0,1\\}\"dkms-\\([0-9.]*\\)\"\$/\\1/p' /usr/sbin/dkms | head -n 1")"
    recorded="$(out)"
    in_root bash "$work/tests/dkms-conf/record.sh" /usr/sbin/dkms > "$recorded"
    if grep -q " $dv " "$repo/tests/data/dkms-conf/expected.txt"; then
        check "tests/data/dkms-conf/expected.txt holds dkms $dv's own verdicts" \
            cmp -s <(grep " $dv " "$repo/tests/data/dkms-conf/expected.txt") <(grep " $dv " "$recorded")
    else
        echo "  note  expected.txt has no lines for dkms $dv: record them with tests/dkms-conf/record.sh"
    fi
    i=0
    for name in "${confs[@]}"; do
        i=$((i + 1))
        rm -rf "$E2E_ROOT/usr/src/corpus-$i-1" "$E2E_ROOT/var/lib/dkms/corpus-$i"
    done
    rm -rf "${E2E_ROOT:?}$work"
}

# --- unattended-upgrades and dkms-hook's log (run*.sh) ---------------------------

# uu_repack PKG VERSION SUFFIX [FILE]: e2e_repack_bump for unattended-upgrades,
# whose one allowed origin is the local repository's own (its Release names
# it). The .deb of VERSION comes from the repository when unattended-upgrades
# has cleaned the archive cache. Prints the new version.
uu_repack() {
    local v
    in_root sh -c 'cp /var/local/e2e-repo/"$1"_"$2"_*.deb /var/cache/apt/archives/ 2>/dev/null || true' _ "$1" "$2"
    v="$(e2e_repack_bump "$@")"
    in_root sh -c 'cd /var/local/e2e-repo && {
        printf "Origin: dkms-hook-e2e\nLabel: dkms-hook-e2e\nSuite: e2e\nCodename: e2e\nDate: %s\nSHA256:\n" "$(date -Ru)"
        printf " %s %s Packages\n" "$(sha256sum Packages | cut -d" " -f1)" "$(stat -c %s Packages)"
    } > Release'
    in_root apt-get -q update -o Dir::Etc::sourcelist=sources.list.d/e2e-local.list \
        -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >&2
    printf '%s\n' "$v"
}

# uu_setup: unattended-upgrades from the mirror, allowed the local
# repository's origin only (uu_repack).
uu_setup() {
    e2e_retry 3 in_root apt-get -y -q -o Dpkg::Use-Pty=0 install --no-install-recommends unattended-upgrades >&2 || return 1
    printf '%s\n' '#clear Unattended-Upgrade::Origins-Pattern;' \
        'Unattended-Upgrade::Origins-Pattern { "origin=dkms-hook-e2e"; };' \
        > "$E2E_ROOT/etc/apt/apt.conf.d/51e2e-unattended-upgrades"
}

# uu_wait: under unattended-upgrades the rebuild waits for its run to end,
# in a waiter process (dkms-hook after-unattended-upgrades PID START): wait
# until none runs.
uu_wait() {
    for _ in $(seq 1 900); do
        grep -qsa "after-unattended-upgrade[s]" /proc/[0-9]*/cmdline || return 0
        sleep 1
    done
    e2e_log "a waiter still runs after 900 s"
    return 1
}

# log_lines / log_since LINES: /var/log/dkms-hook.log's length, and a file
# with what follows its first LINES lines.
log_lines() { wc -l < "$E2E_ROOT/var/log/dkms-hook.log" 2>/dev/null || echo 0; }
log_since() {
    local f
    f="$(out)"
    tail -n "+$(($1 + 1))" "$E2E_ROOT/var/log/dkms-hook.log" > "$f" 2>/dev/null || true
    printf '%s\n' "$f"
}

# e2e_check_json_quiet -- a simulated reinstall of libelf, which concerns
# no kernel: apt calls the JSON hook several times, and only the first
# call starts dkms-hook; apt takes the others' end silently. A wrapper in
# the binary's place counts its starts; a second hook line of the run's
# own (`echo`, answering nothing) counts apt's calls.
e2e_check_json_quiet() {
    local pkg o rc=0 n calls="$E2E_ROOT/run/e2e-dkms-hook-calls" apt_calls="$E2E_ROOT/run/e2e-json-calls"
    local bin="$E2E_ROOT/usr/sbin/dkms-hook"
    pkg="$(in_root dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 'libelf1*' 2>/dev/null \
        | awk '$1 == "ii" { print $2; exit }')"
    check "a libelf1 package is installed ($pkg)" test -n "$pkg"
    mv "$bin" "$bin.e2e-real"
    # shellcheck disable=SC2016 # the wrapper's own "$*" and "$@"
    printf '#!/bin/sh\necho "$*" >> /run/e2e-dkms-hook-calls\nexec /usr/sbin/dkms-hook.e2e-real "$@"\n' > "$bin"
    chmod 0755 "$bin"
    rm -f "$calls" "$apt_calls" "$E2E_ROOT"/run/dkms-hook/json-quiet-*
    o="$(out)"
    in_root apt-get -s -o 'AptCli::Hooks::Install::=echo call >> /run/e2e-json-calls' \
        install --reinstall "$pkg" > "$o" 2>&1 || rc=$?
    mv "$bin.e2e-real" "$bin"
    grep -E '^(E|W):|dkms-hook' "$o" | sed 's/^/    | /' || true
    n="$(grep -c apt-json-hook "$calls" 2>/dev/null)"
    check "apt-get -s install --reinstall $pkg exits 0 (rc=$rc)" test "$rc" == 0
    check "apt calls the JSON hooks 4 times ($(wc -l < "$apt_calls"))" test "$(wc -l < "$apt_calls")" == 4
    check "dkms-hook is started for the first call only ($n)" test "$n" == 1
    check "apt says nothing of a hook (no E: or W: line naming one)" \
        bash -c '! grep -E "^(E|W):" "$1" | grep -qi hook' _ "$o"
    check "one quiet record, the apt run's" \
        test "$(find "$E2E_ROOT/run/dkms-hook" -name 'json-quiet-*' | wc -l)" == 1
}

# e2e_check_uu_two_steps HEADERS KBUILD M/V KERNEL SUFFIX: one night of the
# real unattended-upgrades with a repacked HEADERS (feeding KERNEL only) and
# a repacked KBUILD, which it installs in two steps (the headers do not need
# the new kbuild): each step queues the rebuild for the end of the run, the
# second step's test build of M/V for KERNEL is the first one's, and after
# the run M/V is rebuilt once for KERNEL, for both changes: two builds in
# all. Sets UU_T (the night's start, for builds_since) and UU_LOG.
e2e_check_uu_two_steps() {
    local headers="$1" kbuild="$2" mv="$3" k="$4" suffix="$5"
    local hdr_now kb_now hdr_v kb_v l0 o rc log r n
    local waits="rebuild(s) wait until unattended-upgrades ends"
    hdr_now="$(in_root dpkg-query -W -f '${Version}' "$headers")"
    kb_now="$(in_root dpkg-query -W -f '${Version}' "$kbuild")"
    hdr_v="$(uu_repack "$headers" "$hdr_now" "$suffix")"
    kb_v="$(uu_repack "$kbuild" "$kb_now" "$suffix")"
    UU_LOG="$E2E_ROOT/var/log/unattended-upgrades/unattended-upgrades-dpkg.log"
    rm -f "$UU_LOG"
    l0="$(log_lines)"
    sleep 1
    UU_T="$(date +%s)"
    o="$(out)"
    rc=0; in_root unattended-upgrade -v > "$o" 2>&1 || rc=$?
    grep -F 'dkms-hook' "$UU_LOG" | sed 's/^/    | /' || true
    check "unattended-upgrade exits 0 (rc=$rc)" test "$rc" == 0
    check "$headers upgraded to $hdr_v" test "$(in_root dpkg-query -W -f '${Version}' "$headers")" == "$hdr_v"
    check "$kbuild upgraded to $kb_v" test "$(in_root dpkg-query -W -f '${Version}' "$kbuild")" == "$kb_v"
    check "in two steps, each queueing for the end of the run ($(count "$UU_LOG" "$waits"))" \
        test "$(count "$UU_LOG" "$waits")" == 2
    check "$k: the second step's test build of $mv is the first one's" \
        once "$UU_LOG" "dkms-hook: preflight: $mv for $k was test-built earlier in this unattended-upgrades run"
    check "the rebuild after the run is done" uu_wait
    log="$(log_since "$l0")"
    sed 's/^/    | log: /' "$log"
    r="$(out)"; grep -F "rebuilt $mv for $k (" "$log" > "$r" || true
    check "$k: one rebuild of $mv ($(wc -l < "$r"))" test "$(wc -l < "$r")" == 1
    check "…for both changes" bash -c 'grep -qF "$2" "$1" && grep -qF "$3" "$1"' _ "$r" \
        "$headers $hdr_now → $hdr_v" "$kbuild $kb_now → $kb_v"
    n="$(builds_since "$UU_T" "${mv%%/*}" "$k")"
    check "$k: $mv built twice in all, one test build and one rebuild ($n)" test "$n" == 2
    check "no record of the run is left" bash -c '! ls "$1"/run/dkms-hook/uu-* >/dev/null 2>&1' _ "$E2E_ROOT"
}
