#!/usr/bin/env python3
"""Checks a running edge (Envoy transcoding REST to gRPC) against the OpenAPI
document: every operation answers, with a documented status, as JSON, and
errors are google.rpc.Status objects.

    python3 scripts/check_openapi_edge.py --doc envoy/openapi.json --base http://127.0.0.1:8080 \\
        --token ADMIN_JWT --param account_id=UUID --param transaction_id=UUID --param user_id=UUID \\
        [--skip OPERATION_ID ...] [--expect OPERATION_ID=STATUS ...]

Each operation is called once with the token: GET with no query, others with
the body {} (the services refuse empty commands with INVALID_ARGUMENT, so
nothing changes). Streaming operations (their 200 is an array) and --skip ones
get 3 seconds and only their status line is awaited: a stream that stays open
is fine. Also checked: a non-public GET without a token answers 401, and
<base>/openapi.json serves the document. Standard library only.
"""
import argparse
import json
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CALL_TIMEOUT = 30  # above the edge's own 30 s cap on unary calls
SHORT_TIMEOUT = 3  # streaming and --skip operations
STARTUP_WAIT = 10  # for /openapi.json to answer at all

# A local check: never go through an http_proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Reply:
    def __init__(self, status, content_type, body):
        self.status = status
        self.content_type = content_type
        self.body = body  # bytes, or None when deliberately not read


class NoAnswer(Exception):
    """No HTTP status came back (refused, reset, timed out)."""


def is_timeout(error):
    return isinstance(error, (TimeoutError, socket.timeout)) or (
        isinstance(error, urllib.error.URLError) and isinstance(error.reason, (TimeoutError, socket.timeout)))


