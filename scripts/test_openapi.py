#!/usr/bin/env python3
"""Unit tests of scripts/openapi.py.

    python3 -m unittest scripts/test_openapi.py     (or: python3 scripts/test_openapi.py)

Most tests build a small FileDescriptorSet in code, so each behaviour is pinned
without depending on the real protos; the last one runs protoc over proto/.
"""
import contextlib
import glob
import io
import json
import os
import pathlib
import re
import platform
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import openapi  # noqa: E402
from google.api import annotations_pb2  # noqa: E402
from google.protobuf import descriptor_pb2, timestamp_pb2  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FD = descriptor_pb2.FieldDescriptorProto


# --- building descriptor sets in code ----------------------------------------

def timestamp_file():
    f = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(f)
    return f


def add_field(message, name, number, type_, type_name="", repeated=False, oneof_index=None):
    field = message.field.add(name=name, number=number, type=type_,
                              label=FD.LABEL_REPEATED if repeated else FD.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name
    if oneof_index is not None:
        field.oneof_index = oneof_index
    return field


def add_method(service, name, input_type, output_type, http=None, server_streaming=False):
    """http: e.g. {"get": "/v1/x"} or {"post": "/v1/x", "body": "*"}; None for no rule."""
    method = service.method.add(name=name, input_type=input_type, output_type=output_type,
                                server_streaming=server_streaming)
    if http is not None:
        rule = method.options.Extensions[annotations_pb2.http]
        for key, value in http.items():
            setattr(rule, key, value)
    return method


def comment(file, path, text):
    file.source_code_info.location.add(path=path, leading_comments=text)


def thing_file(with_missing_rule=False):
    """package bank.v1: a ThingService over messages exercising every mapping."""
    f = descriptor_pb2.FileDescriptorProto(name="bank/v1/thing.proto", package="bank.v1", syntax="proto3")
    f.dependency.append("google/protobuf/timestamp.proto")

    color = f.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    color.value.add(name="COLOR_RED", number=1)

    # Message indexes matter for the source-info paths below.
    thing = f.message_type.add(name="Thing")  # 0
    thing.oneof_decl.add(name="choice")
    add_field(thing, "thing_id", 1, FD.TYPE_STRING)
    add_field(thing, "count", 2, FD.TYPE_INT64)
    add_field(thing, "color", 3, FD.TYPE_ENUM, ".bank.v1.Color")
    entry = thing.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    add_field(entry, "key", 1, FD.TYPE_STRING)
    add_field(entry, "value", 2, FD.TYPE_INT32)
    add_field(thing, "labels", 4, FD.TYPE_MESSAGE, ".bank.v1.Thing.LabelsEntry", repeated=True)
    add_field(thing, "colors", 5, FD.TYPE_ENUM, ".bank.v1.Color", repeated=True)
    add_field(thing, "at", 6, FD.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    add_field(thing, "inner", 7, FD.TYPE_MESSAGE, ".bank.v1.Inner")
    add_field(thing, "a", 8, FD.TYPE_STRING, oneof_index=0)
    add_field(thing, "b", 9, FD.TYPE_INT32, oneof_index=0)
    add_field(thing, "blob", 10, FD.TYPE_BYTES)
    add_field(thing, "ratio", 11, FD.TYPE_DOUBLE)
    add_field(thing, "ok", 12, FD.TYPE_BOOL)

    inner = f.message_type.add(name="Inner")  # 1
    add_field(inner, "x", 1, FD.TYPE_STRING)

    get = f.message_type.add(name="GetThingRequest")  # 2
    add_field(get, "thing_id", 1, FD.TYPE_STRING)
    add_field(get, "page_size", 2, FD.TYPE_INT32)
    add_field(get, "colors", 3, FD.TYPE_ENUM, ".bank.v1.Color", repeated=True)
    add_field(get, "since", 4, FD.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    add_field(get, "inner", 5, FD.TYPE_MESSAGE, ".bank.v1.Inner")
    add_field(get, "tags", 6, FD.TYPE_STRING, repeated=True)

    update = f.message_type.add(name="UpdateThingRequest")  # 3
    add_field(update, "thing_id", 1, FD.TYPE_STRING)
    add_field(update, "name", 2, FD.TYPE_STRING)
    add_field(update, "amount", 3, FD.TYPE_INT64)

    watch = f.message_type.add(name="WatchThingRequest")  # 4
    add_field(watch, "thing_id", 1, FD.TYPE_STRING)

    login = f.message_type.add(name="LoginRequest")  # 5
    add_field(login, "email", 1, FD.TYPE_STRING)

    f.message_type.add(name="Unused")  # 6: referenced by nothing

    service = f.service.add(name="ThingService")
    add_method(service, "GetThing", ".bank.v1.GetThingRequest", ".bank.v1.Thing",
               {"get": "/v1/things/{thing_id}"})
    add_method(service, "UpdateThing", ".bank.v1.UpdateThingRequest", ".bank.v1.Thing",
               {"post": "/v1/things/{thing_id}:update", "body": "*"})
    add_method(service, "WatchThing", ".bank.v1.WatchThingRequest", ".bank.v1.Thing",
               {"get": "/v1/things/{thing_id}:watch"}, server_streaming=True)
    add_method(service, "Login", ".bank.v1.LoginRequest", ".bank.v1.Thing",
               {"post": "/v1/login", "body": "*"})
    if with_missing_rule:
        add_method(service, "Forgotten", ".bank.v1.LoginRequest", ".bank.v1.Thing")

    comment(f, [6, 0], " Things and\n their lifecycle.\n")
    comment(f, [6, 0, 2, 0], " Reads one thing. Cheap.\n Second line.\n")
    comment(f, [4, 2, 2, 1], " 1..100, default 20.\n")
    comment(f, [4, 0], " A thing.\n")
    return f


def fds_of(*files):
    fds = descriptor_pb2.FileDescriptorSet()
    fds.file.extend(files)
    return fds


PUBLIC = frozenset({"bank.v1.ThingService/Login"})


def generate(fds):
    return openapi.generate(fds, public_methods=PUBLIC)


def schema(doc, name):
    return doc["components"]["schemas"][name]


def params(op):
    return {p["name"]: p for p in op.get("parameters", [])}


# --- tests over small descriptor sets ----------------------------------------

class SmallSetTest(unittest.TestCase):
    def setUp(self):
        self.doc = generate(fds_of(timestamp_file(), thing_file()))
        self.paths = self.doc["paths"]

    def test_document_header(self):
        self.assertEqual(self.doc["openapi"], "3.0.3")
        self.assertEqual(self.doc["info"]["title"], "bankmesh API")
        self.assertEqual(self.doc["servers"], [{"url": "/"}])
        self.assertEqual(self.doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer")

    def test_path_param_typed_and_removed_from_body(self):
        op = self.paths["/v1/things/{thing_id}:update"]["post"]
        self.assertEqual(params(op)["thing_id"],
                         {"name": "thing_id", "in": "path", "required": True,
                          "schema": {"type": "string", "format": "uuid"}})
        body = op["requestBody"]
        self.assertTrue(body["required"])
        self.assertEqual(body["content"]["application/json"]["schema"],
                         {"$ref": "#/components/schemas/UpdateThingRequestBody"})
        self.assertEqual(list(schema(self.doc, "UpdateThingRequestBody")["properties"]), ["name", "amount"])
        # Nothing was removed from LoginRequest: the message itself is the body.
        login = self.paths["/v1/login"]["post"]
        self.assertEqual(login["requestBody"]["content"]["application/json"]["schema"],
                         {"$ref": "#/components/schemas/LoginRequest"})

    def test_get_fields_become_query_params(self):
        op = self.paths["/v1/things/{thing_id}"]["get"]
        p = params(op)
        self.assertEqual(list(p), ["thing_id", "page_size", "colors", "since", "tags"])  # not `inner`
        self.assertEqual(p["thing_id"]["in"], "path")
        self.assertEqual(p["page_size"], {"name": "page_size", "in": "query", "description": "1..100, default 20.",
                                          "schema": {"type": "integer", "format": "int32"}})
        colors = p["colors"]
        self.assertEqual((colors["in"], colors["style"], colors["explode"]), ("query", "form", True))
        self.assertEqual(colors["schema"], {"type": "array", "items": {"type": "string",
                                                                       "enum": ["COLOR_UNSPECIFIED", "COLOR_RED"]}})
        self.assertEqual(p["since"]["schema"], {"type": "string", "format": "date-time"})
        self.assertEqual(p["tags"]["schema"], {"type": "array", "items": {"type": "string"}})
        self.assertNotIn("requestBody", op)

    def test_properties_are_the_json_names_as_the_edge_prints_them(self):
        props = schema(self.doc, "Thing")["properties"]
        self.assertIn("thingId", props)
        self.assertNotIn("thing_id", props)

    def test_scalar_mappings(self):
        props = schema(self.doc, "Thing")["properties"]
        self.assertEqual(props["count"], {"type": "string", "format": "int64"})
        self.assertEqual(schema(self.doc, "UpdateThingRequestBody")["properties"]["amount"],
                         {"type": "string", "format": "int64"})
        self.assertEqual(props["color"], {"type": "string", "enum": ["COLOR_UNSPECIFIED", "COLOR_RED"]})
        self.assertEqual(props["blob"], {"type": "string", "format": "byte"})
        self.assertEqual(props["ratio"]["type"], "number")
        self.assertEqual(props["ok"], {"type": "boolean"})
        self.assertEqual(props["at"], {"type": "string", "format": "date-time"})
        self.assertEqual(props["inner"], {"$ref": "#/components/schemas/Inner"})
        self.assertEqual(props["colors"]["type"], "array")

    def test_map_is_additional_properties(self):
        self.assertEqual(schema(self.doc, "Thing")["properties"]["labels"],
                         {"type": "object", "additionalProperties": {"type": "integer", "format": "int32"}})
        self.assertNotIn("Thing.LabelsEntry", self.doc["components"]["schemas"])

    def test_oneof_members_are_optional_properties_naming_the_oneof(self):
        thing = schema(self.doc, "Thing")
        self.assertNotIn("required", thing)
        for member in ("a", "b"):
            self.assertIn("oneof `choice`", thing["properties"][member]["description"])

    def test_server_streaming_is_an_array(self):
        op = self.paths["/v1/things/{thing_id}:watch"]["get"]
        self.assertEqual(op["responses"]["200"]["content"]["application/json"]["schema"],
                         {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}})
        self.assertIn("JSON array", op["description"])
        unary = self.paths["/v1/things/{thing_id}"]["get"]
        self.assertEqual(unary["responses"]["200"]["content"]["application/json"]["schema"],
                         {"$ref": "#/components/schemas/Thing"})

    def test_error_responses(self):
        op = self.paths["/v1/things/{thing_id}"]["get"]
        self.assertEqual(list(op["responses"]), ["200", "400", "401", "403", "404", "409", "413", "429", "500", "503", "504"])
        shared = self.doc["components"]["responses"]
        self.assertIn("FAILED_PRECONDITION", shared["Error400"]["description"])
        self.assertIn("ALREADY_EXISTS", shared["Error409"]["description"])
        for response in shared.values():
            self.assertEqual(response["content"]["application/json"]["schema"],
                             {"$ref": "#/components/schemas/Status"})
        # No google/rpc/status.proto in this set: the built-in Status schema stands in.
        status = schema(self.doc, "Status")["properties"]
        self.assertEqual(status["code"]["type"], "integer")
        self.assertEqual(status["message"]["type"], "string")
        self.assertEqual(status["details"]["items"]["properties"]["@type"]["type"], "string")

    def test_public_methods_need_no_token(self):
        self.assertEqual(self.doc["security"], [{"bearerAuth": []}])
        self.assertEqual(self.paths["/v1/login"]["post"]["security"], [])
        self.assertNotIn("security", self.paths["/v1/things/{thing_id}"]["get"])

    def test_operation_ids_tags_and_descriptions(self):
        op = self.paths["/v1/things/{thing_id}"]["get"]
        self.assertEqual(op["operationId"], "ThingService_GetThing")
        self.assertEqual(op["tags"], ["ThingService"])
        self.assertEqual(op["summary"], "Reads one thing.")
        self.assertTrue(op["description"].startswith("Reads one thing. Cheap.\nSecond line."))
        self.assertEqual(self.doc["tags"], [{"name": "ThingService", "description": "Things and\ntheir lifecycle."}])
        self.assertEqual(schema(self.doc, "Thing")["description"], "A thing.")

    def test_only_reachable_schemas(self):
        self.assertEqual(sorted(self.doc["components"]["schemas"]),
                         ["Inner", "LoginRequest", "Status", "Thing", "UpdateThingRequestBody"])

    def test_output_is_deterministic(self):
        fds = fds_of(timestamp_file(), thing_file())
        data = fds.SerializeToString()
        first = openapi.render(generate(descriptor_pb2.FileDescriptorSet.FromString(data)))
        second = openapi.render(generate(descriptor_pb2.FileDescriptorSet.FromString(data)))
        self.assertEqual(first, second)
        self.assertTrue(first.endswith("}\n"))
        # The order of files in the set does not matter either.
        reordered = openapi.render(generate(fds_of(thing_file(), timestamp_file())))
        self.assertEqual(first, reordered)


class ErrorTest(unittest.TestCase):
    def test_method_without_http_rule_is_an_error_naming_it(self):
        fds = fds_of(timestamp_file(), thing_file(with_missing_rule=True))
        with self.assertRaises(openapi.GenerateError) as raised:
            generate(fds)
        self.assertIn("bank.v1.ThingService/Forgotten", str(raised.exception))

    def test_cli_exits_1_naming_the_method(self):
        with tempfile.TemporaryDirectory() as tmp:
            pb = pathlib.Path(tmp, "set.pb")
            pb.write_bytes(fds_of(timestamp_file(), thing_file(with_missing_rule=True)).SerializeToString())
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                self.assertEqual(openapi.main([str(pb)]), 1)
            self.assertIn("bank.v1.ThingService/Forgotten", stderr.getvalue())

    def test_unknown_path_variable_is_an_error(self):
        f = thing_file()
        f.service[0].method[0].options.Extensions[annotations_pb2.http].get = "/v1/things/{nope}"
        with self.assertRaisesRegex(openapi.GenerateError, r"\{nope\}"):
            generate(fds_of(timestamp_file(), f))

    def test_two_rpcs_on_one_route_is_an_error(self):
        f = thing_file()
        f.service[0].method[2].options.Extensions[annotations_pb2.http].get = "/v1/things/{thing_id}"
        with self.assertRaisesRegex(openapi.GenerateError, "GET /v1/things/{thing_id}"):
            generate(fds_of(timestamp_file(), f))


class NamingTest(unittest.TestCase):
    def test_same_simple_name_in_two_packages_gets_package_prefixes(self):
        other = descriptor_pb2.FileDescriptorProto(name="other/v1/x.proto", package="other.v1", syntax="proto3")
        add_field(other.message_type.add(name="Thing"), "y", 1, FD.TYPE_STRING)
        f = thing_file()
        f.dependency.append("other/v1/x.proto")
        add_field(f.message_type[1], "other", 2, FD.TYPE_MESSAGE, ".other.v1.Thing")  # Inner.other
        doc = generate(fds_of(timestamp_file(), other, f))
        schemas = doc["components"]["schemas"]
        self.assertIn("bank.v1.Thing", schemas)
        self.assertIn("other.v1.Thing", schemas)
        self.assertNotIn("Thing", schemas)
        self.assertEqual(schemas["Inner"]["properties"]["other"], {"$ref": "#/components/schemas/other.v1.Thing"})
        op = doc["paths"]["/v1/things/{thing_id}"]["get"]
        self.assertEqual(op["responses"]["200"]["content"]["application/json"]["schema"],
                         {"$ref": "#/components/schemas/bank.v1.Thing"})


class CheckFlagTest(unittest.TestCase):
    def test_check_passes_on_current_and_fails_on_stale(self):
        with tempfile.TemporaryDirectory() as tmp:
            pb, out = pathlib.Path(tmp, "set.pb"), pathlib.Path(tmp, "openapi.json")
            pb.write_bytes(fds_of(timestamp_file(), thing_file()).SerializeToString())
            self.assertEqual(openapi.main([str(pb), "-o", str(out)]), 0)
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(openapi.main([str(pb), "--check", str(out)]), 0)
            out.write_text(out.read_text().replace("3.0.3", "3.0.2"))
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                self.assertEqual(openapi.main([str(pb), "--check", str(out)]), 1)
            self.assertIn("out of date", stderr.getvalue())


# --- the real protos ---------------------------------------------------------

def find_protoc():
    """(protoc, include dir of the well-known types), or (None, reason)."""
    candidates = []
    if os.environ.get("PROTOC"):
        candidates.append(os.environ["PROTOC"])
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch_64", "arm64": "aarch_64"}.get(
        platform.machine().lower(), platform.machine())
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    candidates += sorted(glob.glob(f"{cargo_home}/registry/src/*/protoc-bin-vendored-linux-{arch}-*/bin/protoc"))
    if shutil.which("protoc"):
        candidates.append(shutil.which("protoc"))
    for protoc in candidates:
        include = pathlib.Path(protoc).resolve().parent.parent / "include"
        for directory in (include, pathlib.Path("/usr/include"), pathlib.Path("/usr/local/include")):
            if (directory / "google/protobuf/timestamp.proto").exists() and os.access(protoc, os.X_OK):
                return protoc, str(directory)
    return None, ("no protoc with the well-known .proto files found (set PROTOC, or fetch the "
                  "protoc-bin-vendored crate with cargo)")


class RealProtosTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        protoc, include = find_protoc()
        if protoc is None:
            raise unittest.SkipTest(include)
        proto = ROOT / "proto"
        files = sorted(str(p.relative_to(proto)) for p in (proto / "bank/v1").glob("*.proto"))
        files += ["google/rpc/status.proto", "google/rpc/error_details.proto"]
        cls.tmp = tempfile.TemporaryDirectory()
        cls.pb = pathlib.Path(cls.tmp.name, "bank.pb")
        subprocess.run([protoc, "-I", str(proto), "-I", include, "--include_imports", "--include_source_info",
                        "-o", str(cls.pb), *files], check=True)
        cls.doc = openapi.generate(openapi.load_descriptor_set(cls.pb))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_deposit_is_a_post(self):
        op = self.doc["paths"]["/v1/accounts/{account_id}:deposit"]["post"]
        self.assertEqual(op["operationId"], "AccountCommandService_Deposit")
        self.assertEqual(params(op)["account_id"]["schema"], {"type": "string", "format": "uuid"})
        body = schema(self.doc, "DepositRequestBody")["properties"]
        self.assertNotIn("account_id", body)
        self.assertEqual(body["money"], {"$ref": "#/components/schemas/Money"})

    def test_list_transactions_query_params(self):
        op = self.doc["paths"]["/v1/accounts/{account_id}/transactions"]["get"]
        query = [p["name"] for p in op["parameters"] if p["in"] == "query"]
        self.assertEqual(query, ["page_size", "page_token", "from_time", "to_time", "kinds",
                                 "min_consistency_token"])

    def test_watch_balance_streams_an_array(self):
        op = self.doc["paths"]["/v1/accounts/{account_id}/balance:watch"]["get"]
        self.assertEqual(op["responses"]["200"]["content"]["application/json"]["schema"]["type"], "array")

    def test_auth_security(self):
        for path in ("/v1/users", "/v1/auth:login", "/v1/auth:refresh", "/v1/auth:logout", "/v1/auth:serviceToken"):
            self.assertEqual(self.doc["paths"][path]["post"]["security"], [], path)
        self.assertNotIn("security", self.doc["paths"]["/v1/users/me"]["get"])

    def test_status_comes_from_google_rpc(self):
        status = schema(self.doc, "Status")
        self.assertEqual(list(status["properties"]), ["code", "message", "details"])
        self.assertEqual(status["properties"]["details"]["type"], "array")

    def test_every_rpc_has_an_operation(self):
        ops = {op["operationId"] for methods in self.doc["paths"].values() for op in methods.values()}
        # Counted from the protos themselves, so a new RPC needs no edit here.
        protos = (ROOT / "proto/bank/v1").glob("*.proto")
        declared = [m for p in protos for m in re.findall(r"service\s+(\w+)\s*\{(.*?)\n\}", p.read_text(), re.S)]
        self.assertEqual(len(declared), 4)
        for service, body in declared:
            rpcs = re.findall(r"^\s*rpc\s+(\w+)", body, re.M)
            self.assertEqual(sorted(o for o in ops if o.startswith(service + "_")), sorted(f"{service}_{r}" for r in rpcs))

    def test_cli_output_is_byte_identical_across_runs(self):
        script = str(pathlib.Path(__file__).resolve().parent / "openapi.py")
        runs = [subprocess.run([sys.executable, script, str(self.pb)], check=True, capture_output=True).stdout
                for _ in range(2)]
        self.assertEqual(runs[0], runs[1])
        self.assertEqual(json.loads(runs[0]), self.doc)


if __name__ == "__main__":
    unittest.main()
