#!/usr/bin/env python3
"""OpenAPI 3.0.3 for the REST face of the edge, generated from a protobuf
descriptor set (the one Envoy's JSON transcoder loads).

    python3 scripts/openapi.py DESCRIPTOR_SET.pb [-o OUT.json] [--check OUT.json]

No flag prints the document; -o writes it; --check exits 1 when the file differs
from what would be generated (CI proof that the committed document is current).

What it follows, so the document matches what Envoy really does:
- every RPC of package bank.v1 must carry a google.api.http rule (error if not);
- schemas use the lowerCamelCase JSON names (the proto3 JSON mapping), as the
  edge prints responses (preserve_proto_field_names off); requests also accept
  the proto names;
- the proto3 JSON mapping (64-bit integers are strings, enums are their names,
  Timestamp is an RFC 3339 string, ...);
- a server-streaming RPC answers one JSON array, written as messages arrive;
- errors are google.rpc.Status JSON (convert_grpc_status), with the HTTP status
  Envoy derives from the gRPC code.

Supported http rules: get/put/post/delete/patch, path variables `{field}` or
`{field=*}` naming a top-level scalar field, body "" / "*" / "<field>",
response_body. Anything else (nested field paths, multi-segment patterns,
additional_bindings, custom verbs, client streaming) is an error rather than a
silently wrong document.

Requirements: scripts/requirements.txt (protobuf, googleapis-common-protos).
"""
import argparse
import copy
import difflib
import json
import pathlib
import re
import sys

from google.api import annotations_pb2  # registers the google.api.http extension on MethodOptions
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

PACKAGE = "bank.v1"

# RPCs that need no token (the jwt_authn exemptions in envoy/envoy.yaml).
PUBLIC_METHODS = frozenset({
    "bank.v1.AuthService/Register",
    "bank.v1.AuthService/Login",
    "bank.v1.AuthService/Refresh",
    "bank.v1.AuthService/Logout",
    "bank.v1.AuthService/IssueServiceToken",
})

INFO_DESCRIPTION = (
    "Generated from proto/ by scripts/openapi.py; do not edit by hand.\n\n"
    "Errors are google.rpc.Status JSON: `code` (the gRPC status code number), "
    "`message`, and `details` (typed messages such as google.rpc.ErrorInfo and "
    "google.rpc.BadRequest). Amounts are decimal strings (e.g. \"10.50\"), never "
    "numbers; 64-bit integers are strings too.\n\n"
    "Bodies use the proto3 JSON mapping: lowerCamelCase JSON names (`accountId`), "
    "as documented here, in responses; requests accept those and the proto field "
    "names (`account_id`), and refuse a field given twice in either style. Query "
    "parameters are the proto field names."
)