def http(method, url, token=None, body=None, timeout=CALL_TIMEOUT, read_success_body=True):
    headers = {"accept": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        response = OPENER.open(request, timeout=timeout)
        read = read_success_body
    except urllib.error.HTTPError as error:
        response, read = error, True  # an error answer is complete: always read it
    except (urllib.error.URLError, OSError) as error:
        if is_timeout(error):
            raise NoAnswer(f"no response status within {timeout} s") from None
        raise NoAnswer(str(getattr(error, "reason", error))) from None
    try:
        content_type = response.headers.get("content-type", "")
        try:
            payload = response.read() if read else None
        except (TimeoutError, socket.timeout):
            raise NoAnswer(f"status {response.code} but the body did not end within {timeout} s") from None
        return Reply(response.code, content_type, payload)
    finally:
        response.close()


def snippet(data, limit=200):
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    text = " ".join(text.split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def is_rpc_status(value):
    return (isinstance(value, dict)
            and isinstance(value.get("code"), int) and not isinstance(value.get("code"), bool)
            and isinstance(value.get("message"), str))


def problems_with(reply, op, expected):
    """What is wrong with an operation's reply, as readable reasons (empty: fine)."""
    problems = []
    documented = set(op.get("responses", {}))
    if str(reply.status) not in documented and "default" not in documented:
        problems.append(f"status {reply.status} is not documented ({', '.join(sorted(documented))})")
    if expected is not None and reply.status != expected:
        problems.append(f"expected status {expected}")
    media_type = reply.content_type.split(";")[0].strip().lower()
    if media_type != "application/json":
        problems.append(f"content-type {reply.content_type!r}, not application/json")
    if reply.body is not None:
        try:
            parsed = json.loads(reply.body)
        except ValueError:
            problems.append(f"body is not JSON: {snippet(reply.body)}")
        else:
            if not 200 <= reply.status < 300 and not is_rpc_status(parsed):
                problems.append(f"error body is not a google.rpc.Status (integer code, string message): "
                                f"{snippet(reply.body)}")
    return problems


def is_streaming(op):
    """The edge streams a server-streaming RPC as one JSON array: its 200 is an array."""
    ok = op.get("responses", {}).get("200", {})
    schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("type") == "array"


def fill_path(template, params):
    def value(match):
        name = match.group(1)
        if name not in params:
            raise KeyError(f"no --param for path parameter {name}")
        return urllib.parse.quote(params[name], safe="")
    return re.sub(r"\{([^}]+)\}", value, template)


def key_values(pairs, flag):
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"{flag} wants NAME=VALUE, got {pair!r}")
        result[key] = value
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc", required=True, help="the OpenAPI document (envoy/openapi.json)")
    parser.add_argument("--base", required=True, help="the edge, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="an access token allowed to call everything (admin)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a path parameter value (repeatable)")
    parser.add_argument("--skip", action="append", default=[], metavar="OPERATION_ID",
                        help="only await this operation's status line, within 3 s (repeatable)")
    parser.add_argument("--expect", action="append", default=[], metavar="OPERATION_ID=STATUS",
                        help="this operation must answer exactly STATUS (repeatable)")
    args = parser.parse_args(argv)

    with open(args.doc, encoding="utf-8") as f:
        doc = json.load(f)
    base = args.base.rstrip("/")
    params = key_values(args.param, "--param")
    expect = {}
    for op_id, status in key_values(args.expect, "--expect").items():
        if not status.isdigit():
            sys.exit(f"--expect {op_id}: STATUS must be a number, got {status!r}")
        expect[op_id] = int(status)

    operations = [(path, method.upper(), op)
                  for path, methods in doc.get("paths", {}).items()
                  for method, op in methods.items()]
    failures = 0
    checks = 0

    def report(ok, what, detail):
        nonlocal failures, checks
        checks += 1
        if ok:
            print(f"ok   {what} -> {detail}")
        else:
            failures += 1
            print(f"FAIL {what}: {detail}")

    # A typo in --skip/--expect would silently check less: refuse it.
    known = {op.get("operationId") for _, _, op in operations}
    for op_id in sorted((set(args.skip) | set(expect)) - known):
        report(False, f"--skip/--expect {op_id}", "no operation has this operationId")

    # 1. The edge serves the document itself. The only wait: the edge may still be starting.
    deadline = time.monotonic() + STARTUP_WAIT
    served = None
    while served is None:
        try:
            served = http("GET", f"{base}/openapi.json", timeout=2)
        except NoAnswer as error:
            if time.monotonic() >= deadline:
                report(False, "GET /openapi.json", f"no answer within {STARTUP_WAIT} s ({error})")
                print(f"FAILED: the edge at {base} does not answer")
                return 1
            time.sleep(0.2)
    if served.status != 200:
        report(False, "GET /openapi.json", f"status {served.status}: {snippet(served.body or b'')}")
    else:
        try:
            same = json.loads(served.body) == doc
        except ValueError:
            report(False, "GET /openapi.json", f"body is not JSON: {snippet(served.body)}")
        else:
            if same:
                report(True, "GET /openapi.json", f"200, equal to {args.doc}")
            else:
                report(False, "GET /openapi.json", f"200, but the served document differs from {args.doc}")

    # 2. Every operation, with the token.
    for path, method, op in operations:
        what = f"{method} {path}"
        op_id = op.get("operationId")
        try:
            url = base + fill_path(path, params)
        except KeyError as error:
            report(False, what, error.args[0])
            continue
        short = is_streaming(op) or op_id in args.skip
        body = {} if "requestBody" in op else None
        try:
            # A stream may stay open: after a 2xx status line its body is not read.
            reply = http(method, url, args.token, body,
                         timeout=SHORT_TIMEOUT if short else CALL_TIMEOUT, read_success_body=not short)
        except NoAnswer as error:
            report(False, what, str(error))
            continue
        problems = problems_with(reply, op, expect.get(op_id))
        if problems:
            report(False, what, f"{reply.status}: " + "; ".join(problems))
        else:
            note = " (body not read)" if reply.body is None else ""
            report(True, what, f"{reply.status}{note}")

    # 3. The edge itself refuses a protected operation without a token.
    protected = [(path, op) for path, method, op in operations
                 if method == "GET" and op.get("security", doc.get("security")) not in (None, [])]
    if not protected:
        report(False, "no-token check", "the document has no non-public GET operation")
    else:
        path, op = protected[0]
        what = f"GET {path} without a token"
        try:
            reply = http("GET", base + fill_path(path, params),
                         timeout=SHORT_TIMEOUT if is_streaming(op) else CALL_TIMEOUT, read_success_body=False)
        except (KeyError, NoAnswer) as error:
            report(False, what, error.args[0] if isinstance(error, KeyError) else str(error))
        else:
            report(reply.status == 401, what, f"{reply.status}" if reply.status == 401
                   else f"status {reply.status}, expected 401")

    if failures:
        print(f"FAILED: {failures} of {checks} checks")
        return 1
    print(f"openapi edge check: all {checks} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
