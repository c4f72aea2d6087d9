#!/bin/sh
# render-acl.sh <template> <out>: the ACL file with each @NAME@ replaced by
# $REDIS_<NAME>_PASSWORD (refuses to write one without every password). The
# substitutions reach sed as a script file (owner-only, removed after), never
# as an argument: any local user may read a process's argv.
set -eu
in=$1 out=$2
umask 077
script="$out.sed"
: >"$script"
trap 'rm -f "$script"' EXIT
for name in ADMIN PROJECTOR QUERY COMMAND AUTH; do
  eval "pw=\${REDIS_${name}_PASSWORD:-}"
  # shellcheck disable=SC2154
  if [ -z "$pw" ]; then echo "render-acl.sh: REDIS_${name}_PASSWORD is not set" >&2; exit 1; fi
  case $pw in *[!A-Za-z0-9._-]*) echo "render-acl.sh: REDIS_${name}_PASSWORD may hold only A-Z a-z 0-9 . _ -" >&2; exit 1 ;; esac
  printf 's/@%s@/%s/g\n' "$name" "$pw" >>"$script"
done
grep -v '^#' "$in" | sed -f "$script" >"$out"
