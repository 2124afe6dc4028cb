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
   This catches values the binaries would refuse (a malformed CIDR list, a number out of range). Secret volumes
   are materialized: every file a container mounts from a Secret is written to a temp directory (the Secret's
   rendered data when the chart creates it, so the chart's generated CA, certificate, token file and master key
   are what the binaries load; else, for an existingSecret, stand-in data from a Secret another value set
   rendered with the same keys) and paths under the mount are rewritten to it. A missing key fails.
   With TLS, control is then checked over the wire: a TLS handshake verified against the mounted ca.crt for
   localhost (the notes' port-forward) and for the host of the agents' --control-url (when the chart made the
   certificate), ALPN h2 offered, and GET /metrics over HTTPS without a token; the agent's /metrics over HTTP.
   Control with a database (HOOKRELAY_DATABASE_URL from a Secret) is started against a fresh database of a
   throwaway local PostgreSQL cluster (initdb into a temp dir, a free loopback port, as `nobody` when root, since
   postgres refuses root) in place of the URL, after checking that the Secret holds the URL's key. Without
   PostgreSQL installed (Debian's postgresql package) that start fails when CI is set and is skipped, loudly,
   otherwise.

Usage: check_binaries.py --bin-dir target/debug --chart charts/hookrelay --notes NOTES... -- RENDERED...
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

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


def check_rendered(sets: dict[str, list[dict]], help: Help, failures: list[str]) -> list[tuple[str, dict, dict]]:
    """Returns the distinct hookrelay containers (set name, workload, container), for the smoke run."""
    all_envs = help.envs(BINARIES[0]) | help.envs(BINARIES[1])
    distinct: dict[str, tuple[str, dict, dict]] = {}
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
                key = repr((binary, c.get("args"), c.get("env"), c.get("volumeMounts")))
                distinct.setdefault(key, (set_name, doc, c))
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


def secrets_of(docs: list[dict]) -> dict[str, dict[str, bytes]]:
    """The Secrets a rendered set holds, by name, with their data decoded."""
    out = {}
    for doc in docs:
        if doc.get("kind") == "Secret":
            data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
            data.update({k: v.encode() for k, v in (doc.get("stringData") or {}).items()})
            out[doc["metadata"]["name"]] = data
    return out


def materialize(doc: dict, c: dict, own: dict[str, dict[str, bytes]], pool: list[dict[str, bytes]], root: Path,
                where: str, failures: list[str]) -> dict[str, Path] | None:
    """Writes the files `c` mounts from Secrets under `root`; returns mountPath -> local directory. None after a
    failure (a key the Secret does not hold)."""
    spec = doc["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mapping: dict[str, Path] = {}
    for mount in c.get("volumeMounts") or []:
        source = (volumes.get(mount["name"]) or {}).get("secret")
        if source is None:
            continue
        name = source["secretName"]
        items = source.get("items")
        needed = [item["key"] for item in items] if items else None
        data = own.get(name)
        if data is None:
            # An existingSecret: stand-in data from a Secret the chart rendered with the same keys.
            data = next((d for d in pool if needed and all(k in d for k in needed)), None)
            if data is None:
                failures.append(f"{where}: no rendered Secret holds the keys {needed} to stand in for the existing Secret {name!r}")
                return None
        local = root / "mounts" / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        for item in items or [{"key": k, "path": k} for k in data]:
            if item["key"] not in data:
                failures.append(f"{where}: volume {mount['name']!r} wants key {item['key']!r}, which Secret {name!r} does not hold")
                return None
            (local / item["path"]).write_bytes(data[item["key"]])
        mapping[mount["mountPath"].rstrip("/")] = local
    return mapping


def https_checks(addr: str, ca: Path, hosts: list[str], where: str, failures: list[str]) -> None:
    """control over the wire: verified TLS handshakes for `hosts`, h2 by ALPN, /metrics over HTTPS."""
    host, _, port = addr.rpartition(":")
    for name in hosts:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as sock:
                with ctx.wrap_socket(sock, server_hostname=name) as tls:
                    if tls.selected_alpn_protocol() != "h2":
                        failures.append(f"{where}: TLS as {name}: ALPN chose {tls.selected_alpn_protocol()!r}, not h2")
        except (OSError, ssl.SSLError) as error:
            failures.append(f"{where}: TLS handshake as {name!r} verified against the mounted ca.crt failed: {error}")
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(f"https://localhost:{port}/metrics", context=ctx, timeout=5) as answer:
            if answer.status != 200 or b"# TYPE" not in answer.read():
                failures.append(f"{where}: GET https://localhost:{port}/metrics answered {answer.status} without metrics")
    except (OSError, ssl.SSLError) as error:
        failures.append(f"{where}: GET /metrics over HTTPS (no token, as Prometheus scrapes it) failed: {error}")


def http_metrics(addr: str, where: str, failures: list[str]) -> None:
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as answer:
            if answer.status != 200 or b"# TYPE" not in answer.read():
                failures.append(f"{where}: GET http://{addr}/metrics answered {answer.status} without metrics")
    except OSError as error:
        failures.append(f"{where}: GET /metrics failed: {error}")


def control_hosts(docs: list[dict]) -> list[str]:
    """Hosts of the agents' https:// --control-url in a set that name a Service of the set."""
    services = {d["metadata"]["name"] for d in docs if d.get("kind") == "Service"}
    hosts = []
    for _, c in containers(docs):
        if (c.get("command") or [""])[0] != "hookrelay-agent":
            continue
        for arg in c.get("args") or []:
            if arg.startswith("--control-url="):
                for url in map(urlsplit, arg.partition("=")[2].split(",")):
                    if url.scheme == "https" and url.hostname and url.hostname.split(".")[0] in services:
                        hosts.append(url.hostname)
    return sorted(set(hosts))


class Postgres:
    """A throwaway PostgreSQL cluster, started on first use, stopped and removed by close()."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.port = 0
        self.bin: Path | None = None
        self.owner: tuple[int, int] | None = None
        self.error: str | None = None
        self.databases = 0

    def _find(self) -> Path | None:
        found = shutil.which("initdb")
        if found:
            return Path(found).resolve().parent
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        return Path(dirs[-1]).parent if dirs else None

    def _run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        prefix = [] if self.owner is None else ["setpriv", f"--reuid={self.owner[0]}", f"--regid={self.owner[1]}", "--clear-groups"]
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120, **kw)

    def _start(self) -> None:
        self.bin = self._find()
        if self.bin is None:
            self.error = "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin)"
            return
        self.dir = tempfile.mkdtemp(prefix="hookrelay-chart-pg-")
        if os.geteuid() == 0:
            # postgres refuses to run as root.
            self.owner = (65534, 65534)
            os.chown(self.dir, *self.owner)
        data = f"{self.dir}/data"
        init = self._run(str(self.bin / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if init.returncode != 0:
            self.error = f"initdb failed: {init.stderr.strip()[-400:]}"
            return
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        prefix = [] if self.owner is None else ["setpriv", f"--reuid={self.owner[0]}", f"--regid={self.owner[1]}", "--clear-groups"]
        self.proc = subprocess.Popen(
            [*prefix, str(self.bin / "postgres"), "-D", data, "-p", str(self.port), "-k", self.dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/server.log", "w"),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"postgres exited {self.proc.returncode}: {Path(self.dir, 'server.log').read_text()[-400:]}"
                return
            ready = self._run(str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q")
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        self.error = "postgres did not accept connections within 60 s"

    def url(self) -> str | None:
        """The URL of a fresh database; None (with self.error set) when no cluster can be had."""
        if self.proc is None and self.error is None:
            self._start()
        if self.error:
            return None
        self.databases += 1
        name = f"chart_smoke_{self.databases}"
        made = self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                         "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}")
        if made.returncode != 0:
            self.error = f"CREATE DATABASE failed: {made.stderr.strip()}"
            return None
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def database_url(c: dict, own: dict[str, dict[str, bytes]], postgres: Postgres, where: str,
                 failures: list[str]) -> str | None:
    """For a container whose HOOKRELAY_DATABASE_URL comes from a Secret: "" when it has none, the local stand-in
    URL, or None when the command line cannot be started (a failure or a loud skip is recorded)."""
    env = next((e for e in c.get("env") or [] if e["name"] == "HOOKRELAY_DATABASE_URL"), None)
    if env is None:
        return ""
    ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
    if ref.get("name") in own and ref.get("key") not in own[ref["name"]]:
        failures.append(f"{where}: HOOKRELAY_DATABASE_URL wants key {ref.get('key')!r}, which Secret {ref['name']!r} does not hold")
        return None
    url = postgres.url()
    if url is None:
        if os.environ.get("CI"):
            failures.append(f"{where}: control with a database cannot be started: {postgres.error} (CI needs Debian's postgresql package)")
        else:
            print(f"!!! SKIPPED {where}: control with a database not started: {postgres.error} (install Debian's postgresql package)")
        return None
    return url


def smoke(bin_dir: Path, found: list[tuple[str, dict, dict]], sets: dict[str, list[dict]], failures: list[str]) -> int:
    own_secrets = {name: secrets_of(docs) for name, docs in sets.items()}
    pool = [data for secrets in own_secrets.values() for data in secrets.values()]
    postgres = Postgres()
    try:
        return smoke_each(bin_dir, found, sets, own_secrets, pool, postgres, failures)
    finally:
        postgres.close()


def smoke_each(bin_dir: Path, found: list[tuple[str, dict, dict]], sets: dict[str, list[dict]], own_secrets, pool,
               postgres: Postgres, failures: list[str]) -> int:
    started = 0
    for set_name, doc, c in found:
        binary = c["command"][0]
        where = f"smoke {set_name} {binary}"
        db_url = database_url(c, own_secrets[set_name], postgres, where, failures)
        if db_url is None:
            continue
        started += 1
        with tempfile.TemporaryDirectory(prefix="hookrelay-chart-smoke-") as tmp:
            mounts = materialize(doc, c, own_secrets[set_name], pool, Path(tmp), where, failures)
            if mounts is None:
                continue
            prefixes = sorted(mounts, key=len, reverse=True)

            def local(value: str) -> str:
                for prefix in prefixes:
                    if value == prefix or value.startswith(prefix + "/"):
                        return str(mounts[prefix]) + value[len(prefix):]
                return value

            env = clean_env()
            for e in c.get("env") or []:
                env[e["name"]] = local(e.get("value", "validate-node" if "valueFrom" in e else ""))
            if db_url:
                env["HOOKRELAY_DATABASE_URL"] = db_url
            args = []
            for arg in c.get("args") or []:
                flag, eq, value = arg.partition("=")
                if flag == "--listen":
                    arg = "--listen=127.0.0.1:0"
                elif flag == "--data-dir":
                    arg = f"--data-dir={tmp}/data"
                elif eq:
                    arg = f"{flag}={local(value)}"
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
            addr = line.split(" listening on ", 1)[1].strip()
            cert = next((arg.partition("=")[2] for arg in args if arg.startswith("--tls-cert=")), None)
            if binary == "hookrelay-control" and cert:
                ca = Path(cert).with_name("ca.crt")
                if not ca.exists():
                    failures.append(f"{where}: no ca.crt next to the mounted --tls-cert to verify control with")
                else:
                    # The agents' host only when the chart made the certificate (a stand-in names another release).
                    tls_volume_rendered = any(
                        (v.get("secret") or {}).get("secretName") in own_secrets[set_name]
                        for v in doc["spec"]["template"]["spec"].get("volumes") or [] if v["name"] == "tls"
                    )
                    hosts = ["localhost", *(control_hosts(sets[set_name]) if tls_volume_rendered else [])]
                    https_checks(addr, ca, hosts, where, failures)
            elif binary == "hookrelay-agent":
                http_metrics(addr, where, failures)
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "none (killed after 20s)"
            if code != 0:
                failures.append(f"{where}: exit {code} after SIGTERM: {Path(tmp, 'stderr').read_text().strip()[-600:]}")
    return started


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
    started = 0 if opts.no_smoke else smoke(opts.bin_dir, found, sets, failures)
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
