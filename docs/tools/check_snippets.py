#!/usr/bin/env python3
"""Checks that the code shown in the docs is the code that is tested.

A fenced code block preceded by `<!-- snippet: PATH -->` (PATH relative to the markdown file) must appear in that
file as consecutive lines, exactly (trailing whitespace aside). Prints one PASS/FAIL line per snippet.

    python3 docs/tools/check_snippets.py [docs/*.md ...]
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- snippet: (?P<path>\S+) -->\s*$")


def blocks(markdown: pathlib.Path):
    lines = markdown.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        marker = MARKER.match(lines[index])
        index += 1
        if not marker:
            continue
        if index >= len(lines) or not lines[index].startswith("```"):
            yield marker.group("path"), index, None
            continue
        start = index + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        yield marker.group("path"), start, lines[start:end]
        index = end + 1


def contains(haystack: list[str], needle: list[str]) -> bool:
    haystack = [line.rstrip() for line in haystack]
    needle = [line.rstrip() for line in needle]
    return any(haystack[i:i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def main(paths: list[str]) -> int:
    markdowns = [pathlib.Path(path) for path in paths] or sorted((ROOT / "docs").glob("*.md"))
    failures = checked = 0
    for markdown in markdowns:
        for path, line, block in blocks(markdown):
            source = (markdown.parent / path).resolve()
            resolved = markdown.resolve()
            where = f"{resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else markdown}:{line}"
            checked += 1
            if block is None:
                print(f"FAIL snippets: {where}: the marker for {path} is not followed by a code block")
            elif not source.exists():
                print(f"FAIL snippets: {where}: {path} does not exist")
            elif not block or not contains(source.read_text(encoding="utf-8").splitlines(), block):
                print(f"FAIL snippets: {where}: this block is not in {path} as written")
            else:
                print(f"PASS snippets: {where}: {len(block)} lines found in {path}")
                continue
            failures += 1
    if checked == 0:
        print("FAIL snippets: no snippet markers found")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
