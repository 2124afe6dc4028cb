#!/usr/bin/env python3
"""Tests of gen_api.py: the parser on constructs our files use and some they may use later, its refusals, the
`--check` mode, and, where `grpc_tools` (PyPI grpcio-tools) is importable, a comparison of what the parser read from
the real protos with the descriptors protoc builds from them (names, numbers, labels, types, oneofs, streaming and
leading comments).

    python3 docs/tools/test_gen_api.py            # the protoc comparison is skipped without grpc_tools
    target/docs-venv/bin/python docs/tools/test_gen_api.py   # as docs/examples/test.sh runs it
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import gen_api  # noqa: E402

SAMPLE = textwrap.dedent(
    """\
    // File comment, detached from what follows.

    syntax = "proto3";

    package demo.v1;

    import "google/protobuf/timestamp.proto";
    option java_package = "com.example.demo";
    option (custom) = { a: 1 b: { c: "}" } };

    // The service.
    // Two lines.
    service Things {
      // Streams both ways.
      rpc Chat(stream Outer) returns (stream Outer.Inner);
      rpc Get(Outer) returns (Outer) { option deprecated = true; }  // Trailing on an rpc.
    }

    /* A block comment
     * over two lines. */
    message Outer {
      // A detached comment: a blank line follows.

      // Leading of id.
      string id = 1;  // Trailing of id.
      repeated Inner inners = 2 [deprecated = true];
      map<string, Inner> by_name = 3;
      optional uint64 count = 4;
      // The choice.
      oneof choice {
        // Picked by text.
        string text = 5;
        Inner inner = 6;
        .demo.v1.Color color = 7;
      }
      reserved 8, 9 to 11;
      reserved "old";
      google.protobuf.Timestamp at = 12;

      // Nested.
      message Inner {
        Kind kind = 1;
        // Nested enum.
        enum Kind {
          KIND_UNSPECIFIED = 0;
          KIND_A = 1; // Trailing of a value.
        }
      }
    }

    enum Color {
      option allow_alias = true;
      COLOR_UNSPECIFIED = 0;
      COLOR_RED = 1 [deprecated = true];
      reserved 2;
    }
    """
)


class ParserTests(unittest.TestCase):
    def setUp(self) -> None:
        self.proto = gen_api.parse_file(SAMPLE, "demo/v1/demo.proto")
        self.schema = gen_api.Schema([self.proto])

    def test_file_level(self) -> None:
        self.assertEqual(self.proto.syntax, "proto3")
        self.assertEqual(self.proto.package, "demo.v1")
        self.assertEqual(self.proto.imports, ["google/protobuf/timestamp.proto"])
        # Separated by a blank line: detached, as protoc treats it.
        self.assertEqual(self.proto.comment, "")

    def test_service_and_rpcs(self) -> None:
        (service,) = self.proto.services
        self.assertEqual(service.full_name, "demo.v1.Things")
        self.assertEqual(service.comment, "The service.\nTwo lines.")
        chat, get = service.rpcs
        self.assertTrue(chat.client_streaming and chat.server_streaming)
        self.assertEqual(chat.comment, "Streams both ways.")
        self.assertEqual(chat.resolved_response, "demo.v1.Outer.Inner")
        self.assertFalse(get.client_streaming or get.server_streaming)
        self.assertEqual(get.comment, "Trailing on an rpc.")

    def test_fields(self) -> None:
        outer = self.schema.messages["demo.v1.Outer"]
        self.assertEqual(outer.comment, "A block comment\nover two lines.")
        fields = {field.name: field for field in outer.fields}
        self.assertEqual([field.number for field in outer.fields], [1, 2, 3, 4, 5, 6, 7, 12])
        self.assertEqual(fields["id"].comment, "Leading of id.\nTrailing of id.")
        self.assertEqual(fields["inners"].label, "repeated")
        self.assertEqual(fields["inners"].resolved, "demo.v1.Outer.Inner")
        self.assertEqual((fields["by_name"].key_type, fields["by_name"].resolved), ("string", "demo.v1.Outer.Inner"))
        self.assertEqual(fields["count"].label, "optional")
        self.assertEqual([f.name for f in outer.fields if f.oneof == "choice"], ["text", "inner", "color"])
        self.assertEqual(outer.oneofs, {"choice": "The choice."})
        self.assertEqual(fields["text"].comment, "Picked by text.")
        self.assertEqual(fields["color"].resolved, "demo.v1.Color")
        self.assertEqual(fields["at"].resolved, "google.protobuf.Timestamp")

    def test_nested_types_and_enums(self) -> None:
        inner = self.schema.messages["demo.v1.Outer.Inner"]
        self.assertEqual(inner.comment, "Nested.")
        self.assertEqual(inner.fields[0].resolved, "demo.v1.Outer.Inner.Kind")
        kind = self.schema.enums["demo.v1.Outer.Inner.Kind"]
        self.assertEqual(kind.comment, "Nested enum.")
        self.assertEqual([(v.name, v.number, v.comment) for v in kind.values],
                         [("KIND_UNSPECIFIED", 0, ""), ("KIND_A", 1, "Trailing of a value.")])
        color = self.schema.enums["demo.v1.Color"]
        self.assertEqual([v.name for v in color.values], ["COLOR_UNSPECIFIED", "COLOR_RED"])

    def test_render_links_and_oneofs(self) -> None:
        text = gen_api.Renderer(self.schema).render()
        self.assertIn("### Outer.Inner", text)
        self.assertIn("| `by_name` | 3 | map<`string`, [`Outer.Inner`](#outerinner)> |", text)
        self.assertIn("At most one of `text`, `inner`, `color` is set (oneof `choice`). The choice.", text)
        self.assertIn("| `Chat` | stream [`Outer`](#outer) | stream [`Outer.Inner`](#outerinner) |", text)
        self.assertIn("[`google.protobuf.Timestamp`](https://protobuf.dev/", text)
        self.assertIn("Used by: [Outer.Inner](#outerinner).`kind`.", text)

    def test_refusals(self) -> None:
        cases = {
            "unknown type": 'syntax = "proto3"; package p; message M { Missing m = 1; }',
            "required": 'syntax = "proto2"; package p; message M { required string s = 1; }',
            "proto2": 'syntax = "proto2"; package p; message M { string s = 1; }',
            "garbage": 'syntax = "proto3"; package p; message M { string s = 1 }',
            "duplicate": 'syntax = "proto3"; package p; message M {} message M {}',
            "unterminated": 'syntax = "proto3"; package p; message M { string s = 1;',
            "rpc of a scalar": 'syntax = "proto3"; package p; service S { rpc A(string) returns (string); }',
        }
        for name, text in cases.items():
            with self.subTest(name):
                with self.assertRaises(gen_api.ProtoError):
                    gen_api.Schema([gen_api.parse_file(text, "p.proto")])


class CheckModeTests(unittest.TestCase):
    def test_check_passes_when_current_and_fails_when_stale(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            root = pathlib.Path(directory)
            (root / "demo" / "v1").mkdir(parents=True)
            (root / "demo" / "v1" / "demo.proto").write_text(SAMPLE)
            output = root / "api.md"
            arguments = ["--proto-root", str(root), "--output", str(output)]

            def run(*extra: str) -> tuple[int, str]:
                captured = io.StringIO()
                with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                    code = gen_api.main(arguments + list(extra))
                return code, captured.getvalue()

            self.assertEqual(run("--check")[0], 1)  # missing
            self.assertEqual(run()[0], 0)
            self.assertEqual(run("--check"), (0, f"gen_api: {output} is up to date\n"))
            (root / "demo" / "v1" / "demo.proto").write_text(SAMPLE.replace("// Leading of id.", "// Changed."))
            code, message = run("--check")
            self.assertEqual(code, 1)
            self.assertIn("+| `id` | 1 | `string` | Changed. Trailing of id. |", message)
            self.assertIn("is stale", message)


def protoc_descriptors():
    """FileDescriptorProtos of the repository's protos, built by protoc (grpc_tools), or None without it."""
    try:
        import importlib.resources

        from google.protobuf import descriptor_pb2
        from grpc_tools import protoc
    except ImportError:
        return None
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as directory:
        output = pathlib.Path(directory) / "set.pb"
        files = sorted(path.relative_to(gen_api.PROTO_ROOT).as_posix() for path in gen_api.PROTO_ROOT.rglob("*.proto"))
        code = protoc.main(["protoc", f"-I{gen_api.PROTO_ROOT}", f"-I{include}", "--include_source_info",
                            f"--descriptor_set_out={output}", *files])
        if code != 0:
            raise AssertionError(f"protoc failed with {code}")
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())
    return {file.name: file for file in descriptor_set.file}


