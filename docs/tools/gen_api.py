#!/usr/bin/env python3
"""Generates docs/api.md, the gRPC API reference, from the .proto files in proto/.

    python3 docs/tools/gen_api.py           # writes docs/api.md
    python3 docs/tools/gen_api.py --check   # exits 1 if docs/api.md is not what the protos generate
    python3 docs/tools/gen_api.py --stdout  # prints the reference instead of writing it

Only the standard library is used. The parser reads the proto3 subset hookrelay's files use, and a bit more:
packages, imports, options (skipped), services with unary and streaming rpcs, messages (nested ones too) with
scalar, message, enum, `repeated`, `optional` and `map<K, V>` fields, `oneof` blocks, `reserved` statements, enums,
and the comments written directly above a declaration (as protoc attaches them: a blank line detaches a comment) or
after it on the same line. Anything else is a parse error with the file and line, so a construct it does not know
fails the check instead of vanishing from the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
OUTPUT = ROOT / "docs" / "api.md"

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}
# Well-known types: documented by the protobuf project, linked rather than described here.
WELL_KNOWN = {
    "google.protobuf.Timestamp": "https://protobuf.dev/reference/protobuf/google.protobuf/#timestamp",
    "google.protobuf.Duration": "https://protobuf.dev/reference/protobuf/google.protobuf/#duration",
    "google.protobuf.Empty": "https://protobuf.dev/reference/protobuf/google.protobuf/#empty",
    "google.protobuf.Struct": "https://protobuf.dev/reference/protobuf/google.protobuf/#struct",
    "google.protobuf.Any": "https://protobuf.dev/reference/protobuf/google.protobuf/#any",
}


class ProtoError(Exception):
    """A construct the parser does not understand, with where it is."""


# ---------------------------------------------------------------------------------------------------------------
# Model


@dataclasses.dataclass
class Field:
    name: str
    number: int
    type: str  # as written; for maps the value type
    label: str = ""  # "", "repeated" or "optional"
    key_type: str = ""  # set for map fields
    oneof: str = ""
    comment: str = ""
    resolved: str = ""  # fully qualified type name, or "" for scalars
    resolved_key: str = ""


@dataclasses.dataclass
class EnumValue:
    name: str
    number: int
    comment: str = ""


@dataclasses.dataclass
class Enum:
    name: str
    full_name: str
    file: str
    comment: str = ""
    values: list[EnumValue] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Message:
    name: str
    full_name: str
    file: str
    comment: str = ""
    fields: list[Field] = dataclasses.field(default_factory=list)
    oneofs: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> comment, in order
    messages: list["Message"] = dataclasses.field(default_factory=list)
    enums: list[Enum] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Rpc:
    name: str
    request: str
    response: str
    client_streaming: bool = False
    server_streaming: bool = False
    comment: str = ""
    resolved_request: str = ""
    resolved_response: str = ""


@dataclasses.dataclass
class Service:
    name: str
    full_name: str
    file: str
    comment: str = ""
    rpcs: list[Rpc] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ProtoFile:
    path: str  # relative to PROTO_ROOT, e.g. hookrelay/v1/admin.proto
    package: str = ""
    syntax: str = ""
    imports: list[str] = dataclasses.field(default_factory=list)
    comment: str = ""
    services: list[Service] = dataclasses.field(default_factory=list)
    messages: list[Message] = dataclasses.field(default_factory=list)
    enums: list[Enum] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Lexer


@dataclasses.dataclass
class Token:
    kind: str  # "ident", "int", "string", "punct", "comment"
    text: str
    line: int
    end_line: int
    pos: int = 0  # index in the file's full token stream, comments included


TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?))
  | (?P<ident>\.?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<punct>[{}()\[\];=<>,:])
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(text: str, path: str) -> list[Token]:
    tokens: list[Token] = []
    line = 1
    position = 0
    while position < len(text):
        match = TOKEN_RE.match(text, position)
        if not match:
            raise ProtoError(f"{path}:{line}: unexpected character {text[position]!r}")
        kind = match.lastgroup
        value = match.group()
        newlines = value.count("\n")
        if kind == "line_comment" or kind == "block_comment":
            tokens.append(Token("comment", value, line, line + newlines))
        elif kind == "string":
            tokens.append(Token("string", value, line, line))
        elif kind == "number":
            tokens.append(Token("int", value, line, line))
        elif kind == "ident":
            tokens.append(Token("ident", value, line, line))
        elif kind == "punct":
            tokens.append(Token("punct", value, line, line))
        line += newlines
        position = match.end()
    for index, token in enumerate(tokens):
        token.pos = index
    return tokens


def comment_text(raw: str) -> list[str]:
    """The lines of one comment token without its markers, keeping relative indentation."""
    if raw.startswith("//"):
        body = raw[2:]
        return [body[1:] if body.startswith(" ") else body]
    inner = raw[2:-2]
    lines = []
    for part in inner.split("\n"):
        part = part.strip()
        if part.startswith("*"):
            part = part[1:]
            part = part[1:] if part.startswith(" ") else part
        lines.append(part)
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Parser


class Parser:
    """Recursive descent over the tokens of one file. Comments are kept aside, keyed by line, and attached to the
    declaration that follows them directly (leading) or that ends on their line (trailing)."""

    def __init__(self, text: str, path: str):
        self.path = path
        self.all = tokenize(text, path)
        self.tokens = [token for token in self.all if token.kind != "comment"]
        self.index = 0
        self.used_comments: set[int] = set()

    # -- token helpers

    def peek(self, offset: int = 0) -> Token | None:
        position = self.index + offset
        return self.tokens[position] if position < len(self.tokens) else None

    def error(self, message: str, token: Token | None = None) -> ProtoError:
        token = token or self.peek()
        line = token.line if token else (self.tokens[-1].line if self.tokens else 1)
        return ProtoError(f"{self.path}:{line}: {message}")

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of file")
        self.index += 1
        return token

    def expect(self, text: str) -> Token:
        token = self.next()
        if token.text != text:
            raise self.error(f"expected {text!r}, found {token.text!r}", token)
        return token

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.text == text:
            self.index += 1
            return True
        return False

    def ident(self) -> Token:
        token = self.next()
        if token.kind != "ident":
            raise self.error(f"expected a name, found {token.text!r}", token)
        return token

    def integer(self) -> int:
        token = self.next()
        if token.kind != "int":
            raise self.error(f"expected a number, found {token.text!r}", token)
        try:
            return int(token.text, 0)
        except ValueError as error:
            raise self.error(f"bad number {token.text!r}", token) from error

    # -- comments

    def leading_comment(self, first: Token) -> str:
        """The comments directly above `first`: consecutive lines ending on the line before it. A comment that starts
        on the line of earlier code is that code's trailing comment, and a blank line detaches a comment, as in
        protoc."""
        block: list[Token] = []
        expected_end = first.line - 1
        position = first.pos - 1
        while position >= 0:
            comment = self.all[position]
            if comment.kind != "comment" or comment.end_line != expected_end or comment.pos in self.used_comments:
                break
            before = self.all[position - 1] if position > 0 else None
            if before is not None and before.kind != "comment" and before.end_line == comment.line:
                break
            block.insert(0, comment)
            expected_end = comment.line - 1
            position -= 1
        lines: list[str] = []
        for comment in block:
            self.used_comments.add(comment.pos)
            lines.extend(comment_text(comment.text))
        return "\n".join(lines).strip("\n")

    def trailing_comment(self, last: Token) -> str:
        """A comment that starts on the line where a declaration ends, after it."""
        position = last.pos + 1
        if position < len(self.all):
            comment = self.all[position]
            if comment.kind == "comment" and comment.line == last.end_line:
                self.used_comments.add(comment.pos)
                return "\n".join(comment_text(comment.text)).strip()
        return ""

    def combine(self, leading: str, trailing: str) -> str:
        return "\n".join(part for part in (leading, trailing) if part)

    # -- grammar

    def parse(self) -> ProtoFile:
        proto = ProtoFile(path=self.path)
        first = self.peek()
        while self.peek() is not None:
            token = self.peek()
            assert token is not None
            if token.text == "syntax" or token.text == "edition":
                self.next()
                self.expect("=")
                value = self.next()
                proto.syntax = value.text.strip("\"'")
                self.expect(";")
                if token is first:
                    proto.comment = self.leading_comment(token)
            elif token.text == "package":
                self.next()
                proto.package = self.ident().text
                self.expect(";")
            elif token.text == "import":
                self.next()
                if self.peek() is not None and self.peek().text in ("public", "weak"):
                    self.next()
                value = self.next()
                if value.kind != "string":
                    raise self.error("expected the imported file's name", value)
                proto.imports.append(value.text.strip("\"'"))
                self.expect(";")
            elif token.text == "option":
                self.skip_option()
            elif token.text == "service":
                proto.services.append(self.service(proto))
            elif token.text == "message":
                proto.messages.append(self.message(proto, proto.package))
            elif token.text == "enum":
                proto.enums.append(self.enum(proto, proto.package))
            elif token.text == ";":
                self.next()
            else:
                raise self.error(f"unexpected {token.text!r} at the top level", token)
        if proto.syntax not in ("proto3", ""):
            raise self.error(f"only proto3 is supported, this file is {proto.syntax!r}", first)
        return proto

    def skip_option(self) -> None:
        """`option name = constant;` where the constant may be an aggregate `{ ... }`."""
        self.expect("option")
        depth = 0
        while True:
            token = self.next()
            if token.text == "{":
                depth += 1
            elif token.text == "}":
                depth -= 1
            elif token.text == ";" and depth == 0:
                return

    def skip_brackets(self) -> None:
        """Field options `[ ... ]`."""
        if not self.accept("["):
            return
        depth = 1
        while depth:
            token = self.next()
            if token.text == "[":
                depth += 1
            elif token.text == "]":
                depth -= 1

    def skip_statement(self) -> None:
        while self.next().text != ";":
            pass

    def service(self, proto: ProtoFile) -> Service:
        keyword = self.expect("service")
        comment = self.leading_comment(keyword)
        name = self.ident().text
        service = Service(name, qualify(proto.package, name), proto.path, comment)
        self.expect("{")
        while not self.accept("}"):
            token = self.peek()
            if token is None:
                raise self.error("unterminated service")
            if token.text == "rpc":
                service.rpcs.append(self.rpc())
            elif token.text == "option":
                self.skip_option()
            elif token.text == ";":
                self.next()
            else:
                raise self.error(f"unexpected {token.text!r} in service {name}", token)
        return service

    def rpc(self) -> Rpc:
        keyword = self.expect("rpc")
        leading = self.leading_comment(keyword)
        name = self.ident().text
        self.expect("(")
        client_streaming = self.accept("stream")
        request = self.ident().text
        self.expect(")")
        self.expect("returns")
        self.expect("(")
        server_streaming = self.accept("stream")
        response = self.ident().text
        self.expect(")")
        if self.accept("{"):
            while not self.accept("}"):
                token = self.peek()
                if token is not None and token.text == "option":
                    self.skip_option()
                elif token is not None and token.text == ";":
                    self.next()
                else:
                    raise self.error("only options may appear in an rpc body", token)
            last = self.tokens[self.index - 1]
            self.accept(";")
        else:
            last = self.expect(";")
        trailing = self.trailing_comment(last)
        return Rpc(name, request, response, client_streaming, server_streaming, self.combine(leading, trailing))

    def message(self, proto: ProtoFile, scope: str) -> Message:
        keyword = self.expect("message")
        comment = self.leading_comment(keyword)
        name = self.ident().text
        message = Message(name, qualify(scope, name), proto.path, comment)
        self.expect("{")
        self.message_body(proto, message)
        return message

    def message_body(self, proto: ProtoFile, message: Message, oneof: str = "") -> None:
        while not self.accept("}"):
            token = self.peek()
            if token is None:
                raise self.error(f"unterminated message {message.name}")
            text = token.text
            if text == "message" and not oneof:
                message.messages.append(self.message(proto, message.full_name))
            elif text == "enum" and not oneof:
                message.enums.append(self.enum(proto, message.full_name))
            elif text == "oneof" and not oneof:
                keyword = self.next()
                comment = self.leading_comment(keyword)
                oneof_name = self.ident().text
                message.oneofs[oneof_name] = comment
                self.expect("{")
                self.message_body(proto, message, oneof=oneof_name)
            elif text == "option":
                self.skip_option()
            elif text in ("reserved", "extensions") and not oneof:
                self.skip_statement()
            elif text == "extend" or text == "group":
                raise self.error(f"{text!r} is not supported (proto2 only)", token)
            elif text == ";":
                self.next()
            else:
                message.fields.append(self.field(oneof))

    def field(self, oneof: str) -> Field:
        first = self.peek()
        assert first is not None
        leading = self.leading_comment(first)
        label = ""
        if first.text in ("repeated", "optional") and not oneof:
            label = self.next().text
        elif first.text == "required":
            raise self.error("'required' is not proto3", first)
        key_type = ""
        if self.peek() is not None and self.peek().text == "map" and self.peek(1) is not None and self.peek(1).text == "<":
            if label:
                raise self.error("map fields cannot be repeated or optional", first)
            self.next()
            self.expect("<")
            key_type = self.ident().text
            self.expect(",")
            value_type = self.ident().text
            self.expect(">")
            type_name = value_type
        else:
            type_name = self.ident().text
        name = self.ident().text
        self.expect("=")
        number = self.integer()
        self.skip_brackets()
        last = self.expect(";")
        trailing = self.trailing_comment(last)
        return Field(name, number, type_name, label, key_type, oneof, self.combine(leading, trailing))

    def enum(self, proto: ProtoFile, scope: str) -> Enum:
        keyword = self.expect("enum")
        comment = self.leading_comment(keyword)
        name = self.ident().text
        enum = Enum(name, qualify(scope, name), proto.path, comment)
        self.expect("{")
        while not self.accept("}"):
            token = self.peek()
            if token is None:
                raise self.error(f"unterminated enum {name}")
            if token.text == "option":
                self.skip_option()
            elif token.text == "reserved":
                self.skip_statement()
            elif token.text == ";":
                self.next()
            else:
                leading = self.leading_comment(token)
                value_name = self.ident().text
                self.expect("=")
                number = self.integer()
                self.skip_brackets()
                last = self.expect(";")
                trailing = self.trailing_comment(last)
                enum.values.append(EnumValue(value_name, number, self.combine(leading, trailing)))
        return enum


def parse_file(text: str, path: str) -> ProtoFile:
    parser = Parser(text, path)
    return parser.parse()


def qualify(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


# ---------------------------------------------------------------------------------------------------------------
# Resolution


def all_messages(messages: list[Message]):
    for message in messages:
        yield message
        yield from all_messages(message.messages)


def all_enums(proto: ProtoFile):
    yield from proto.enums
    for message in all_messages(proto.messages):
        yield from message.enums


class Schema:
    """Every file, with type references resolved to fully qualified names."""

    def __init__(self, files: list[ProtoFile]):
        self.files = files
        self.messages: dict[str, Message] = {}
        self.enums: dict[str, Enum] = {}
        for proto in files:
            for message in all_messages(proto.messages):
                self.define(message.full_name, proto.path)
                self.messages[message.full_name] = message
            for enum in all_enums(proto):
                self.define(enum.full_name, proto.path)
                self.enums[enum.full_name] = enum
        self.services = [service for proto in files for service in proto.services]
        for proto in files:
            for message in all_messages(proto.messages):
                for field in message.fields:
                    if field.type not in SCALARS:
                        field.resolved = self.resolve(field.type, message.full_name, proto.path)
                    if field.key_type:
                        if field.key_type not in SCALARS or field.key_type in ("double", "float", "bytes"):
                            raise ProtoError(f"{proto.path}: map key type {field.key_type} is not allowed")
            for service in proto.services:
                for rpc in service.rpcs:
                    rpc.resolved_request = self.resolve(rpc.request, proto.package, proto.path)
                    rpc.resolved_response = self.resolve(rpc.response, proto.package, proto.path)
                    for resolved, written in ((rpc.resolved_request, rpc.request), (rpc.resolved_response, rpc.response)):
                        if resolved not in self.messages and resolved not in WELL_KNOWN:
                            raise ProtoError(f"{proto.path}: rpc {rpc.name} uses {written}, which is not a message")

    _defined: dict[str, str]

    def define(self, full_name: str, path: str) -> None:
        defined = self.__dict__.setdefault("_defined", {})
        if full_name in defined:
            raise ProtoError(f"{path}: {full_name} is already defined in {defined[full_name]}")
        defined[full_name] = path

    def resolve(self, name: str, scope: str, path: str) -> str:
        """protobuf's scoping rule: look the name up in the innermost scope first, then each enclosing one."""
        if name.startswith("."):
            candidates = [name[1:]]
        else:
            parts = scope.split(".") if scope else []
            candidates = [".".join(parts[:length] + [name]) for length in range(len(parts), -1, -1)]
        for candidate in candidates:
            if candidate in self.messages or candidate in self.enums or candidate in WELL_KNOWN:
                return candidate
        raise ProtoError(f"{path}: type {name} (used in {scope}) is not defined in these files")

    def usages(self, short) -> dict[str, list[str]]:
        """For each message and enum, the rpcs and fields that use it, as markdown links; `short` names a type."""
        used: dict[str, list[str]] = {}
        for service in self.services:
            for rpc in service.rpcs:
                reference = f"[{service.name}.{rpc.name}](#{anchor(short(service.full_name))})"
                for target, role in ((rpc.resolved_request, "request"), (rpc.resolved_response, "response")):
                    entry = f"{reference} ({role})"
                    if entry not in used.setdefault(target, []):
                        used[target].append(entry)
        for message in self.messages.values():
            name = short(message.full_name)
            for field in message.fields:
                if field.resolved:
                    entry = f"[{name}](#{anchor(name)}).`{field.name}`"
                    if entry not in used.setdefault(field.resolved, []):
                        used[field.resolved].append(entry)
        return used


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def anchor(name: str) -> str:
    """GitHub's heading anchor for a heading whose text is `name` (letters, digits, '_', '-' kept; lowercased)."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower().replace(" ", "-"))


def cell(text: str) -> str:
    """A comment as one table cell: paragraphs kept apart with <br>, pipes escaped."""
    paragraphs = [" ".join(part.split()) for part in re.split(r"\n\s*\n", text.strip())]
    return "<br>".join(paragraph.replace("|", "\\|") for paragraph in paragraphs if paragraph)


def prose(text: str) -> str:
    """A comment as markdown paragraphs: lines of one paragraph joined."""
    paragraphs = [" ".join(part.split()) for part in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


class Renderer:
    def __init__(self, schema: Schema):
        self.schema = schema
        self.used = schema.usages(self.short)
        names: dict[str, str] = {}
        for full_name in list(schema.messages) + list(schema.enums) + [s.full_name for s in schema.services]:
            short = self.short(full_name)
            if anchor(short) in names:
                raise ProtoError(f"{full_name} and {names[anchor(short)]} would share the anchor #{anchor(short)}")
            names[anchor(short)] = full_name

    def short(self, full_name: str) -> str:
        """The name a reader sees: relative to the package, nested names dotted (`Outer.Inner`)."""
        for proto in self.schema.files:
            prefix = proto.package + "."
            if proto.package and full_name.startswith(prefix):
                return full_name[len(prefix):]
        return full_name

    def type_link(self, resolved: str, written: str) -> str:
        if not resolved:
            return f"`{written}`"
        if resolved in WELL_KNOWN:
            return f"[`{resolved}`]({WELL_KNOWN[resolved]})"
        short = self.short(resolved)
        return f"[`{short}`](#{anchor(short)})"

    def field_type(self, field: Field) -> str:
        value = self.type_link(field.resolved, field.type)
        if field.key_type:
            return f"map<`{field.key_type}`, {value}>"
        if field.label:
            return f"{field.label} {value}"
        return value

    def render(self) -> str:
        out: list[str] = []
        files = self.schema.files
        packages = sorted({proto.package for proto in files})
        out.append("<!-- Generated by docs/tools/gen_api.py from proto/; do not edit by hand. -->")
        out.append("<!-- Regenerate: python3 docs/tools/gen_api.py   Check: python3 docs/tools/gen_api.py --check -->")
        out.append("")
        out.append("# gRPC API reference")
        out.append("")
        out.append(
            f"Package `{'`, `'.join(packages)}`, from "
            + ", ".join(f"`proto/{proto.path}`" for proto in files)
            + ". Every message, field and enum below is described by the comment above it in the .proto file; "
            "where a field has no description, its name is all there is to say."
        )
        out.append("")
        out.append(
            "Which process serves what: **control** (`hookrelay-control`, `--listen`, default `127.0.0.1:7100`) "
            "serves `AdminService` and `AgentService`; the **agent** (`hookrelay-agent`, `--listen`, default "
            "`127.0.0.1:7200`) serves `EmitService`, and `POST /v1/events` on the same port. Transport, "
            "authentication and the JSON emit route are described in the [operating guide](operating.md#network-and-api-access); "
            "the `hookrelay` CLI calls every `AdminService` RPC and `Emit`."
        )
        out.append("")
        out.append(
            "Conventions: proto3, so an unset scalar reads as its zero value (`0`, `\"\"`, `false`), and a comment "
            "says where zero means \"the default\". `optional` fields and message-typed fields can tell unset from "
            "zero; update calls use that: what is unset keeps its value. Errors are gRPC statuses with a message "
            "that names the field or the object concerned."
        )
        out.append("")
        out.append("## Contents")
        out.append("")
        out.append("- Services: " + ", ".join(f"[{s.name}](#{anchor(s.name)})" for s in self.schema.services))
        messages = [m for proto in files for m in all_messages(proto.messages)]
        enums = [e for proto in files for e in all_enums(proto)]
        out.append("- Messages: " + ", ".join(f"[{self.short(m.full_name)}](#{anchor(self.short(m.full_name))})" for m in messages))
        out.append("- Enums: " + ", ".join(f"[{self.short(e.full_name)}](#{anchor(self.short(e.full_name))})" for e in enums))
        out.append("")
        out.append("## Services")
        for service in self.schema.services:
            out.extend(self.service(service))
        for proto in files:
            proto_messages = list(all_messages(proto.messages))
            proto_enums = list(all_enums(proto))
            if not proto_messages and not proto_enums:
                continue
            out.append("")
            out.append(f"## Messages and enums of `{proto.path}`")
            for message in proto_messages:
                out.extend(self.message(message))
            for enum in proto_enums:
                out.extend(self.enum(enum))
        out.append("")
        return "\n".join(out)

    def service(self, service: Service) -> list[str]:
        out = ["", f"### {service.name}", ""]
        out.append(f"`{service.full_name}`, defined in `proto/{service.file}`.")
        if service.comment:
            out += ["", prose(service.comment)]
        out += ["", "| RPC | Request | Response | Description |", "| --- | --- | --- | --- |"]
        for rpc in service.rpcs:
            request = self.type_link(rpc.resolved_request, rpc.request)
            response = self.type_link(rpc.resolved_response, rpc.response)
            if rpc.client_streaming:
                request = "stream " + request
            if rpc.server_streaming:
                response = "stream " + response
            out.append(f"| `{rpc.name}` | {request} | {response} | {cell(rpc.comment)} |")
        return out

    def message(self, message: Message) -> list[str]:
        short = self.short(message.full_name)
        out = ["", f"### {short}", ""]
        if message.comment:
            out += [prose(message.comment), ""]
        if message.fields:
            out += ["| Field | Number | Type | Description |", "| --- | --- | --- | --- |"]
            for field in message.fields:
                description = cell(field.comment)
                if field.oneof:
                    description = f"*oneof `{field.oneof}`.* {description}".rstrip()
                out.append(f"| `{field.name}` | {field.number} | {self.field_type(field)} | {description} |")
        else:
            out.append("No fields.")
        for oneof, comment in message.oneofs.items():
            members = [f"`{field.name}`" for field in message.fields if field.oneof == oneof]
            line = f"At most one of {', '.join(members)} is set (oneof `{oneof}`)."
            if comment:
                line += " " + prose(comment)
            out += ["", line]
        used = self.used.get(message.full_name)
        if used:
            out += ["", "Used by: " + ", ".join(used) + "."]
        return out

    def enum(self, enum: Enum) -> list[str]:
        short = self.short(enum.full_name)
        out = ["", f"### {short}", ""]
        if enum.comment:
            out += [prose(enum.comment), ""]
        out += ["| Value | Number | Description |", "| --- | --- | --- |"]
        for value in enum.values:
            out.append(f"| `{value.name}` | {value.number} | {cell(value.comment)} |")
        used = self.used.get(enum.full_name)
        if used:
            out += ["", "Used by: " + ", ".join(used) + "."]
        return out


# ---------------------------------------------------------------------------------------------------------------


def load(proto_root: pathlib.Path) -> Schema:
    paths = sorted(proto_root.rglob("*.proto"))
    if not paths:
        raise ProtoError(f"no .proto files under {proto_root}")
    files = [parse_file(path.read_text(encoding="utf-8"), path.relative_to(proto_root).as_posix()) for path in paths]
    return Schema(files)


def generate(proto_root: pathlib.Path = PROTO_ROOT) -> str:
    return Renderer(load(proto_root)).render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if the reference file is stale")
    mode.add_argument("--stdout", action="store_true", help="print the reference instead of writing it")
    parser.add_argument("--proto-root", type=pathlib.Path, default=PROTO_ROOT)
    parser.add_argument("--output", type=pathlib.Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        text = generate(args.proto_root)
    except ProtoError as error:
        print(f"gen_api: {error}", file=sys.stderr)
        return 2
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current == text:
            print(f"gen_api: {display(args.output)} is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=f"{display(args.output)} (committed)", tofile=f"{display(args.output)} (from the protos)",
        )
        sys.stderr.writelines(list(diff)[:80])
        print(
            f"\ngen_api: {display(args.output)} is stale: run `python3 docs/tools/gen_api.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    args.output.write_text(text, encoding="utf-8")
    print(f"gen_api: wrote {display(args.output)}")
    return 0


def display(path: pathlib.Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
