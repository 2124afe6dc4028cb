#!/usr/bin/env python3
"""Checks that the chart speaks the binaries' language: every flag and HOOKRELAY_* name is one they accept.

Run by charts/validate.sh (Python of target/chart-venv, for PyYAML) with the directory of built binaries.

1. Text: every `HOOKRELAY_*` name and `--flag` written in the chart's templates, values.yaml and values.schema.json
   appears in `hookrelay-control --help` or `hookrelay-agent --help`. This covers branches no value set renders.
2. Rendered: in every rendered value set, each container that runs hookrelay-control or hookrelay-agent passes only
   flags from that binary's --help, sets only HOOKRELAY_* env vars from that binary's --help, and every other
   container's HOOKRELAY_* env var is one of the binaries'.
3. NOTES (as rendered for each value set): every indented `hookrelay ...` command line names real subcommands and only flags that subcommand's --help
   lists; every HOOKRELAY_* name in it is one the CLI or a binary reads.
4. Smoke: each distinct rendered command line of control and agent is started for real (listen address, data dir
   and node name swapped for local ones): it must print its listening line, then stop with exit 0 on SIGTERM.
   This catches values the binaries would refuse (a malformed CIDR list, a number out of range).

Usage: check_binaries.py --bin-dir target/debug --chart charts/hookrelay --notes NOTES... -- RENDERED...
"""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
ENV = re.compile(r"\bHOOKRELAY_[A-Z0-9_]+\b")
BINARIES = ("hookrelay-control", "hookrelay-agent")


class Help:
    """--help output of a binary (and of the CLI's subcommands), parsed for flags, env names and subcommands."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.cache: dict[tuple[str, ...], str] = {}

    def text(self, binary: str, *sub: str) -> str:
        key = (binary, *sub)
        if key not in self.cache:
            run = subprocess.run(
                [str(self.bin_dir / binary), *sub, "--help"], capture_output=True, text=True, timeout=30, env=clean_env()
            )
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(key)} --help exited {run.returncode}: {run.stderr.strip()}")
            self.cache[key] = run.stdout
        return self.cache[key]

    def flags(self, binary: str, *sub: str) -> set[str]:
        return set(FLAG.findall(self.text(binary, *sub))) | {"help", "version"}

    def envs(self, binary: str, *sub: str) -> set[str]:
        return set(re.findall(r"\[env: (HOOKRELAY_[A-Z0-9_]+)=", self.text(binary, *sub)))

    def subcommands(self, binary: str, *sub: str) -> set[str]:
        names, in_section = set(), False
        for line in self.text(binary, *sub).splitlines():
            if line.strip() == "Commands:":
                in_section = True
            elif in_section and re.match(r"^\s{2,}([a-z][a-z0-9-]*)\s", line):
                names.add(line.split()[0])
            elif in_section and line.strip() and not line.startswith(" "):
                in_section = False
        return names


def clean_env() -> dict[str, str]:
    """The caller's environment without HOOKRELAY_* variables, so a developer's shell cannot change the results."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HOOKRELAY_")}


def check_text(chart: Path, help: Help, failures: list[str]) -> int:
    flags = help.flags(BINARIES[0]) | help.flags(BINARIES[1])
    envs = help.envs(BINARIES[0]) | help.envs(BINARIES[1])
    files = [*sorted((chart / "templates").glob("*.yaml")), *sorted((chart / "templates").glob("*.tpl")),
             chart / "values.yaml", chart / "values.schema.json"]
    seen = 0
    for path in files:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for flag in FLAG.findall(line):
                seen += 1
                if flag not in flags:
                    failures.append(f"{path}:{lineno}: --{flag} is not a flag of {' or '.join(BINARIES)}")
            for env in ENV.findall(line):
                seen += 1
                if env not in envs:
                    failures.append(f"{path}:{lineno}: {env} is not an env name of {' or '.join(BINARIES)}")
    notes = chart / "templates" / "NOTES.txt"
    cli_envs = envs | help.envs("hookrelay")
    for lineno, line in enumerate(notes.read_text().splitlines(), 1):
        for env in ENV.findall(line):
            seen += 1
            if env not in cli_envs:
                failures.append(f"{notes}:{lineno}: {env} is read by neither the CLI nor a binary")
    return seen


def containers(docs: list[dict]):
    for doc in docs:
        spec = (doc.get("spec") or {}).get("template", {}).get("spec")
        if spec:
            for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
                yield doc, c


