#!/bin/sh
# Dev certificates for TLS inside the mesh, made with openssl:
#   deploy/tls/make-certs.sh DIR [NAME...]
# A private CA (DIR/ca.pem; its key DIR/ca.key never leaves DIR) and, for each
# NAME (default: the four services, envoy and operator), DIR/NAME.pem and
# DIR/NAME.key: an ECDSA P-256 certificate for the names NAME and localhost
# and the address 127.0.0.1, usable as server and as client (mutual TLS).
# Existing files are kept, so a running stack keeps its certificates.
# Production takes certificates from its own CA instead (SECURITY.md).
set -eu
dir=$1; shift
[ $# -gt 0 ] || set -- auth-service command-service query-service projector notification-service envoy operator
mkdir -p "$dir"
umask 077
if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 825 -subj "/CN=bankmesh dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.pem" 2>/dev/null
fi
for name in "$@"; do
  [ -s "$dir/$name.pem" ] && [ -s "$dir/$name.key" ] && continue
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$name.key" 2>/dev/null
  ext="$dir/$name.ext"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1" >"$ext"
  openssl req -new -key "$dir/$name.key" -subj "/CN=$name" 2>/dev/null |
    openssl x509 -req -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -sha256 -days 825 \
      -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$ext"
done
# Certificates are public; keys stay readable by their owner only.
chmod 644 "$dir"/*.pem
