#!/bin/sh
# render-acl.sh <template> <out>: the ACL file with each @NAME@ replaced by
# $REDIS_<NAME>_PASSWORD (refuses to write one without every password).
set -eu
in=$1 out=$2
script=""
for name in ADMIN PROJECTOR QUERY COMMAND AUTH; do
  eval "pw=\${REDIS_${name}_PASSWORD:-}"
  # shellcheck disable=SC2154
  if [ -z "$pw" ]; then echo "render-acl.sh: REDIS_${name}_PASSWORD is not set" >&2; exit 1; fi
  case $pw in *[!A-Za-z0-9._-]*) echo "render-acl.sh: REDIS_${name}_PASSWORD may hold only A-Z a-z 0-9 . _ -" >&2; exit 1 ;; esac
  script="$script s/@${name}@/${pw}/g;"
done
umask 077
grep -v '^#' "$in" | sed "$script" >"$out"
