#!/usr/bin/env python3
"""Checks what the documentation states against the repository and the built binaries.

    cargo build -p hookrelay-control -p hookrelay-agent -p hookrelay-tests --bin hookrelay-bench
    python3 docs/tools/check_docs.py [--bin-dir target/debug]

Prints one PASS/FAIL line per check and exits 1 on any failure. The checks, over every documentation page
(README.md, SECURITY.md, docs/*.md, the chart's README, the comments of its values.yaml and the notes it prints
after an install, the fuzz READMEs):

- commands: every `hookrelay ...`, `hookrelay-control ...`, `hookrelay-agent ...` and `hookrelay-bench ...` shown
  (in a code block or an inline code span) names subcommands that exist, and flags that the (sub)command's
  `--help` lists;
- flags: every other `--flag` named anywhere is a flag of one of those binaries, unless it is shown as an argument
  of another program (cargo, helm, ...) or is one of the flags of this repository's scripts listed in SCRIPT_FLAGS;
- environment variables: every `HOOKRELAY_*` name is in a binary's `--help` or in the repository's code;
- links: every relative link points at a file of the repository, and every `#anchor` at a heading of its page;
- paths: every repository path shown in code (`agent/src/queue/mod.rs`, `docs/examples/`) exists, and every file
  name ending like a source or document file (`*.md`, `*.rs`, ...) is a file of the repository;
- references: nothing points at documents or trackers a reader of the repository does not have (FORBIDDEN);
- exit codes: the codes docs/operating.md lists are those `hookrelay --help` lists;
- metrics: every `hookrelay_agent_*` / `hookrelay_control_*` series a page names is served by that binary, and
  every family it serves is named somewhere, against the /metrics that docs/examples/live.py saved from the
  running binaries in target/docs-live/ (reported, not failed, when it has not run here);
- defaults: a number given as a flag's default in prose (`--cache-mib` (default 16)) is that flag's default;
- the chart: in docs/operating.md, for each of control and agent, the table after
  `<!-- check: chart-flags BINARY -->` names values of charts/hookrelay/values.yaml and exactly the flags the
  chart's templates pass that binary; the paragraph after `<!-- check: not-in-chart BINARY -->` names only flags
  they do not pass; every flag of the binary is in one of the two;
- tested versions: the standardwebhooks versions (and Node's) that docs/receiving-webhooks.md says it was tested
  with are the ones docs/examples pins and the ones the tests recorded in target/tested-versions/ when they last
  passed (docs/examples/check_verify.py and .mjs, and the cargo tests' signature checks, tests/src/python.rs);
  a version not recorded yet (its test did not run here) is reported and not counted as a failure.

Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import shlex
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import gen_flags  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARIES = ("hookrelay", "hookrelay-control", "hookrelay-agent", "hookrelay-bench")
PAGES = ("README.md", "SECURITY.md", "docs/*.md", "charts/hookrelay/README.md", "agent/fuzz/README.md",
         "common/fuzz/README.md")
# YAML files whose comments are documentation.
COMMENTED = ("charts/hookrelay/values.yaml",)
# Text that Helm renders for the user after an install: its indented lines are commands, the others prose; template
# actions are removed.
TEMPLATED = ("charts/hookrelay/templates/NOTES.txt",)
OPERATING = "docs/operating.md"
CHART_TEMPLATES = "charts/hookrelay/templates"
CHART_VALUES = "charts/hookrelay/values.yaml"
RECEIVING = "docs/receiving-webhooks.md"
SCRAPES = "target/docs-live"
METRIC_RE = re.compile(r"\bhookrelay_(?:agent|control)_[a-z0-9_]*[a-z0-9]")
TESTED = "target/tested-versions"
PYTHON_STATEMENT = re.compile(r"`pip install standardwebhooks` \(tested with (?P<library>\d+(?:\.\d+)+)")
NODE_STATEMENT = re.compile(r"`npm install standardwebhooks` \(tested with (?P<library>\d+(?:\.\d+)+) on Node "
                            r"(?P<node>\d+)\b")

# Programs not of this repository: their arguments are not checked.
EXTERNAL = {"cargo", "helm", "npm", "node", "pip", "python3", "python", "go", "curl", "grpcurl", "git", "openssl",
            "head", "kubectl", "rustup", "echo", "jq", "mkdir", "rm", "cp", "cd", "for", "do", "done", "bash",
            "sh", "export", "base64", "kill", "cat", "B", "$B", "RUSTC_BOOTSTRAP=1", "WEBHOOK_SECRET"}
# Flags of this repository's scripts, named in prose; each must still be in its script.
SCRIPT_FLAGS = {
    "--check": ("docs/tools/gen_api.py", "docs/tools/gen_flags.py"),
    "--keep-seeds": ("common/fuzz/pick_corpus.py",),
}
# Flags of external programs that prose names without showing the command.
EXTERNAL_FLAGS = {
    "--release": "cargo", "--workspace": "cargo", "--strict": "helm lint and kubernetes-validate",
    "--set": "helm", "--namespace": "helm", "--create-namespace": "helm",
}
# References to what a reader of this repository does not have.
FORBIDDEN = (
    (re.compile(r"\bDESIGN(?:\.md)?\b"), "the design document, which is not in this repository"),
    (re.compile(r"§\s*\d"), "a section of a document that is not in this repository"),
    (re.compile(r"(?<![\w#/])[Ii]ssues? \d+"), "an issue number of a tracker this repository does not link"),
)
# Extensions of files a document may name; such a name must be a file of the repository.
FILE_RE = re.compile(r"(?<![\w./@-])((?:\.{1,2}/)?[A-Za-z0-9_][\w./-]*\.(?:md|rs|py|mjs|js|sh|proto|toml|tpl|go|json|"
                     r"txt|yaml|yml))\b(?![\w/(])")
# Names that end like a file but are none (a product, a framework's function), and examples of the reader's files.
NOT_FILES = {"Node.js", "express.json", "event.json", "agent.toml"}
# Directories that tools create (git-ignored): shown in the docs, absent from a fresh checkout.
GENERATED = ("target", "node_modules")
# What the checks report without failing, printed after them.
NOTES: list[str] = []
FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
ENV_RE = re.compile(r"\bHOOKRELAY_[A-Z0-9_]*[A-Z0-9]\b")
CODE_SPAN_RE = re.compile(r"(`+)(.+?)\1")
LINK_RE = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
URL_RE = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")


@dataclasses.dataclass
class Command:
    flags: dict[str, bool]  # flag -> takes a value
    subcommands: set[str]


@dataclasses.dataclass
class Page:
    path: pathlib.Path
    text: str
    # Prose lines (code blocks removed) and code: (line number, text).
    prose: list[tuple[int, str]]
    code: list[tuple[int, str]]
    root: pathlib.Path = ROOT

    @property
    def name(self) -> str:
        return str(self.path.relative_to(self.root))


class Results:
    def __init__(self) -> None:
        self.failures = 0
        self.passes = 0

    def check(self, name: str, problems: list[str], checked: int) -> None:
        if problems:
            self.failures += 1
            print(f"FAIL docs-{name}: {len(problems)} problem(s) in {checked} checked")
            for problem in problems:
                print(f"    {problem}")
        else:
            self.passes += 1
            print(f"PASS docs-{name}: {checked} checked")


# ---------------------------------------------------------------------------------------------------------------
# The binaries


OPTION_RE = re.compile(r"^ {2,6}(?:-[A-Za-z0-9], )?(?P<flag>--[A-Za-z0-9][A-Za-z0-9-]*)(?P<value>[ =]<[^>]+>)?")
COMMAND_RE = re.compile(r"^ {2}(?P<name>[a-z][a-z0-9-]*)(?: {2,}|$)")
SECTION_RE = re.compile(r"^(?P<name>[A-Z][A-Za-z ]*):(?:\s.*)?$")


def parse_help(text: str) -> Command:
    """The flags and subcommands of one clap `--help` text."""
    flags: dict[str, bool] = {}
    subcommands: set[str] = set()
    section = ""
    for line in text.splitlines():
        section_match = SECTION_RE.match(line)
        if section_match:
            section = section_match.group("name").lower()
            continue
        if "options" in section:
            option = OPTION_RE.match(line)
            if option:
                flags[option.group("flag")] = option.group("value") is not None
        elif section == "commands":
            command = COMMAND_RE.match(line)
            if command and command.group("name") != "help":
                subcommands.add(command.group("name"))
    return Command(flags, subcommands)


def help_text(binary: pathlib.Path, path: tuple[str, ...]) -> str:
    result = subprocess.run([str(binary), *path, "--help"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, check=True)
    return result.stdout


def load_binaries(bin_dir: pathlib.Path) -> tuple[dict[str, dict[tuple[str, ...], Command]], dict[str, str]]:
    """Every binary's command tree, and each binary's help texts joined (for env names)."""
    trees: dict[str, dict[tuple[str, ...], Command]] = {}
    texts: dict[str, str] = {}
    for name in BINARIES:
        binary = bin_dir / name
        if not binary.exists():
            raise SystemExit(f"check_docs: {binary} is missing: run `cargo build -p hookrelay-control "
                             f"-p hookrelay-agent -p hookrelay-tests --bin hookrelay-bench`")
        tree: dict[tuple[str, ...], Command] = {}
        all_text: list[str] = []
        pending: list[tuple[str, ...]] = [()]
        while pending:
            path = pending.pop()
            text = help_text(binary, path)
            all_text.append(text)
            command = parse_help(text)
            tree[path] = command
            pending.extend(path + (sub,) for sub in sorted(command.subcommands))
        trees[name] = tree
        texts[name] = "\n".join(all_text)
    return trees, texts


# ---------------------------------------------------------------------------------------------------------------
# The pages


def load_page(path: pathlib.Path, root: pathlib.Path = ROOT) -> Page:
    text = path.read_text(encoding="utf-8")
    prose: list[tuple[int, str]] = []
    code: list[tuple[int, str]] = []
    if path.name == "NOTES.txt":
        for number, line in enumerate(text.splitlines(), 1):
            line = re.sub(r"\{\{.*?\}\}", "", line)
            (code if line.startswith(" ") else prose).append((number, line))
        return Page(path, text, prose, code, root)
    if path.suffix in (".yaml", ".yml"):
        # Only the comments are documentation.
        for number, line in enumerate(text.splitlines(), 1):
            if "#" in line:
                prose.append((number, line.split("#", 1)[1]))
        return Page(path, text, prose, code, root)
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        if fence is not None and stripped.startswith(fence):
            fence = None
            continue
        (code if fence is not None else prose).append((number, line))
    return Page(path, text, prose, code, root)


def pages(root: pathlib.Path) -> list[Page]:
    found: list[pathlib.Path] = []
    for pattern in PAGES + COMMENTED + TEMPLATED:
        found.extend(sorted(root.glob(pattern)))
    return [load_page(path, root) for path in found]


def code_spans(line: str) -> list[str]:
    return [match.group(2).strip() for match in CODE_SPAN_RE.finditer(line)]


def shell_lines(code: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Code lines with backslash continuations joined and comments dropped."""
    joined: list[tuple[int, str]] = []
    carry: tuple[int, str] | None = None
    for number, line in code:
        if carry is not None:
            number, line = carry[0], carry[1] + " " + line.strip()
            carry = None
        if line.rstrip().endswith("\\"):
            carry = (number, line.rstrip()[:-1])
            continue
        if line.lstrip().startswith("#"):
            continue
        joined.append((number, line))
    if carry is not None:
        joined.append(carry)
    return joined


