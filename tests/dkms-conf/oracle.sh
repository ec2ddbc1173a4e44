#!/bin/bash
# dkms's own answer: does `read_conf` of the dkms script DKMS set
# build_exclude for module M version V on kernel K (ARCH)? Prints
# `excluded` or `builds`. The function definitions are taken from the dkms
# script itself (nothing of its main program runs), then its read_conf is
# called as `dkms build` calls it. The dkms.conf is CONF (dkms reads
# $dkms_tree/M/V/source/dkms.conf); with INSTALL_TREE, the kernel's tree
# is INSTALL_TREE/K/build instead of /lib/modules/K/build.
#
#   oracle.sh DKMS M V K ARCH CONF [INSTALL_TREE]
# The globals below are dkms's own, read by the functions evaluated here.
# shellcheck disable=SC2034
dkms_script=$1 module=$2 module_version=$3 kver=$4 karch=$5 conf_file=$6
dkms_tree=/var/lib/dkms source_tree=/usr/src install_tree=/lib/modules current_os=Linux
tmp_location=${TMPDIR:-/tmp}
if [[ ${7:-} ]]; then
    # As `dkms --kernelsourcedir`: the same checks on a tree elsewhere.
    ksourcedir_fromcli=1 kernel_source_dir=$7/$kver/build
fi
# Every top-level function, and the variable list read_conf clears and exports.
functions="$(awk '
    /^[A-Za-z_][A-Za-z0-9_]*[ ]*\(\)/ { f = 1 }
    f { print }
    f && /^}/ { f = 0 }
' "$dkms_script")"
variables="$(sed -n '/^readonly dkms_conf_variables="/,/"$/p' "$dkms_script" | sed 's/^readonly //')"
shopt -s extglob
eval "$variables"
eval "$functions"
# Quiet stand-ins for what read_conf may print or end with.
die() { echo "die $*" >&2; exit 3; }
deprecated() { :; }
conf=$conf_file
read_conf "$kver" "$karch" "$conf_file" >/dev/null 2>&1
if [[ $build_exclude ]]; then echo excluded; else echo builds; fi
