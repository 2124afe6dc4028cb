#!/usr/bin/env python3
"""Validates the manifests `helm template` rendered from the hookrelay chart, offline.

Run by charts/validate.sh with the Python of target/chart-venv (kubernetes-validate, jsonschema and PyYAML).

Three layers, each failing the run:
1. Structure. Every built-in kind goes through `kubernetes-validate --strict` (bundled OpenAPI schemas, unknown
   fields rejected) for each Kubernetes version asked for. A kind it has no schema for is a failure, not the
   warning the tool prints, so a typo in an apiVersion cannot slip through. CRD kinds are validated against the
   small schemas in charts/tools/schemas/ (kubernetes-validate has none for them); a CRD kind without one fails.
2. Wiring that no schema sees: volume mounts name volumes that exist, $(VAR) in args names an env var of the
   container, probes and Service targetPorts name container ports, Service and ServiceMonitor selectors match
   something, the StatefulSet's serviceName is a headless Service, each URL of the agent's --control-url that names
   a Service of the release names a control Service (the balancing one or the headless one) and its port, the
   agent's node name comes from spec.nodeName, the emit Service is node-local, control with a database (a
   Deployment) takes its URL from a Secret and has a PodDisruptionBudget selecting its pods.
3. Expectations of each value set: its values file may say `# expect-kinds: Kind=N ...` and the rendered set must
   hold exactly that many of each kind listed.

Usage: check_manifests.py --kube-versions 1.26.0,1.35.0 --schemas DIR [--values-schema FILE] RENDERED=VALUES...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import yaml

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}
HOOKRELAY_BINARIES = {"hookrelay-control", "hookrelay-agent"}


class Report:
    """Collects failures per value set, so one run shows every problem."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.failures.append(f"{where}: {message}")


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def crd_schemas(schema_dir: Path) -> dict[tuple[str, str], dict]:
    """Schemas named <kind lowercase>-<apiVersion with / as ->.json, keyed by (apiVersion, kind)."""
    found = {}
    for path in sorted(schema_dir.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        props = schema["properties"]
        found[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return found


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# --- layer 1: structure -------------------------------------------------------------------------------------------


def validate_builtin(sets: dict[str, list[dict]], versions: list[str], crds, report: Report, workdir: Path) -> int:
    """Writes the built-in documents of every set to one file per set and runs kubernetes-validate --strict on all
    of them once per Kubernetes version. Returns how many documents were validated per version."""
    files = []
    count = 0
    for set_name, docs in sets.items():
        builtin = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in crds]
        count += len(builtin)
        path = workdir / f"{set_name}.builtin.yaml"
        path.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
        files.append(path)
    tool = Path(sys.executable).with_name("kubernetes-validate")
    for version in versions:
        run = subprocess.run(
            [str(tool), "--strict", "--quiet", "--kubernetes-version", version, *map(str, files)],
            capture_output=True,
            text=True,
        )
        # With --quiet the tool prints only problems; a missing schema is a WARN line with exit code 0, which for a
        # built-in kind means a wrong apiVersion or kind: treat every line as a failure.
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        for line in lines:
            report.fail(f"kubernetes-validate {version}", line.replace(str(workdir) + "/", ""))
        if run.returncode != 0 and not lines:
            report.fail(f"kubernetes-validate {version}", f"exited {run.returncode} without output")
    return count


def validate_crds(set_name: str, docs: list[dict], crds, report: Report) -> int:
    count = 0
    for doc in docs:
        schema = crds.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            continue
        count += 1
        for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in error.path) or "(root)"
            report.fail(f"{set_name} {name_of(doc)}", f"{path}: {error.message}")
    return count


# --- layer 2: wiring ------------------------------------------------------------------------------------------------


