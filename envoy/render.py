#!/usr/bin/env python3
"""Renders envoy/envoy.yaml (a template) for the local stack: every ${NAME}
placeholder from the environment, else its default below. An unknown
placeholder is an error, so the template and this list cannot drift apart.

    python3 envoy/render.py OUT.yaml     (paths in the output are absolute)
"""
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

DEFAULTS = {
    "EDGE_ADDRESS": "127.0.0.1",
    "EDGE_PORT": "8080",
    # The admin interface: a unix socket, owner-only (never a TCP port).
    "ENVOY_ADMIN_SOCKET": str(ROOT / ".state/run/envoy-admin.sock"),
    "AUTH_HOST": "127.0.0.1",
    "AUTH_GRPC_PORT": "50051",
    "AUTH_HTTP_PORT": "9091",
    "COMMAND_HOST": "127.0.0.1",
    "COMMAND_GRPC_PORT": "50052",
    "QUERY_HOST": "127.0.0.1",
    "QUERY_GRPC_PORT": "50053",
    "NOTIFY_HOST": "127.0.0.1",
    "NOTIFY_GRPC_PORT": "50054",
    "DESCRIPTOR": str(ROOT / "envoy/bank.pb"),
    "OPENAPI": str(ROOT / "envoy/openapi.json"),
    # The mesh CA and Envoy's client certificate (deploy/tls/make-certs.sh).
    "TLS_DIR": str(ROOT / ".state/tls"),
}


def render(template: str, values: dict) -> str:
    def fill(match):
        name = match.group(1)
        if name not in values:
            raise SystemExit(f"envoy/render.py: unknown placeholder ${{{name}}} in the template")
        return values[name]

    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)\}", fill, template)


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: envoy/render.py OUT.yaml")
    values = {name: os.environ.get(name, default) for name, default in DEFAULTS.items()}
    out = render((ROOT / "envoy/envoy.yaml").read_text(), values)
    pathlib.Path(sys.argv[1]).write_text(out)


if __name__ == "__main__":
    main()
