#!/usr/bin/env python3
"""Checks envoy/envoy.yaml (rendered with its defaults) against proto/: every
JWT exemption and every route names a gRPC service or method that exists (or
is the OpenAPI document or the REST prefix), and every route's cluster is
defined."""
import os
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root / "envoy"))
import render  # noqa: E402  (envoy/render.py)

values = {name: os.environ.get(name, default) for name, default in render.DEFAULTS.items()}
config = yaml.safe_load(render.render((root / "envoy/envoy.yaml").read_text(), values))

methods = set()
for proto in (root / "proto/bank/v1").glob("*.proto"):
    text = proto.read_text()
    for service, body in re.findall(r"service\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
        for rpc in re.findall(r"rpc\s+(\w+)\s*\(", body):
            methods.add(f"/bank.v1.{service}/{rpc}")
services = {m.rsplit("/", 1)[0] + "/" for m in methods}
infrastructure = ("/grpc.health.v1.Health/", "/grpc.reflection.")
edge_own = ("/openapi.json", "/v1/")

def known(prefix):
    return (prefix in methods or prefix in services or prefix.startswith(infrastructure) or prefix == "/"
            or prefix in edge_own)

errors = []
clusters = {c["name"] for c in config["static_resources"]["clusters"]}
hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
for vhost in hcm["route_config"]["virtual_hosts"]:
    for route in vhost["routes"]:
        prefix = route["match"].get("prefix") or route["match"]["path"]
        if not known(prefix):
            errors.append(f"route {prefix} names no RPC or service in proto/")
        if "direct_response" in route:
            continue
        cluster = route["route"]["cluster"]
        if cluster not in clusters:
            errors.append(f"route {prefix} uses undefined cluster {cluster}")
for f in hcm["http_filters"]:
    if f["name"] == "envoy.filters.http.jwt_authn":
        tc = f["typed_config"]
        for rule in tc["rules"]:
            prefix = rule["match"].get("prefix") or rule["match"]["path"]
            if "requires" not in rule and not known(prefix):
                errors.append(f"JWT exemption {prefix} names no RPC in proto/")
        for p in tc["providers"].values():
            if p["remote_jwks"]["http_uri"]["cluster"] not in clusters:
                errors.append("JWKS cluster undefined")
    if f["name"] == "envoy.filters.http.grpc_json_transcoder":
        for s in f["typed_config"]["services"]:
            if f"/{s}/" not in services:
                errors.append(f"transcoder service {s} not in proto/")

# The RPCs reachable without a token are the same three times: the edge's JWT
# exemptions, auth-service's PUBLIC_METHODS, and the OpenAPI document's.
sys.path.insert(0, str(root / "scripts"))
import openapi  # noqa: E402

exempt = set()
for f in hcm["http_filters"]:
    if f["name"] == "envoy.filters.http.jwt_authn":
        for r in f["typed_config"]["rules"]:
            match = r["match"].get("prefix") or r["match"].get("path")
            if "requires" in r:
                continue
            if match in methods:
                exempt.add(match)
            elif not match.startswith(infrastructure) and match != "/openapi.json":
                # A service-wide prefix would exempt every RPC under it.
                errors.append(f"JWT exemption {match} is not one RPC")
rust = set(re.findall(r'"(/bank\.v1\.[A-Za-z]+/[A-Za-z]+)"',
                      (root / "auth-service/src/lib.rs").read_text().split("PUBLIC_METHODS", 1)[1].split("];", 1)[0]))
documented = {"/" + m for m in openapi.PUBLIC_METHODS}
if not exempt == rust == documented:
    errors.append(f"public RPCs differ: envoy {sorted(exempt)}, auth-service {sorted(rust)}, openapi {sorted(documented)}")

if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"envoy.yaml consistent with proto/ ({len(methods)} RPCs, {len(clusters)} clusters)")