def check_rendered(sets: dict[str, list[dict]], help: Help, failures: list[str]) -> list[tuple[str, dict]]:
    """Returns the distinct hookrelay containers, for the smoke run."""
    all_envs = help.envs(BINARIES[0]) | help.envs(BINARIES[1])
    distinct: dict[str, tuple[str, dict]] = {}
    for set_name, docs in sets.items():
        for doc, c in containers(docs):
            where = f"{set_name} {doc['kind']}/{doc['metadata']['name']} container {c['name']}"
            binary = (c.get("command") or [""])[0]
            env_names = [e["name"] for e in c.get("env") or [] if e["name"].startswith("HOOKRELAY_")]
            if binary in BINARIES:
                for arg in c.get("args") or []:
                    if not arg.startswith("--"):
                        failures.append(f"{where}: argument {arg!r} is not a --flag")
                        continue
                    flag = arg[2:].partition("=")[0]
                    if flag not in help.flags(binary):
                        failures.append(f"{where}: --{flag} is not in `{binary} --help`")
                for env in env_names:
                    if env not in help.envs(binary):
                        failures.append(f"{where}: env {env} is not in `{binary} --help`")
                key = repr((binary, c.get("args"), c.get("env")))
                distinct.setdefault(key, (set_name, c))
            else:
                for env in env_names:
                    if env not in all_envs:
                        failures.append(f"{where}: env {env} is read by neither binary")
    return list(distinct.values())


def check_notes(notes_files: list[Path], help: Help, failures: list[str]) -> int:
    cli = "hookrelay"
    known_envs = help.envs(cli) | help.envs(BINARIES[0]) | help.envs(BINARIES[1])
    commands = 0
    for notes in notes_files:
        for lineno, line in enumerate(notes.read_text().splitlines(), 1):
            where = f"{notes}:{lineno}"
            for env in ENV.findall(line):
                if env not in known_envs:
                    failures.append(f"{where}: {env} is read by neither the CLI nor a binary")
            # Commands are the indented lines; prose starts at the margin.
            words = line.split()
            if not line.startswith(" ") or not words or words[0] != cli:
                continue
            commands += 1
            path: list[str] = []
            for word in words[1:]:
                if word in help.subcommands(cli, *path):
                    path.append(word)
                else:
                    break
            if not path or help.subcommands(cli, *path):
                failures.append(f"{where}: `{' '.join(words[:len(path) + 2])}` is not a complete hookrelay subcommand")
                continue
            for flag in FLAG.findall(line):
                if flag not in help.flags(cli, *path):
                    failures.append(f"{where}: --{flag} is not in `hookrelay {' '.join(path)} --help`")
    return commands


def smoke(bin_dir: Path, found: list[tuple[str, dict]], failures: list[str]) -> int:
    for set_name, c in found:
        binary = c["command"][0]
        where = f"smoke {set_name} {binary}"
        with tempfile.TemporaryDirectory(prefix="hookrelay-chart-smoke-") as tmp:
            env = clean_env()
            for e in c.get("env") or []:
                env[e["name"]] = e.get("value", "validate-node" if "valueFrom" in e else "")
            args = []
            for arg in c.get("args") or []:
                flag, _, _ = arg.partition("=")
                if flag == "--listen":
                    arg = "--listen=127.0.0.1:0"
                elif flag == "--data-dir":
                    arg = f"--data-dir={tmp}/data"
                # Kubernetes expands $(VAR) from the container's env before exec.
                arg = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
                args.append(arg)
            proc = subprocess.Popen(
                [str(bin_dir / binary), *args], stdout=subprocess.PIPE, stderr=open(f"{tmp}/stderr", "w"),
                text=True, env=env, cwd=tmp,
            )
            # The binaries print exactly one line once bound, or exit.
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            line = proc.stdout.readline() if ready else ""
            if not ready:
                proc.kill()
            if f"{binary} listening on" not in line:
                proc.wait(timeout=10)
                failures.append(f"{where}: did not start (exit {proc.returncode}): {Path(tmp, 'stderr').read_text().strip()[-600:]}")
                continue
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "none (killed after 20s)"
            if code != 0:
                failures.append(f"{where}: exit {code} after SIGTERM: {Path(tmp, 'stderr').read_text().strip()[-600:]}")
    return len(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True, type=Path)
    parser.add_argument("--chart", required=True, type=Path)
    parser.add_argument("--no-smoke", action="store_true", help="skip starting the binaries")
    parser.add_argument("--notes", nargs="*", type=Path, default=[], help="rendered NOTES.txt files")
    parser.add_argument("rendered", nargs="+", type=Path)
    opts = parser.parse_args()

    opts.bin_dir = opts.bin_dir.resolve()
    help = Help(opts.bin_dir)
    failures: list[str] = []
    sets = {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in opts.rendered}
    names = check_text(opts.chart, help, failures)
    found = check_rendered(sets, help, failures)
    commands = check_notes(opts.notes, help, failures)
    started = 0 if opts.no_smoke else smoke(opts.bin_dir, found, failures)
    for failure in failures:
        print(f"FAIL {failure}")
    print(
        f"{names} flag/env mentions in the chart source, {len(found)} distinct hookrelay command lines in "
        f"{len(sets)} rendered sets, {commands} CLI commands in {len(opts.notes)} rendered NOTES checked against --help of {opts.bin_dir}; "
        f"{started} command lines started and stopped"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