def normalize(comment: str) -> str:
    return " ".join(comment.split())


@unittest.skipIf(protoc_descriptors() is None, "grpc_tools (PyPI grpcio-tools) is not installed")
class ProtocComparisonTests(unittest.TestCase):
    """What gen_api read from proto/ equals what protoc read from it."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.descriptors = protoc_descriptors()
        cls.schema = gen_api.load(gen_api.PROTO_ROOT)

    def comments(self, file) -> dict[tuple, str]:
        return {tuple(location.path): normalize(location.leading_comments + location.trailing_comments)
                for location in file.source_code_info.location}

    def test_same_declarations_numbers_types_and_comments(self) -> None:
        from google.protobuf import descriptor_pb2

        field_proto = descriptor_pb2.FieldDescriptorProto
        scalar_names = {value: name[len("TYPE_"):].lower() for name, value in field_proto.Type.items()}
        self.assertEqual(sorted(self.descriptors), sorted(file.path for file in self.schema.files))
        checked = 0
        for ours in self.schema.files:
            theirs = self.descriptors[ours.path]
            comments = self.comments(theirs)
            self.assertEqual(ours.package, theirs.package)
            self.assertEqual(ours.imports, list(theirs.dependency))

            def compare_message(message, descriptor, path):
                nonlocal checked
                self.assertEqual(message.name, descriptor.name)
                self.assertEqual(normalize(message.comment), comments.get(path, ""), message.full_name)
                maps = {nested.name: nested for nested in descriptor.nested_type if nested.options.map_entry}
                real_oneofs = [oneof.name for index, oneof in enumerate(descriptor.oneof_decl)
                               if not any(f.HasField("oneof_index") and f.oneof_index == index
                                          and f.proto3_optional for f in descriptor.field)]
                self.assertEqual(list(message.oneofs), real_oneofs, message.full_name)
                self.assertEqual(len(message.fields), len(descriptor.field), message.full_name)
                for index, (field, theirs_field) in enumerate(zip(message.fields, descriptor.field)):
                    where = f"{message.full_name}.{field.name}"
                    self.assertEqual((field.name, field.number), (theirs_field.name, theirs_field.number), where)
                    self.assertEqual(normalize(field.comment), comments.get(path + (2, index), ""), where)
                    type_name = theirs_field.type_name.lstrip(".")
                    if type_name.split(".")[-1] in maps and theirs_field.label == field_proto.LABEL_REPEATED:
                        entry = maps[type_name.split(".")[-1]]
                        key, value = entry.field
                        self.assertEqual(field.key_type, scalar_names[key.type], where)
                        expected_value = value.type_name.lstrip(".") or scalar_names[value.type]
                        self.assertEqual(field.resolved or field.type, expected_value, where)
                        self.assertEqual(field.label, "", where)
                    else:
                        self.assertEqual(field.key_type, "", where)
                        self.assertEqual(field.resolved or field.type, type_name or scalar_names[theirs_field.type],
                                         where)
                        expected_label = ("repeated" if theirs_field.label == field_proto.LABEL_REPEATED
                                          else "optional" if theirs_field.proto3_optional else "")
                        self.assertEqual(field.label, expected_label, where)
                    in_oneof = theirs_field.HasField("oneof_index") and not theirs_field.proto3_optional
                    expected_oneof = descriptor.oneof_decl[theirs_field.oneof_index].name if in_oneof else ""
                    self.assertEqual(field.oneof, expected_oneof, where)
                    checked += 1
                nested = [n for n in descriptor.nested_type if not n.options.map_entry]
                self.assertEqual([m.name for m in message.messages], [n.name for n in nested], message.full_name)
                for index, (child, child_descriptor) in enumerate(zip(message.messages, nested)):
                    compare_message(child, child_descriptor,
                                    path + (3, list(descriptor.nested_type).index(child_descriptor)))
                for index, (enum, enum_descriptor) in enumerate(zip(message.enums, descriptor.enum_type)):
                    compare_enum(enum, enum_descriptor, path + (4, index))

            def compare_enum(enum, descriptor, path):
                self.assertEqual(enum.name, descriptor.name)
                self.assertEqual(normalize(enum.comment), comments.get(path, ""), enum.full_name)
                self.assertEqual([(v.name, v.number) for v in enum.values],
                                 [(v.name, v.number) for v in descriptor.value], enum.full_name)
                for index, value in enumerate(enum.values):
                    self.assertEqual(normalize(value.comment), comments.get(path + (2, index), ""), value.name)

            self.assertEqual([m.name for m in ours.messages], [m.name for m in theirs.message_type])
            for index, (message, descriptor) in enumerate(zip(ours.messages, theirs.message_type)):
                compare_message(message, descriptor, (4, index))
            self.assertEqual([e.name for e in ours.enums], [e.name for e in theirs.enum_type])
            for index, (enum, descriptor) in enumerate(zip(ours.enums, theirs.enum_type)):
                compare_enum(enum, descriptor, (5, index))
            self.assertEqual([s.name for s in ours.services], [s.name for s in theirs.service])
            for index, (service, descriptor) in enumerate(zip(ours.services, theirs.service)):
                self.assertEqual(normalize(service.comment), comments.get((6, index), ""), service.name)
                self.assertEqual([r.name for r in service.rpcs], [m.name for m in descriptor.method])
                for rpc_index, (rpc, method) in enumerate(zip(service.rpcs, descriptor.method)):
                    where = f"{service.name}.{rpc.name}"
                    self.assertEqual((rpc.resolved_request, rpc.resolved_response),
                                     (method.input_type.lstrip("."), method.output_type.lstrip(".")), where)
                    self.assertEqual((rpc.client_streaming, rpc.server_streaming),
                                     (method.client_streaming, method.server_streaming), where)
                    self.assertEqual(normalize(rpc.comment), comments.get((6, index, 2, rpc_index), ""), where)
        self.assertGreater(checked, 100, "the comparison looked at too few fields to mean anything")


if __name__ == "__main__":
    unittest.main(verbosity=2)