def pod_template(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"]
    return None


def selector_matches(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_pod(where: str, doc: dict, template: dict, report: Report) -> None:
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    claim_templates = {t["metadata"]["name"] for t in (doc.get("spec", {}).get("volumeClaimTemplates") or [])}
    mounted = set()
    pod_sc = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *spec["containers"]]
    for c in containers:
        cw = f"{where} container {c['name']}"
        env_names = {e["name"] for e in c.get("env") or []}
        for m in c.get("volumeMounts") or []:
            mounted.add(m["name"])
            if m["name"] not in volumes and m["name"] not in claim_templates:
                report.fail(cw, f"volumeMount {m['name']!r} names no volume")
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", m.get("subPathExpr", "")):
                if ref not in env_names:
                    report.fail(cw, f"subPathExpr uses $({ref}), which is not an env var of the container")
        for arg in [*(c.get("command") or []), *(c.get("args") or [])]:
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                if ref not in env_names:
                    report.fail(cw, f"{arg!r} uses $({ref}), which is not an env var of the container")
        port_names = {p.get("name") for p in c.get("ports") or []}
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(probe_name) or {}
            for handler in ("tcpSocket", "httpGet", "grpc"):
                port = (probe.get(handler) or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    report.fail(cw, f"{probe_name} names port {port!r}, which the container does not declare")
        command = (c.get("command") or [""])[0]
        if command in HOOKRELAY_BINARIES:
            sc = c.get("securityContext") or {}
            if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
                report.fail(cw, "does not run as non-root (runAsNonRoot)")
            if sc.get("readOnlyRootFilesystem") is not True:
                report.fail(cw, "root filesystem is not read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                report.fail(cw, "allowPrivilegeEscalation is not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                report.fail(cw, "does not drop ALL capabilities")
            if not c.get("livenessProbe") or not c.get("readinessProbe"):
                report.fail(cw, "has no liveness or readiness probe")
    for name in volumes:
        if name not in mounted:
            report.fail(where, f"volume {name!r} is mounted by no container")
    for name in claim_templates:
        if name not in mounted:
            report.fail(where, f"volumeClaimTemplate {name!r} is mounted by no container")
    selector = doc.get("spec", {}).get("selector")
    if doc.get("kind") != "Pod" and selector and not selector_matches(selector, template["metadata"].get("labels") or {}):
        report.fail(where, "spec.selector does not match the pod template's labels")


def container_ports(template: dict) -> dict:
    ports = {}
    for c in template["spec"]["containers"]:
        for p in c.get("ports") or []:
            ports[p.get("name")] = p["containerPort"]
    return ports


def args_of(container: dict) -> dict[str, str]:
    """--flag=value args as a dict (flags without a value map to "")."""
    out = {}
    for arg in container.get("args") or []:
        if arg.startswith("--"):
            flag, _, value = arg.partition("=")
            out[flag] = value
    return out


def check_wiring(set_name: str, docs: list[dict], report: Report) -> None:
    workloads = [(d, pod_template(d)) for d in docs if pod_template(d) is not None]
    services = [d for d in docs if d.get("kind") == "Service"]
    for doc, template in workloads:
        check_pod(f"{set_name} {name_of(doc)}", doc, template, report)

    for svc in services:
        where = f"{set_name} {name_of(svc)}"
        selector = svc["spec"].get("selector") or {}
        matched = [(d, t) for d, t in workloads if selector and selector_matches({"matchLabels": selector}, t["metadata"].get("labels") or {})]
        if not matched:
            report.fail(where, "selects no pod template of this release")
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            for d, t in matched:
                ports = container_ports(t)
                if isinstance(target, str) and target not in ports:
                    report.fail(where, f"targetPort {target!r} is not a port of {name_of(d)}")

    for doc, template in workloads:
        if doc["kind"] == "StatefulSet":
            governing = [s for s in services if s["metadata"]["name"] == doc["spec"].get("serviceName")]
            if not governing or governing[0]["spec"].get("clusterIP") != "None":
                report.fail(f"{set_name} {name_of(doc)}", "serviceName is not a headless Service of this release")

    # The agent: node-local emit, node name from the downward API, control URL naming the control Service.
    for doc, template in workloads:
        for c in template["spec"]["containers"]:
            if (c.get("command") or [""])[0] != "hookrelay-agent":
                continue
            where = f"{set_name} {name_of(doc)} container {c['name']}"
            args = args_of(c)
            env = {e["name"]: e for e in c.get("env") or []}
            node_env = env.get("HOOKRELAY_NODE_NAME", {})
            if node_env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
                report.fail(where, "HOOKRELAY_NODE_NAME does not come from spec.nodeName")
            if args.get("--node-name") not in (None, "$(HOOKRELAY_NODE_NAME)"):
                report.fail(where, f"--node-name is {args.get('--node-name')!r}, not the node name")
            # Several URLs, comma-separated, are several control replicas; a host name resolving to several addresses
            # (the headless Service) is as many replicas.
            for url in map(urlsplit, args.get("--control-url", "").split(",")):
                host = url.hostname or ""
                control_svcs = [s for s in services if host.split(".")[0] == s["metadata"]["name"]]
                if control_svcs:
                    svc = control_svcs[0]
                    if (svc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") != "control":
                        report.fail(where, f"--control-url names {name_of(svc)}, which is not a control Service")
                    if url.port not in [p["port"] for p in svc["spec"]["ports"]]:
                        report.fail(where, f"--control-url port {url.port} is not a port of {name_of(svc)}")
                    if not host.startswith(f"{svc['metadata']['name']}.{svc['metadata'].get('namespace')}.svc"):
                        report.fail(where, f"--control-url host {host!r} is not <service>.<namespace>.svc...")
                # Any other host is an override (agent.controlUrl) pointing outside the release: nothing to check.
            emit_services = [s for s in services if selector_matches({"matchLabels": s["spec"].get("selector") or {}}, template["metadata"]["labels"])]
            if not emit_services:
                report.fail(where, "no Service selects the agent")
            for s in emit_services:
                if s["spec"].get("internalTrafficPolicy") != "Local":
                    report.fail(f"{set_name} {name_of(s)}", "the agent's Service is not node-local (internalTrafficPolicy: Local)")

    # Security wiring: TLS on control, what each component mounts, how control is probed and scraped.
    control_tls = False
    for doc, template in workloads:
        volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
        for c in template["spec"]["containers"]:
            command = (c.get("command") or [""])[0]
            where = f"{set_name} {name_of(doc)} container {c['name']}"
            args = args_of(c)
            if command == "hookrelay-control":
                if not (args.get("--tls-cert") and args.get("--tls-key")):
                    report.fail(where, "control has no --tls-cert/--tls-key: it refuses plaintext on a non-loopback address")
                else:
                    control_tls = True
                    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                        if "grpc" in (c.get(probe_name) or {}):
                            report.fail(where, f"{probe_name} is a gRPC probe on a TLS port; the kubelet's gRPC probe speaks plaintext")
                env = {e["name"]: e for e in c.get("env") or []}
                if doc["kind"] == "Deployment":
                    # Several replicas need the shared database; its URL (which may hold a password) comes from a
                    # Secret, never from the pod spec or the command line.
                    url_env = env.get("HOOKRELAY_DATABASE_URL") or {}
                    if not (url_env.get("valueFrom") or {}).get("secretKeyRef"):
                        report.fail(where, "control as a Deployment without HOOKRELAY_DATABASE_URL from a Secret (secretKeyRef)")
                    if "--database-url" in args:
                        report.fail(where, "--database-url on the command line: the URL may hold a password")
                    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"
                            and selector_matches(d["spec"]["selector"], template["metadata"].get("labels") or {})]
                    if len(pdbs) != 1:
                        report.fail(where, f"{len(pdbs)} PodDisruptionBudgets select control's pods; expected one")
                elif doc["kind"] == "StatefulSet" and doc["spec"].get("replicas", 1) > 1:
                    report.fail(where, "more than one replica on the embedded database")
                if "HOOKRELAY_DATABASE_URL" in env and "value" in env["HOOKRELAY_DATABASE_URL"]:
                    report.fail(where, "HOOKRELAY_DATABASE_URL is written in the pod spec in the clear")
            if command == "hookrelay-agent":
                for url in map(urlsplit, args.get("--control-url", "").split(",")):
                    ours = any((url.hostname or "").split(".")[0] == s["metadata"]["name"] for s in services)
                    if ours and url.scheme != "https":
                        report.fail(where, f"--control-url {url.geturl()!r} is not https, but control serves TLS only")
                    if ours and not args.get("--control-ca"):
                        report.fail(where, "no --control-ca: the agent cannot verify the release's control certificate")
                for m in c.get("volumeMounts") or []:
                    secret = (volumes.get(m["name"]) or {}).get("secret")
                    if secret is None:
                        continue
                    keys = [i["key"] for i in secret.get("items") or []]
                    if not keys:
                        report.fail(where, f"mounts every key of Secret {secret['secretName']!r}; agents get only the keys they read")
                    for key in keys:
                        if key in ("tls.key", "tokens", "admin-token", "master.key"):
                            report.fail(where, f"mounts {key!r} of Secret {secret['secretName']!r}, which only control needs")

    for sm in (d for d in docs if d.get("kind") == "ServiceMonitor"):
        if sm["metadata"]["labels"].get("app.kubernetes.io/component") == "control" and control_tls:
            for ep in sm["spec"]["endpoints"]:
                if ep.get("scheme") != "https" or not ep.get("tlsConfig"):
                    report.fail(f"{set_name} {name_of(sm)}", "control serves TLS: the endpoint needs scheme https and a tlsConfig")

    for sm in (d for d in docs if d.get("kind") == "ServiceMonitor"):
        where = f"{set_name} {name_of(sm)}"
        names = (sm["spec"].get("namespaceSelector") or {}).get("matchNames")
        candidates = [s for s in services if not names or s["metadata"].get("namespace") in names]
        matched = [s for s in candidates if selector_matches(sm["spec"]["selector"], s["metadata"].get("labels") or {})]
        if len(matched) != 1:
            report.fail(where, f"selects {len(matched)} Services ({', '.join(map(name_of, matched)) or 'none'}); expected exactly one")
        for s in matched:
            port_names = {p.get("name") for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if "port" in ep and ep["port"] not in port_names:
                    report.fail(where, f"endpoint port {ep['port']!r} is not a port of {name_of(s)}")


# --- layer 3: expectations ------------------------------------------------------------------------------------------


def check_expectations(set_name: str, docs: list[dict], values_file: Path, report: Report) -> None:
    kinds = Counter(d.get("kind") for d in docs)
    for line in values_file.read_text().splitlines():
        match = re.match(r"#\s*expect-kinds:\s*(.*)$", line)
        if not match:
            continue
        for item in match.group(1).split():
            kind, _, n = item.partition("=")
            if kinds.get(kind, 0) != int(n):
                report.fail(set_name, f"renders {kinds.get(kind, 0)} {kind}, {values_file.name} expects {n}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kube-versions", required=True, help="comma-separated, e.g. 1.26.0,1.35.0")
    parser.add_argument("--schemas", required=True, type=Path, help="directory of CRD schemas")
    parser.add_argument("--values-schema", type=Path, help="the chart's values.schema.json, checked as draft-07")
    parser.add_argument("sets", nargs="+", help="RENDERED=VALUES pairs")
    opts = parser.parse_args()

    report = Report()
    if opts.values_schema:
        schema = json.loads(opts.values_schema.read_text())
        if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
            report.fail(str(opts.values_schema), "does not declare draft-07")
        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            report.fail(str(opts.values_schema), f"is not a valid draft-07 schema: {e.message}")

    crds = crd_schemas(opts.schemas)
    sets: dict[str, list[dict]] = {}
    values_of: dict[str, Path] = {}
    for pair in opts.sets:
        rendered, _, values = pair.partition("=")
        name = Path(rendered).stem
        sets[name] = load_docs(Path(rendered))
        values_of[name] = Path(values)

    for name, docs in sets.items():
        unknown = [d for d in docs if "." in d.get("apiVersion", "").split("/")[0] and (d["apiVersion"], d["kind"]) not in crds
                   and not d["apiVersion"].split("/")[0].endswith(".k8s.io")]
        for d in unknown:
            report.fail(f"{name} {name_of(d)}", f"{d['apiVersion']} is a CRD kind with no schema in {opts.schemas}")

    versions = [v.strip() for v in opts.kube_versions.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="hookrelay-chart-") as tmp:
        builtin = validate_builtin(sets, versions, crds, report, Path(tmp))
    crd_count = 0
    for name, docs in sets.items():
        crd_count += validate_crds(name, docs, crds, report)
        check_wiring(name, docs, report)
        check_expectations(name, docs, values_of[name], report)

    for failure in report.failures:
        print(f"FAIL {failure}")
    kinds = Counter(d.get("kind") for docs in sets.values() for d in docs)
    print(
        f"{len(sets)} value sets, {builtin} built-in objects x Kubernetes {', '.join(versions)} (strict), "
        f"{crd_count} CRD objects against {os.path.relpath(opts.schemas)}; kinds: "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