def segments(command_line: str) -> list[list[str]]:
    """The simple commands of a shell line, each as tokens (a line that does not tokenise is split on spaces)."""
    result: list[list[str]] = []
    for part in re.split(r"\s*(?:&&|\|\||;|\|(?![^'\"]*['\"][^'\"]*$))\s*", command_line):
        part = re.sub(r"\s#\s.*$", "", part).strip()
        if part.startswith("$ "):
            part = part[2:]
        try:
            tokens = shlex.split(part)
        except ValueError:
            tokens = part.split()
        # Leading VAR=value assignments belong to the shell.
        while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
            tokens.pop(0)
        if tokens:
            result.append(tokens)
    return result


def program_of(token: str) -> str:
    return token.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------------------------
# The checks


@dataclasses.dataclass
class Invocation:
    where: str
    program: str
    tokens: list[str]


def invocations(all_pages: list[Page]) -> tuple[list[Invocation], list[tuple[str, str]]]:
    """Invocations of this repository's binaries, and the remaining text (where, text) for prose checks."""
    found: list[Invocation] = []
    rest: list[tuple[str, str]] = []

    def take(where: str, text: str) -> None:
        for tokens in segments(text):
            program = program_of(tokens[0])
            if program in BINARIES:
                found.append(Invocation(where, program, tokens[1:]))
            elif program == "cargo" and "--bin" in tokens and "--" in tokens:
                binary = tokens[tokens.index("--bin") + 1]
                if binary in BINARIES:
                    found.append(Invocation(where, binary, tokens[tokens.index("--") + 1:]))
            elif program in EXTERNAL or program.endswith((".py", ".sh", ".mjs")):
                continue
            else:
                rest.append((where, " ".join(tokens)))

    for page in all_pages:
        for number, line in shell_lines(page.code):
            take(f"{page.name}:{number}", line)
        for number, line in page.prose:
            where = f"{page.name}:{number}"
            for span in code_spans(line):
                take(where, span)
            rest.append((where, CODE_SPAN_RE.sub(" ", line)))
    return found, rest


