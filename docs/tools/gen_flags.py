#!/usr/bin/env python3
"""Writes the flag tables of docs/operating.md from the `--help` output of the built binaries.

    cargo build -p hookrelay-control -p hookrelay-agent
    python3 docs/tools/gen_flags.py           # rewrites the generated blocks of docs/operating.md
    python3 docs/tools/gen_flags.py --check   # exits 1 if a block differs from what the binaries say

Each table sits between `<!-- BEGIN GENERATED: flags BINARY -->` and `<!-- END GENERATED: flags BINARY -->`; the
prose around them is written by hand. The parser reads clap's help layout in both its forms (description on the
flag's line, or on the lines below it), with the `[env: NAME=]`, `[default: VALUE]` and possible-values notes clap
adds. Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operating.md"
BINARIES = ("hookrelay-control", "hookrelay-agent", "hookrelay")
# Options of every clap program that configure nothing.
SKIPPED = {"--help", "--version"}

ENTRY_RE = re.compile(r"^ {2,}(?:(?P<short>-[A-Za-z0-9]), )?(?P<long>--[A-Za-z0-9][A-Za-z0-9-]*)"
                      r"(?: <(?P<value>[^>]+)>)?(?: {2,}(?P<rest>\S.*))?$")
SECTION_RE = re.compile(r"^(?P<name>[A-Z][A-Za-z ]*):(?:\s.*)?$")
ENV_RE = re.compile(r"\[env: (?P<name>[A-Z0-9_]+)(?:=[^\]]*)?\]")
DEFAULT_RE = re.compile(r"\[default: (?P<value>[^\]]*)\]")
POSSIBLE_RE = re.compile(r"\[possible values: (?P<values>[^\]]*)\]")


@dataclasses.dataclass
class Option:
    flag: str
    short: str
    value: str
    env: str
    default: str
    description: str
    possible: list[str]


def parse_help(text: str) -> list[Option]:
    """The options of every `... options:` section of one `--help` text, in order."""
    options: list[Option] = []
    section = ""
    current: dict | None = None

    def finish() -> None:
        if current is not None:
            options.append(build(current))

    for line in text.splitlines():
        section_match = SECTION_RE.match(line)
        if section_match and not line.startswith(" "):
            finish()
            current = None
            section = section_match.group("name").lower()
            continue
        if "options" not in section:
            continue
        entry = ENTRY_RE.match(line)
        if entry:
            finish()
            current = {
                "short": entry.group("short") or "",
                "long": entry.group("long"),
                "value": entry.group("value") or "",
                "lines": [entry.group("rest") or ""],
            }
        elif current is not None:
            current["lines"].append(line.strip())
    finish()
    return [option for option in options if option.flag not in SKIPPED]


def build(entry: dict) -> Option:
    lines: list[str] = entry["lines"]
    text = "\n".join(lines)
    env = ENV_RE.search(text)
    default = DEFAULT_RE.search(text)
    possible: list[str] = []
    listed = POSSIBLE_RE.search(text)
    if listed:
        possible = [value.strip() for value in listed.group("values").split(",")]
    # The long form lists possible values as "- name: description" lines after "Possible values:".
    prose_lines: list[str] = []
    in_possible = False
    for line in lines:
        if line == "Possible values:":
            in_possible = True
            continue
        if in_possible and line.startswith("- "):
            name, _, description = line[2:].partition(":")
            possible.append(f"{name.strip()} ({' '.join(description.split())})" if description else name.strip())
            continue
        in_possible = False
        prose_lines.append(line)
    description = " ".join(" ".join(prose_lines).split())
    for pattern in (ENV_RE, DEFAULT_RE, POSSIBLE_RE):
        description = pattern.sub("", description)
    description = " ".join(description.split())
    return Option(
        flag=entry["long"],
        short=entry["short"],
        value=entry["value"],
        env=env.group("name") if env else "",
        default=default.group("value") if default else "",
        description=description,
        possible=possible,
    )


def escape(text: str) -> str:
    return text.replace("|", "\\|")


def table(options: list[Option]) -> str:
    rows = ["| Flag | Environment variable | Default | Description |", "| --- | --- | --- | --- |"]
    for option in options:
        flag = f"`{option.flag} <{option.value}>`" if option.value else f"`{option.flag}`"
        if option.short:
            flag = f"`{option.short}`, {flag}"
        env = f"`{option.env}`" if option.env else ""
        default = f"`{option.default}`" if option.default else "none"
        description = option.description
        if description and description[-1] not in ".!?":
            description += "."
        if option.possible:
            description += " Values: " + "; ".join(option.possible) + "."
        rows.append(f"| {flag} | {env} | {default} | {escape(description)} |")
    return "\n".join(rows)


def help_text(binary: pathlib.Path) -> str:
    if not binary.exists():
        raise SystemExit(f"gen_flags: {binary} is missing: run `cargo build -p hookrelay-control -p hookrelay-agent`")
    # A clean environment: the [env: NAME=value] notes would otherwise show this shell's values.
    result = subprocess.run([str(binary), "--help"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                            check=True)
    return result.stdout


def render(document: str, tables: dict[str, str]) -> str:
    for name, body in tables.items():
        begin = f"<!-- BEGIN GENERATED: flags {name} -->"
        end = f"<!-- END GENERATED: flags {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(document):
            raise SystemExit(f"gen_flags: {DOC.relative_to(ROOT)} has no block for {name} ({begin} ... {end})")
        document = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", document)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/operating.md's tables are stale")
    parser.add_argument("--bin-dir", type=pathlib.Path, default=ROOT / "target" / "debug")
    parser.add_argument("--doc", type=pathlib.Path, default=DOC)
    args = parser.parse_args(argv)
    tables = {name: table(parse_help(help_text(args.bin_dir / name))) for name in BINARIES}
    current = args.doc.read_text(encoding="utf-8")
    updated = render(current, tables)
    if args.check:
        if updated == current:
            print(f"gen_flags: the flag tables of {args.doc.name} match the binaries")
            return 0
        sys.stderr.writelines(difflib.unified_diff(current.splitlines(keepends=True), updated.splitlines(keepends=True),
                                                   fromfile=f"{args.doc.name} (committed)",
                                                   tofile=f"{args.doc.name} (from --help)"))
        print(f"gen_flags: the flag tables of {args.doc.name} are stale: run `python3 docs/tools/gen_flags.py`",
              file=sys.stderr)
        return 1
    if updated != current:
        args.doc.write_text(updated, encoding="utf-8")
        print(f"gen_flags: updated {args.doc.name}")
    else:
        print(f"gen_flags: {args.doc.name} already matches the binaries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