# HTTP status -> the gRPC codes Envoy maps to it (convert_grpc_status), documented
# on every operation through shared components/responses.
ERROR_RESPONSES = (
    ("400", "Error400", ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE")),
    ("401", "Error401", ("UNAUTHENTICATED",)),
    ("403", "Error403", ("PERMISSION_DENIED",)),
    ("404", "Error404", ("NOT_FOUND",)),
    ("409", "Error409", ("ABORTED", "ALREADY_EXISTS")),
    ("413", "Error413", ("INVALID_ARGUMENT: request body over 64 KiB",)),
    ("429", "Error429", ("RESOURCE_EXHAUSTED",)),
    ("500", "Error500", ("INTERNAL",)),
    ("503", "Error503", ("UNAVAILABLE",)),
    ("504", "Error504", ("DEADLINE_EXCEEDED",)),
)

STATUS_TYPE = ".google.rpc.Status"


def json_name(field):
    """The field's proto3 JSON name (protoc fills it in; computed if not)."""
    if field.json_name:
        return field.json_name
    head, *rest = field.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
TIMESTAMP_TYPE = ".google.protobuf.Timestamp"

FD = descriptor_pb2.FieldDescriptorProto
INT32_TYPES = {FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_SINT32, FD.TYPE_FIXED32, FD.TYPE_SFIXED32}
INT64_TYPES = {FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_SINT64, FD.TYPE_FIXED64, FD.TYPE_SFIXED64}

ANY_SCHEMA = {
    "type": "object",
    "properties": {
        "@type": {
            "type": "string",
            "description": "The type of the message, e.g. `type.googleapis.com/google.rpc.ErrorInfo`; "
                           "the other properties are that message's fields.",
        },
    },
    "additionalProperties": True,
}

# Well-known types have their own JSON forms in the proto3 mapping: inlined, never components.
WELL_KNOWN = {
    TIMESTAMP_TYPE: {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string"},
    ".google.protobuf.Any": ANY_SCHEMA,
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.FieldMask": {"type": "string"},
    ".google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    ".google.protobuf.Value": {},
    ".google.protobuf.ListValue": {"type": "array", "items": {}},
    ".google.protobuf.StringValue": {"type": "string"},
    ".google.protobuf.BytesValue": {"type": "string", "format": "byte"},
    ".google.protobuf.BoolValue": {"type": "boolean"},
    ".google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    ".google.protobuf.UInt32Value": {"type": "integer", "format": "int32"},
    ".google.protobuf.Int64Value": {"type": "string", "format": "int64"},
    ".google.protobuf.UInt64Value": {"type": "string", "format": "int64"},
    ".google.protobuf.FloatValue": {"type": "number", "format": "float"},
    ".google.protobuf.DoubleValue": {"type": "number", "format": "double"},
}

# Used when the descriptor set lacks google/rpc/status.proto: the errors still need a schema.
FALLBACK_STATUS_SCHEMA = {
    "type": "object",
    "description": "The error model (google.rpc.Status).",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
        "message": {"type": "string", "description": "A developer-facing error message."},
        "details": {"type": "array", "items": ANY_SCHEMA},
    },
}

# Output order of the methods of one path (the order the OpenAPI spec lists them in).
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class GenerateError(Exception):
    """The descriptor set cannot be turned into a faithful document."""


# --- descriptor set indexing -------------------------------------------------

def clean_comment(raw):
    """A leading comment as readable text: one leading space per line removed
    (deeper indentation is kept, it is usually deliberate), no blank edges."""
    lines = [line[1:] if line.startswith(" ") else line for line in raw.split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def summarize(text):
    """The first sentence of the first paragraph, else its first line."""
    paragraph = text.split("\n\n")[0]
    flat = " ".join(line.strip() for line in paragraph.splitlines())
    match = re.match(r"(.+?[.!?])(\s|$)", flat)
    return match.group(1) if match else text.splitlines()[0]


class MessageInfo:
    def __init__(self, full_name, proto, package, comment, field_comments):
        self.full_name = full_name  # ".bank.v1.Money"
        self.proto = proto
        self.package = package
        self.comment = comment
        self.field_comments = field_comments  # field name -> comment
        self.fields = {f.name: f for f in proto.field}

    @property
    def local_name(self):
        """The name inside its package ("Money", "BadRequest.FieldViolation")."""
        return self.full_name[len(self.package) + 2:] if self.package else self.full_name[1:]


class EnumInfo:
    def __init__(self, full_name, proto, comment, value_comments):
        self.full_name = full_name
        self.proto = proto
        self.comment = comment
        self.value_comments = value_comments  # value name -> comment


class Index:
    """Messages, enums and services of a FileDescriptorSet, with their comments."""

    def __init__(self, fds):
        self.messages = {}
        self.enums = {}
        self.services = []  # (package, ServiceDescriptorProto, comment, {method name: comment})
        for f in fds.file:
            comments = {
                tuple(loc.path): clean_comment(loc.leading_comments)
                for loc in f.source_code_info.location
                if loc.leading_comments.strip()
            }
            scope = "." + f.package if f.package else ""
            for i, m in enumerate(f.message_type):
                self._add_message(m, scope, f.package, (4, i), comments)
            for i, e in enumerate(f.enum_type):
                self._add_enum(e, scope, (5, i), comments)
            for i, s in enumerate(f.service):
                method_comments = {
                    m.name: comments.get((6, i, 2, j), "") for j, m in enumerate(s.method)
                }
                self.services.append((f.package, s, comments.get((6, i), ""), method_comments))

    def _add_message(self, proto, scope, package, path, comments):
        full = f"{scope}.{proto.name}"
        field_comments = {
            fd.name: comments.get(path + (2, i), "") for i, fd in enumerate(proto.field)
        }
        self.messages[full] = MessageInfo(full, proto, package, comments.get(path, ""), field_comments)
        for i, nested in enumerate(proto.nested_type):
            self._add_message(nested, full, package, path + (3, i), comments)
        for i, e in enumerate(proto.enum_type):
            self._add_enum(e, full, path + (4, i), comments)

    def _add_enum(self, proto, scope, path, comments):
        full = f"{scope}.{proto.name}"
        value_comments = {v.name: comments.get(path + (2, i), "") for i, v in enumerate(proto.value)}
        self.enums[full] = EnumInfo(full, proto, comments.get(path, ""), value_comments)

    def message(self, full_name):
        try:
            return self.messages[full_name]
        except KeyError:
            raise GenerateError(f"message {full_name[1:]} is not in the descriptor set "
                                "(build it with --include_imports)") from None

    def enum(self, full_name):
        try:
            return self.enums[full_name]
        except KeyError:
            raise GenerateError(f"enum {full_name[1:]} is not in the descriptor set") from None


# --- document construction ---------------------------------------------------

def join_text(*parts):
    return "\n\n".join(p for p in parts if p)


def or_list(words):
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def with_description(schema, text):
    if not text:
        return schema
    if "$ref" in schema:
        # OpenAPI 3.0 ignores siblings of $ref: wrap it to keep the description.
        return {"description": text, "allOf": [schema]}
    described = dict(schema)
    described["description"] = text
    return described


class Generator:
    def __init__(self, index, package, public_methods):
        self.index = index
        self.package = package
        self.public_methods = public_methods
        # Component names are only known once every used message is known (a
        # clash of simple names changes them), so $refs are filled in at the end.
        self.used = {}  # message full name -> component schema (None until built)
        self.refs = []  # ({"$ref": None}, message full name)
        self.bodies = {}  # synthesized request body component name -> schema

    # Schemas of types and fields.

    def ref(self, full_name):
        if full_name in WELL_KNOWN:
            return copy.deepcopy(WELL_KNOWN[full_name])
        if full_name != STATUS_TYPE:
            self.index.message(full_name)  # fail early on a type missing from the set
        self.used.setdefault(full_name, None)
        ref = {"$ref": None}
        self.refs.append((ref, full_name))
        return ref

    def is_map(self, field):
        if field.type != FD.TYPE_MESSAGE or field.label != FD.LABEL_REPEATED:
            return False
        entry = self.index.messages.get(field.type_name)
        return entry is not None and entry.proto.options.map_entry

    def enum_schema(self, full_name):
        info = self.index.enum(full_name)
        return {"type": "string", "enum": [v.name for v in info.proto.value]}

    def enum_text(self, full_name):
        """The enum's comment and its commented values, for a field's description."""
        info = self.index.enum(full_name)
        values = [f"- `{name}`: {' '.join(text.split())}" for name, text in info.value_comments.items() if text]
        return join_text(info.comment, "\n".join(values))

    def value_schema(self, field):
        """The schema of one value of the field (an element, if it is repeated)."""
        t = field.type
        if t == FD.TYPE_STRING:
            return {"type": "string"}
        if t == FD.TYPE_BOOL:
            return {"type": "boolean"}
        if t in INT32_TYPES:
            return {"type": "integer", "format": "int32"}
        if t in INT64_TYPES:
            # proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose precision).
            return {"type": "string", "format": "int64"}
        if t == FD.TYPE_FLOAT:
            return {"type": "number", "format": "float"}
        if t == FD.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if t == FD.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        if t == FD.TYPE_ENUM:
            return self.enum_schema(field.type_name)
        if t in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            return self.ref(field.type_name)
        raise GenerateError(f"field {field.name}: unsupported type {t}")

    def field_schema(self, field):
        if self.is_map(field):
            entry = self.index.message(field.type_name)
            return {"type": "object", "additionalProperties": self.value_schema(entry.fields["value"])}
        if field.label == FD.LABEL_REPEATED:
            return {"type": "array", "items": self.value_schema(field)}
        return self.value_schema(field)

    def field_text(self, info, field):
        text = info.field_comments.get(field.name, "")
        if field.type == FD.TYPE_ENUM:
            text = join_text(text, self.enum_text(field.type_name))
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneof = info.proto.oneof_decl[field.oneof_index].name
            members = [f"`{f.name}`" for f in info.proto.field
                       if f.HasField("oneof_index") and f.oneof_index == field.oneof_index]
            text = join_text(text, f"Member of oneof `{oneof}`: at most one of "
                                   f"{', '.join(members)} is set.")
        return text

    def message_schema(self, info, exclude=(), note=""):
        schema = {"type": "object"}
        description = join_text(info.comment, note)
        if description:
            schema["description"] = description
        properties = {}
        for field in info.proto.field:
            if field.name not in exclude:
                properties[json_name(field)] = with_description(self.field_schema(field), self.field_text(info, field))
        if properties:
            schema["properties"] = properties
        return schema

    # Operations.

    def operation(self, package, service, method, method_comment):
        grpc_name = f"{package}.{service.name}/{method.name}"
        if not method.options.HasExtension(annotations_pb2.http):
            return None
        rule = method.options.Extensions[annotations_pb2.http]
        if rule.additional_bindings:
            raise GenerateError(f"{grpc_name}: additional_bindings are not supported")
        kind = rule.WhichOneof("pattern")
        if kind not in HTTP_METHODS:
            raise GenerateError(f"{grpc_name}: unsupported http rule kind {kind!r}")
        if method.client_streaming:
            raise GenerateError(f"{grpc_name}: client streaming cannot be called over REST")
        template = getattr(rule, kind)
        request = self.index.message(method.input_type)
        response = self.index.message(method.output_type) if method.output_type not in WELL_KNOWN else None

        # Path variables: each binds a top-level scalar field of the request.
        path_fields = []

        def path_variable(match):
            name, pattern = match.group(1), match.group(2)
            if pattern not in (None, "*") or "." in name:
                raise GenerateError(f"{grpc_name}: unsupported path variable {match.group(0)} "
                                    "(only {field} and {field=*} of a top-level field)")
            field = request.fields.get(name)
            if field is None:
                raise GenerateError(f"{grpc_name}: path variable {{{name}}} is not a field of "
                                    f"{method.input_type[1:]}")
            if field.label == FD.LABEL_REPEATED or field.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
                raise GenerateError(f"{grpc_name}: path variable {{{name}}} must be a singular scalar field")
            path_fields.append(field)
            return "{" + name + "}"

        path = re.sub(r"\{([^}=]+)(?:=([^}]*))?\}", path_variable, template)
        leftover = re.sub(r"\{\w+\}", "", path)
        if not path.startswith("/") or "{" in leftover or "}" in leftover:
            raise GenerateError(f"{grpc_name}: malformed path template {template!r}")

        parameters = []
        for field in path_fields:
            schema = self.value_schema(field)
            if field.type == FD.TYPE_STRING and field.name.endswith("_id"):
                schema["format"] = "uuid"
            parameter = {"name": field.name, "in": "path", "required": True}
            text = self.field_text(request, field)
            if text:
                parameter["description"] = text
            parameter["schema"] = schema
            parameters.append(parameter)
        bound = {f.name for f in path_fields}

        request_body = None
        if rule.body:
            if kind in ("get", "delete"):
                raise GenerateError(f"{grpc_name}: a {kind.upper()} rule cannot have a body")
            if rule.body == "*":
                body_schema = self.request_body_schema(request, bound)
                bound |= set(request.fields)
            else:
                field = request.fields.get(rule.body)
                if field is None:
                    raise GenerateError(f"{grpc_name}: body {rule.body!r} is not a field of {method.input_type[1:]}")
                body_schema = with_description(self.field_schema(field), self.field_text(request, field))
                bound.add(field.name)
            request_body = {"required": True, "content": {"application/json": {"schema": body_schema}}}

        # Whatever the path and body do not bind travels in the query string.
        for field in request.proto.field:
            if field.name in bound or not self.query_eligible(field):
                continue
            parameter = {"name": field.name, "in": "query"}
            text = self.field_text(request, field)
            if text:
                parameter["description"] = text
            if field.label == FD.LABEL_REPEATED:
                parameter["style"] = "form"
                parameter["explode"] = True
            parameter["schema"] = self.field_schema(field)
            parameters.append(parameter)

        if rule.response_body:
            if response is None or rule.response_body not in response.fields:
                raise GenerateError(f"{grpc_name}: response_body {rule.response_body!r} is not a field "
                                    f"of {method.output_type[1:]}")
            result = self.field_schema(response.fields[rule.response_body])
        else:
            result = self.ref(method.output_type)
        result_name = method.output_type.rsplit(".", 1)[1]
        streaming = ""
        if method.server_streaming:
            result = {"type": "array", "items": result}
            streaming = (f"Server-streaming: the response is one JSON array of {result_name} messages, "
                         "each element written as the server sends it; the array is closed when the "
                         "stream ends.")
            ok = f"OK: a JSON array of {result_name} messages, streamed."
        else:
            ok = f"OK: a {result_name}."

        op = {"tags": [service.name]}
        if method_comment:
            op["summary"] = summarize(method_comment)
        op["description"] = join_text(method_comment, streaming, f"gRPC: `{grpc_name}`.")
        op["operationId"] = f"{service.name}_{method.name}"
        if parameters:
            op["parameters"] = parameters
        if request_body:
            op["requestBody"] = request_body
        responses = {"200": {"description": ok, "content": {"application/json": {"schema": result}}}}
        for status, name, _ in ERROR_RESPONSES:
            responses[status] = {"$ref": f"#/components/responses/{name}"}
        op["responses"] = responses
        if grpc_name in self.public_methods:
            op["security"] = []  # no token needed (overrides the global bearerAuth)
        return path, kind, op

    def request_body_schema(self, request, path_bound):
        if not path_bound:
            return self.ref(request.full_name)
        # The path carries some fields: the body is the rest, as its own component.
        name = f"{request.proto.name}Body"
        bound = ", ".join(f"`{field}`" for field in sorted(path_bound))
        schema = self.message_schema(request, exclude=path_bound,
                                     note=f"{request.proto.name} without the fields bound in the path ({bound}).")
        if name in self.bodies and self.bodies[name] != schema:
            raise GenerateError(f"two different request bodies would be named {name}")
        self.bodies[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def query_eligible(self, field):
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            # Nested messages have no query form here; Timestamp is an RFC 3339 string.
            return field.type_name == TIMESTAMP_TYPE
        return True

    # The whole document.

    def build(self):
        paths = {}
        tags = []
        missing = []
        for package, service, service_comment, method_comments in self.index.services:
            if package != self.package:
                continue
            tag = {"name": service.name}
            if service_comment:
                tag["description"] = service_comment
            tags.append(tag)
            for method in service.method:
                result = self.operation(package, service, method, method_comments[method.name])
                if result is None:
                    missing.append(f"{package}.{service.name}/{method.name}")
                    continue
                path, kind, op = result
                if kind in paths.setdefault(path, {}):
                    raise GenerateError(f"{kind.upper()} {path} is bound by both "
                                        f"{paths[path][kind]['operationId']} and {op['operationId']}")
                paths[path][kind] = op
        if missing:
            raise GenerateError("RPCs without a google.api.http rule (every RPC must be reachable "
                                "over REST): " + ", ".join(missing))
        if not tags:
            raise GenerateError(f"no service in package {self.package}")

        self.ref(STATUS_TYPE)  # the error responses' schema, always present
        # Build every used message; building one may use more.
        while any(schema is None for schema in self.used.values()):
            for full_name in [n for n, s in self.used.items() if s is None]:
                if full_name not in self.index.messages:  # only STATUS_TYPE can be missing
                    self.used[full_name] = copy.deepcopy(FALLBACK_STATUS_SCHEMA)
                else:
                    self.used[full_name] = self.message_schema(self.index.messages[full_name])

        names = self.component_names()
        for ref, full_name in self.refs:
            ref["$ref"] = f"#/components/schemas/{names[full_name]}"
        schemas = {names[full_name]: schema for full_name, schema in self.used.items()}
        for name, schema in self.bodies.items():
            if name in schemas:
                raise GenerateError(f"request body component {name} clashes with a message of that name")
            schemas[name] = schema

        # Sorted everywhere: the output must not depend on the order of files in the set.
        sorted_paths = {
            path: {m: paths[path][m] for m in HTTP_METHODS if m in paths[path]}
            for path in sorted(paths)
        }
        status_ref = f"#/components/schemas/{names[STATUS_TYPE]}"
        responses = {
            name: {
                "description": f"gRPC status {or_list(codes)}; the body is a google.rpc.Status.",
                "content": {"application/json": {"schema": {"$ref": status_ref}}},
            }
            for _, name, codes in ERROR_RESPONSES
        }
        return {
            "openapi": "3.0.3",
            "info": {"title": "bankmesh API", "version": "v1", "description": INFO_DESCRIPTION},
            "servers": [{"url": "/"}],
            "security": [{"bearerAuth": []}],
            "tags": sorted(tags, key=lambda t: t["name"]),
            "paths": sorted_paths,
            "components": {
                "schemas": {name: schemas[name] for name in sorted(schemas)},
                "responses": responses,
                "securitySchemes": {
                    "bearerAuth": {
                        "type": "http",
                        "scheme": "bearer",
                        "bearerFormat": "JWT",
                        "description": "An access token from Login or Refresh.",
                    },
                },
            },
        }

    def component_names(self):
        """Simple names, except where two packages' messages share one: then
        both take their package as a prefix."""
        def local(full_name):
            info = self.index.messages.get(full_name)
            return info.local_name if info else full_name.rsplit(".", 1)[1]

        by_local = {}
        for full_name in self.used:
            by_local.setdefault(local(full_name), []).append(full_name)
        return {
            full_name: local(full_name) if len(group) == 1 else full_name[1:]
            for group in by_local.values()
            for full_name in group
        }


# --- entry points ------------------------------------------------------------

def generate(fds, package=PACKAGE, public_methods=PUBLIC_METHODS):
    """The OpenAPI document (a dict) for a FileDescriptorSet."""
    return Generator(Index(fds), package, public_methods).build()


def render(doc):
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def load_descriptor_set(path):
    fds = descriptor_pb2.FileDescriptorSet()
    try:
        fds.ParseFromString(pathlib.Path(path).read_bytes())
    except DecodeError as e:
        raise GenerateError(f"{path} is not a serialized FileDescriptorSet: {e}") from None
    return fds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("descriptor_set", help="a serialized google.protobuf.FileDescriptorSet "
                        "(with imports and source info)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-o", "--output", help="write the document to this file")
    action.add_argument("--check", metavar="FILE", help="exit 1 if FILE is not what would be generated")
    args = parser.parse_args(argv)

    try:
        text = render(generate(load_descriptor_set(args.descriptor_set)))
    except (GenerateError, OSError) as e:
        print(f"openapi.py: error: {e}", file=sys.stderr)
        return 1

    if args.output:
        pathlib.Path(args.output).write_bytes(text.encode())
    elif args.check:
        target = pathlib.Path(args.check)
        current = target.read_bytes().decode(errors="replace") if target.exists() else None
        if current != text:
            why = "does not exist" if current is None else "is out of date with proto/"
            print(f"openapi.py: {args.check} {why}; regenerate it with\n"
                  f"  python3 scripts/openapi.py {args.descriptor_set} -o {args.check}", file=sys.stderr)
            if current is not None:
                diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(),
                                                 f"{args.check} (committed)", "generated", lineterm="", n=2))
                sys.stderr.write("\n".join(diff[:60]) + ("\n..." if len(diff) > 60 else "") + "\n")
            return 1
        print(f"{args.check} is up to date")
    else:
        sys.stdout.buffer.write(text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