def check_invocation(invocation: Invocation, tree: dict[tuple[str, ...], Command]) -> list[str]:
    problems: list[str] = []
    path: tuple[str, ...] = ()
    tokens = list(invocation.tokens)
    label = invocation.program
    while tokens:
        token = tokens.pop(0)
        command = tree[path]
        if token == "--":
            break
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if flag not in command.flags:
                problems.append(f"{invocation.where}: `{' '.join((label,) + path)}` has no {flag}")
            elif command.flags[flag] and "=" not in token and tokens:
                tokens.pop(0)
            continue
        if token.startswith("-") and len(token) == 2:
            # A short flag: -o json, -p crate.
            if tokens:
                tokens.pop(0)
            continue
        if not command.subcommands:
            continue  # a positional value
        if token.startswith(("<", "[", "$")) or token in ("...", "…"):
            break  # a placeholder: nothing more to check
        alternatives = re.split(r"[/|]", token)
        unknown = [name for name in alternatives if name not in command.subcommands]
        if unknown:
            problems.append(f"{invocation.where}: `{' '.join((label,) + path)}` has no subcommand {unknown[0]!r} "
                            f"(it has {', '.join(sorted(command.subcommands))})")
            break
        path = path + (alternatives[0],)
    return problems


def all_flags(trees: dict[str, dict[tuple[str, ...], Command]]) -> set[str]:
    return {flag for tree in trees.values() for command in tree.values() for flag in command.flags}


def check_flags(rest: list[tuple[str, str]], trees, root: pathlib.Path) -> tuple[list[str], int]:
    known = all_flags(trees)
    problems: list[str] = []
    checked = 0
    for flag, scripts in SCRIPT_FLAGS.items():
        for script in scripts:
            if f'"{flag}"' not in (root / script).read_text(encoding="utf-8"):
                problems.append(f"SCRIPT_FLAGS: {script} has no {flag}")
    for where, text in rest:
        for flag in FLAG_RE.findall(URL_RE.sub(" ", text)):
            checked += 1
            if flag not in known and flag not in SCRIPT_FLAGS and flag not in EXTERNAL_FLAGS:
                problems.append(f"{where}: {flag} is not a flag of {', '.join(BINARIES)}")
    return problems, checked


def repo_files(root: pathlib.Path) -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(path.relative_to(root)) for path in root.rglob("*")
                  if path.is_file() and "target" not in path.parts and "node_modules" not in path.parts]
    return [name for name in listed if (root / name).exists()]


def check_env(all_pages: list[Page], texts: dict[str, str], root: pathlib.Path, files: list[str]):
    helps = "\n".join(texts.values())
    code = "\n".join((root / name).read_text(encoding="utf-8", errors="replace") for name in files
                     if name.endswith((".rs", ".sh", ".py", ".yaml", ".tpl")) and not name.startswith("docs/"))
    problems: list[str] = []
    checked = 0
    for page in all_pages:
        for number, line in page.prose + page.code:
            for name in ENV_RE.findall(line):
                checked += 1
                if name not in helps and not re.search(rf"\b{name}\b", code):
                    problems.append(f"{page.name}:{number}: {name} is read by no binary or script")
    return problems, checked


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    page = load_page(path)
    for _, line in page.prose:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = counts.get(base, 0)
            counts[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def check_links(all_pages: list[Page], root: pathlib.Path):
    problems: list[str] = []
    checked = 0
    for page in all_pages:
        for number, line in page.prose:
            for target in LINK_RE.findall(CODE_SPAN_RE.sub(" ", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue
                checked += 1
                where = f"{page.name}:{number}"
                file_part, _, anchor = target.partition("#")
                resolved = (page.path.parent / file_part).resolve() if file_part else page.path
                if not resolved.exists():
                    problems.append(f"{where}: the link {target} points at nothing in the repository")
                    continue
                if not resolved.is_relative_to(root):
                    problems.append(f"{where}: the link {target} leaves the repository")
                    continue
                if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    problems.append(f"{where}: {resolved.relative_to(root)} has no heading for #{anchor}")
    return problems, checked


PATH_SPAN_RE = re.compile(r"^(?:\./|\.\./)*[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+/?$")


def in_repository(name: str, base: pathlib.Path, root: pathlib.Path) -> bool:
    """Whether `name` exists relative to the root, the page's directory or one of the directories between (a
    command shown in a page may run from any of them, e.g. after `cd agent`)."""
    directory = base
    while True:
        if (directory / name).exists():
            return (directory / name).resolve().is_relative_to(root)
        if directory == root or root not in directory.parents:
            return (root / name).exists()
        directory = directory.parent


def check_paths(all_pages: list[Page], root: pathlib.Path, files: list[str]):
    names = {pathlib.PurePosixPath(name).name for name in files}
    problems: list[str] = []
    checked = 0
    top = {path.name for path in root.iterdir()}
    for page in all_pages:
        base = page.path.parent
        prose = set(page.prose)
        for number, line in page.prose + page.code:
            where = f"{page.name}:{number}"
            # Repository paths shown as code.
            for span in code_spans(line) if (number, line) in prose else []:
                if not PATH_SPAN_RE.match(span) or any(part in GENERATED for part in span.split("/")):
                    continue
                first = span.lstrip("./").split("/", 1)[0]
                if first not in top and not (base / first).exists():
                    continue
                checked += 1
                if not in_repository(span, base, root):
                    problems.append(f"{where}: {span} does not exist in the repository")
            # File names in the text: files of the repository.
            for name in FILE_RE.findall(URL_RE.sub(" ", line)):
                if name.startswith("/") or name in NOT_FILES or any(part in GENERATED for part in name.split("/")):
                    continue
                checked += 1
                exists = in_repository(name, base, root) or ("/" not in name and name in names) or any(
                    file.endswith("/" + name.lstrip("./")) for file in files)
                if not exists:
                    problems.append(f"{where}: {name} is not a file of the repository")
    return problems, checked


def check_forbidden(all_pages: list[Page]):
    problems: list[str] = []
    checked = 0
    for page in all_pages:
        for number, line in page.prose + page.code:
            checked += 1
            for pattern, what in FORBIDDEN:
                match = pattern.search(line)
                if match:
                    problems.append(f"{page.name}:{number}: {match.group(0)!r} names {what}")
    return problems, checked


def served_metrics(text: str) -> tuple[set[str], set[str]]:
    """The families (`# TYPE` names) and sample names of an OpenMetrics text."""
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    samples = set(re.findall(r"^([a-z_][a-z0-9_]*)(?:\{| )", text, re.MULTILINE))
    return families, samples


def check_metrics(all_pages: list[Page], root: pathlib.Path):
    problems: list[str] = []
    checked = 0
    named: set[str] = set()
    for binary in ("agent", "control"):
        path = root / SCRAPES / f"metrics-{binary}.txt"
        if not path.exists():
            NOTES.append(f"NOTE docs-metrics: {path.relative_to(root)} is missing (docs/examples/live.py saves it): "
                         f"the hookrelay_{binary}_* names are not checked")
            continue
        families, samples = served_metrics(path.read_text(encoding="utf-8"))
        prefix = f"hookrelay_{binary}_"
        for page in all_pages:
            for number, line in page.prose + page.code:
                for name in METRIC_RE.findall(line):
                    if not name.startswith(prefix):
                        continue
                    checked += 1
                    named.add(name)
                    if name not in families and name not in samples:
                        problems.append(f"{page.name}:{number}: hookrelay-{binary} serves no {name}")
        for family in sorted(families):
            if family.startswith(prefix) and not {family, f"{family}_total"} & named:
                problems.append(f"hookrelay-{binary} serves {family}, which no page names")
    return problems, checked


DEFAULT_RE = re.compile(r"`(--[a-z][a-z0-9-]*)`(?:,| \()\s*\(?default:?\s+`?(\d+)(?![\w:]|\.\d)")


def check_defaults(all_pages: list[Page], texts: dict[str, str]):
    """Numbers stated as a flag's default against the defaults in the binaries' --help."""
    defaults: dict[str, set[str]] = {}
    for text in texts.values():
        for option in gen_flags.parse_help(text):
            if option.default:
                defaults.setdefault(option.flag, set()).add(option.default)
    problems: list[str] = []
    checked = 0
    for page in all_pages:
        for number, line in page.prose:
            for flag, value in DEFAULT_RE.findall(line):
                if flag not in defaults:
                    continue
                checked += 1
                if value not in defaults[flag]:
                    problems.append(f"{page.name}:{number}: says {flag} defaults to {value}; --help says "
                                    f"{' or '.join(sorted(defaults[flag]))}")
    return problems, checked


def exit_codes(text: str) -> set[str]:
    match = re.search(r"Exit codes:(.*?)(?:\n\s*\n|$)", text, re.DOTALL)
    return set(re.findall(r"(?<![\w.])(\d)(?=\s)", match.group(1))) if match else set()


def check_exit_codes(texts: dict[str, str], root: pathlib.Path):
    documented = exit_codes((root / OPERATING).read_text(encoding="utf-8"))
    helped = exit_codes(texts["hookrelay"])
    if not documented or not helped:
        return [f"no `Exit codes:` line in {OPERATING} or `hookrelay --help`"], 1
    if documented != helped:
        return [f"{OPERATING} lists exit codes {sorted(documented)}, `hookrelay --help` {sorted(helped)}"], 1
    return [], 1


def values_paths(values: str) -> set[str]:
    """Dotted key paths of a YAML mapping written one key per line (what values.yaml is)."""
    paths: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in values.splitlines():
        match = re.match(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:\s|$)", line)
        if not match:
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group("key")))
        paths.add(".".join(key for _, key in stack))
    return paths


def chart_flags(root: pathlib.Path) -> dict[str, set[str]]:
    """The flags the chart's templates pass, by the binary of the container (`command: [hookrelay-...]`)."""
    passed: dict[str, set[str]] = {}
    for path in sorted((root / CHART_TEMPLATES).glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        binaries = set(re.findall(r"command:\s*\n\s*-\s*(hookrelay-control|hookrelay-agent)\b", text))
        if len(binaries) > 1:
            raise SystemExit(f"check_docs: {path} runs {sorted(binaries)}: cannot tell whose flags it passes")
        for binary in binaries:
            passed.setdefault(binary, set()).update(re.findall(r"^\s*-\s+(--[a-z][a-z0-9-]*)", text, re.MULTILINE))
    return passed


def marked_blocks(text: str, marker: str) -> dict[str, tuple[int, list[str]]]:
    """By argument: the lines after `<!-- check: MARKER ARGUMENT -->` up to the next blank line."""
    lines = text.splitlines()
    blocks: dict[str, tuple[int, list[str]]] = {}
    for index, line in enumerate(lines):
        match = re.fullmatch(rf"<!-- check: {re.escape(marker)} (\S+) -->", line.strip())
        if match:
            block: list[str] = []
            for following in lines[index + 1:]:
                if not following.strip():
                    break
                block.append(following)
            blocks[match.group(1)] = (index + 1, block)
    return blocks


# Flags that configure nothing a deployment would set.
NOT_DEPLOYED = {"--help", "--version", "--print-config"}
CHART_BINARIES = ("hookrelay-control", "hookrelay-agent")


def check_chart(trees, root: pathlib.Path, text: str | None = None):
    """Per binary: the table lists exactly the flags the chart passes, the not-in-chart list only flags it does not
    pass, and every flag of the binary is in one of them."""
    text = text if text is not None else (root / OPERATING).read_text(encoding="utf-8")
    passed = chart_flags(root)
    values = values_paths((root / CHART_VALUES).read_text(encoding="utf-8"))
    tables = marked_blocks(text, "chart-flags")
    unpassed = marked_blocks(text, "not-in-chart")
    problems: list[str] = []
    checked = 0
    for binary in CHART_BINARIES:
        if binary not in tables or binary not in unpassed:
            problems.append(f"{OPERATING} lacks <!-- check: chart-flags {binary} --> or "
                            f"<!-- check: not-in-chart {binary} -->")
            continue
        flags = set(trees[binary][()].flags)
        chart = passed.get(binary, set())
        listed: set[str] = set()
        line_number, block = tables[binary]
        for offset, row in enumerate(block):
            cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
            if len(cells) < 2 or set(cells[0]) <= set("- "):
                continue
            where = f"{OPERATING}:{line_number + offset + 1}"
            for value in re.findall(r"`([a-zA-Z][\w.*]*)`", cells[0]):
                checked += 1
                if value.removesuffix(".*") not in values:
                    problems.append(f"{where}: {value} is not a value of {CHART_VALUES}")
            for flag in FLAG_RE.findall(cells[1].split(":", 1)[0] if "`--" in cells[1] else ""):
                checked += 1
                listed.add(flag)
                if flag not in chart:
                    problems.append(f"{where}: the chart does not pass {binary} {flag}")
        for flag in sorted(chart - listed):
            problems.append(f"{OPERATING}:{line_number}: the chart passes {binary} {flag}, which the table omits")
        line_number, block = unpassed[binary]
        unlisted = set(FLAG_RE.findall(" ".join(block)))
        for flag in sorted(unlisted):
            checked += 1
            if flag in chart:
                problems.append(f"{OPERATING}:{line_number}: {binary} {flag} is listed as not set by the chart, but "
                                f"the chart passes it")
            if flag not in flags:
                problems.append(f"{OPERATING}:{line_number}: {binary} has no {flag}")
        for flag in sorted(flags - listed - unlisted - NOT_DEPLOYED):
            problems.append(f"{OPERATING}:{line_number}: {binary} {flag} is neither in the chart's table nor in "
                            f"the list of flags the chart does not set")
    return problems, checked


def recorded(root: pathlib.Path, name: str) -> str | None:
    path = root / TESTED / name
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def check_tested_versions(root: pathlib.Path) -> tuple[list[str], int]:
    text = " ".join((root / RECEIVING).read_text(encoding="utf-8").split())
    python = PYTHON_STATEMENT.search(text)
    node = NODE_STATEMENT.search(text)
    if not python or not node:
        return [f"{RECEIVING} no longer says which standardwebhooks versions it was tested with "
                f"({PYTHON_STATEMENT.pattern!r}, {NODE_STATEMENT.pattern!r})"], 0
    problems: list[str] = []
    requirements = (root / "docs/examples/requirements.txt").read_text(encoding="utf-8")
    pin = re.search(r"^standardwebhooks==(\S+)", requirements, re.MULTILINE)
    lock = json.loads((root / "docs/examples/package-lock.json").read_text(encoding="utf-8"))
    locked = lock.get("packages", {}).get("node_modules/standardwebhooks", {}).get("version")
    expected = [
        ("docs/examples/requirements.txt pins", pin.group(1) if pin else None, python.group("library")),
        ("docs/examples/package-lock.json locks", locked, node.group("library")),
    ]
    for name, stated in (("cargo-python-standardwebhooks", python.group("library")),
                         ("docs-python-standardwebhooks", python.group("library")),
                         ("docs-node-standardwebhooks", node.group("library")), ("docs-node", node.group("node"))):
        version = recorded(root, name)
        if version is None:
            NOTES.append(f"NOTE docs-tested-versions: {TESTED}/{name} is not recorded here: its test has not "
                         f"passed on this machine yet, so {stated} is checked against the pins only")
            continue
        if name == "docs-node":
            version = version.split(".")[0]
        expected.append((f"the tests ran with ({TESTED}/{name})", version, stated))
    for source, actual, stated in expected:
        if actual != stated:
            problems.append(f"{RECEIVING} says {stated}, {source} {actual}")
    return problems, len(expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=pathlib.Path, default=ROOT / "target" / "debug")
    args = parser.parse_args(argv)
    trees, texts = load_binaries(args.bin_dir)
    all_pages = pages(ROOT)
    files = repo_files(ROOT)
    results = Results()

    found, rest = invocations(all_pages)
    problems: list[str] = []
    for invocation in found:
        problems.extend(check_invocation(invocation, trees[invocation.program]))
    results.check("commands", problems, len(found))
    results.check("flags", *check_flags(rest, trees, ROOT))
    results.check("env", *check_env(all_pages, texts, ROOT, files))
    results.check("links", *check_links(all_pages, ROOT))
    results.check("paths", *check_paths(all_pages, ROOT, files))
    results.check("references", *check_forbidden(all_pages))
    results.check("exit-codes", *check_exit_codes(texts, ROOT))
    results.check("defaults", *check_defaults(all_pages, texts))
    results.check("metrics", *check_metrics(all_pages, ROOT))
    results.check("chart", *check_chart(trees, ROOT))
    results.check("tested-versions", *check_tested_versions(ROOT))
    for note in NOTES:
        print(note)
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
