#!/usr/bin/env python3
"""Live deliveries from hookrelay to the receiver snippets, on 127.0.0.1 only.

    python3 live.py --bin-dir target/debug --python target/docs-venv/bin/python --out target/docs-live

Starts hookrelay-control and hookrelay-agent (fresh data directories under --out), and these endpoints, all
subscribed to `docs.test`:
  - verify.py (Python receiver) and verify.mjs (Node receiver), each given its endpoint's secret: the deliveries must
    succeed, which they do only if the library accepted the signature (a receiver answers 400 otherwise);
  - verify.py given a secret of another endpoint: its delivery must be refused with 400;
  - a capture server that answers 204 and saves each request as a fixture (secret, headers, raw body) for
    check_verify.py and check_verify.mjs, which then verify it against the real clock.
Then the capture endpoint's secret is rotated and a second event is emitted: during the overlap the agent signs with
both secrets, and the saved fixture lists both, each of which must verify. Last, each binary's /metrics is saved
(--out/metrics-agent.txt, metrics-control.txt) for docs/tools/check_docs.py to compare with the metrics table.

Prints one PASS/FAIL line per check and exits non-zero on any failure. Every process it starts is stopped at exit.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import queue
import secrets as random_secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT = 30.0
results: list[bool] = []
processes: list[subprocess.Popen] = []


def report(ok: bool, name: str, detail: str = "") -> bool:
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} live: {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(name: str, command: list[str], env: dict[str, str], log_dir: pathlib.Path, ready: str) -> tuple[subprocess.Popen, str]:
    """Starts a process and waits for the stdout line that contains `ready`; returns it with the rest of that line."""
    log = open(log_dir / f"{name}.log", "w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    processes.append(process)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
            log.write(line)
            log.flush()
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        if ready in line:
            return process, line.split(ready, 1)[1].strip()
    raise RuntimeError(f"{name} did not say {ready!r} within {TIMEOUT}s; see {log_dir / (name + '.log')}")


def stop_all() -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Capture(BaseHTTPRequestHandler):
    """Answers 204 and keeps each request: method, path, headers (lower-case names) and raw body."""

    requests: list[dict] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with self.lock:
            self.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format, *args) -> None:
        pass


class Sandbox:
    def __init__(self, bin_dir: pathlib.Path, python: str, out: pathlib.Path):
        self.bin_dir = bin_dir
        self.python = python
        self.out = out
        # A clean environment: no HOOKRELAY_* from the caller's shell changes what the binaries do.
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("HOOKRELAY_")}
        self.env["RUST_LOG"] = "info"
        self.control_url = ""
        self.agent_addr = ""

    def cli(self, *args: str) -> dict:
        command = [str(self.bin_dir / "hookrelay"), "--control", self.control_url, "--agent",
                   f"http://{self.agent_addr}", "--output", "json", *args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"hookrelay {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else {}

    def start_hookrelay(self) -> None:
        master_key = base64.b64encode(random_secrets.token_bytes(32)).decode()
        control_env = {**self.env, "HOOKRELAY_MASTER_KEY": master_key}
        _, address = start("control", [str(self.bin_dir / "hookrelay-control"), "--listen", "127.0.0.1:0",
                                       "--data-dir", str(self.out / "control"), "--allow-insecure-endpoints",
                                       "--allowed-cidrs", "127.0.0.0/8"],
                           control_env, self.out, "listening on")
        self.control_url = f"http://{address}"
        _, self.agent_addr = start("agent", [str(self.bin_dir / "hookrelay-agent"), "--listen", "127.0.0.1:0",
                                             "--data-dir", str(self.out / "agent"), "--control-url", self.control_url,
                                             "--allowed-cidrs", "127.0.0.0/8", "--node-name", "docs-live"],
                                   self.env, self.out, "listening on")

    def endpoint(self, url: str, event_type: str) -> tuple[str, str]:
        created = self.cli("endpoint", "create", "--owner", "docs", "--url", url, "--filter", event_type,
                           "--insecure", "--retry-schedule-ms", "60000")
        return created["endpoint"]["id"], created["secret"]

    def emit_http(self, event_type: str, event_id: str, payload: dict) -> tuple[int, dict]:
        body = json.dumps({"owner": "docs", "type": event_type, "id": event_id, "payload": payload}).encode()
        request = urllib.request.Request(f"http://{self.agent_addr}/v1/events", body,
                                         {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def wait_for_config(self, probe_type: str) -> None:
        """Emits `probe_type` until it fans out to one delivery: the agent then runs the config version that added
        the endpoint subscribed to it, and every change made before that (versions apply in order)."""
        deadline = time.monotonic() + TIMEOUT
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            status, answer = self.emit_http(probe_type, f"{probe_type}-{attempt}", {"probe": attempt})
            if status == 202 and answer.get("deliveries") == 1:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the agent did not apply the config with {probe_type}'s endpoint within {TIMEOUT}s")

    def deliveries(self, event_id: str) -> dict[str, dict]:
        listed = self.cli("delivery", "list", "--owner", "docs", "--page-size", "100")
        return {d["endpoint_id"]: d for d in listed.get("deliveries", []) if d["event_id"] == event_id}

    def wait_deliveries(self, event_id: str, done) -> dict[str, dict]:
        deadline = time.monotonic() + TIMEOUT
        seen: dict[str, dict] = {}
        while time.monotonic() < deadline:
            seen = self.deliveries(event_id)
            if done(seen):
                return seen
            time.sleep(0.3)
        return seen


def fixture(path: pathlib.Path, description: str, secrets: list[str], request: dict) -> None:
    headers = {name: request["headers"][name] for name in
               ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent",
                "hookrelay-event-type", "hookrelay-attempt")}
    path.write_text(json.dumps({"description": description, "secrets": secrets, "headers": headers,
                                "body": request["body"].decode()}, indent=2) + "\n")


def run(args: argparse.Namespace) -> None:
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sandbox = Sandbox(args.bin_dir.resolve(), args.python, out)
    sandbox.start_hookrelay()

    capture = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    capture_url = f"http://127.0.0.1:{capture.server_address[1]}/capture"

    sandbox.cli("owner", "create", "docs", "--name", "Docs examples")
    for event_type in ("docs.test", "docs.probe", "docs.probe2"):
        sandbox.cli("event-type", "create", event_type, "--description", "docs/examples/live.py")

    python_port, node_port, wrong_port = free_port(), free_port(), free_port()
    python_id, python_secret = sandbox.endpoint(f"http://127.0.0.1:{python_port}/webhook", "docs.test")
    node_id, node_secret = sandbox.endpoint(f"http://127.0.0.1:{node_port}/webhook", "docs.test")
    wrong_id, _ = sandbox.endpoint(f"http://127.0.0.1:{wrong_port}/webhook", "docs.test")
    capture_id, first_secret = sandbox.endpoint(capture_url, "docs.test")
    sandbox.endpoint(capture_url, "docs.probe")

    start("receiver-python", [args.python, str(HERE / "verify.py"), str(python_port)],
          {**sandbox.env, "WEBHOOK_SECRET": python_secret}, out, "receiver listening on")
    start("receiver-node", ["node", str(HERE / "verify.mjs"), str(node_port)],
          {**sandbox.env, "WEBHOOK_SECRET": node_secret}, out, "receiver listening on")
    # This receiver holds the Python endpoint's secret, not its own: every delivery to it must be refused.
    start("receiver-wrong-secret", [args.python, str(HERE / "verify.py"), str(wrong_port)],
          {**sandbox.env, "WEBHOOK_SECRET": python_secret}, out, "receiver listening on")

    sandbox.wait_for_config("docs.probe")
    status, answer = sandbox.emit_http("docs.test", "docs-live-1", {"hello": "from hookrelay", "n": 1})
    report(status == 202 and answer.get("deliveries") == 4, "POST /v1/events fans out to the 4 endpoints",
           f"{status} {answer}")

    def settled(seen: dict[str, dict]) -> bool:
        return (all(seen.get(e, {}).get("status") == "DELIVERY_STATUS_SUCCEEDED" for e in (python_id, node_id, capture_id))
                and seen.get(wrong_id, {}).get("last_status_code") == 400)

    seen = sandbox.wait_deliveries("docs-live-1", settled)
    for endpoint_id, name in ((python_id, "verify.py"), (node_id, "verify.mjs"), (capture_id, "capture")):
        delivery = seen.get(endpoint_id, {})
        report(delivery.get("status") == "DELIVERY_STATUS_SUCCEEDED",
               f"{name} accepted the signed delivery (answered 2xx)",
               f"{delivery.get('status')} last_status_code={delivery.get('last_status_code')} {delivery.get('last_error', '')}")
    wrong = seen.get(wrong_id, {})
    report(wrong.get("last_status_code") == 400, "verify.py holding another endpoint's secret refused it (400)",
           f"{wrong.get('status')} last_status_code={wrong.get('last_status_code')}")

    first = [r for r in Capture.requests if r["headers"].get("webhook-id") == "docs-live-1"]
    if report(len(first) == 1, "capture received event docs-live-1 once", f"{len(first)} requests"):
        request = first[0]
        headers = request["headers"]
        report(headers.get("content-type") == "application/json" and headers.get("hookrelay-event-type") == "docs.test"
               and headers.get("hookrelay-attempt") == "1" and headers.get("user-agent", "").startswith("hookrelay/")
               and headers.get("webhook-signature", "").startswith("v1,"),
               "headers: content-type, user-agent, hookrelay-event-type, hookrelay-attempt, webhook-signature",
               json.dumps({k: v for k, v in headers.items() if k != "webhook-signature"}))
        report(abs(int(headers["webhook-timestamp"]) - time.time()) < 60, "webhook-timestamp is the attempt's time")
        # emit_http sent json.dumps of the payload inside the event; the agent keeps those bytes verbatim.
        report(request["body"] == json.dumps({"hello": "from hookrelay", "n": 1}).encode(),
               "body is the payload's bytes exactly as emitted", request["body"].decode())
        fixture(out / "live-hookrelay.json", "A delivery captured from hookrelay-agent by docs/examples/live.py.",
                [first_secret], request)

    rotated = sandbox.cli("endpoint", "rotate-secret", capture_id)
    second_secret = rotated["secret"]
    sandbox.endpoint(capture_url, "docs.probe2")  # created after the rotation: its arrival means the rotation arrived
    sandbox.wait_for_config("docs.probe2")
    status, answer = sandbox.emit_http("docs.test", "docs-live-2", {"hello": "after rotation", "n": 2})
    report(status == 202, "second event accepted", f"{status} {answer}")
    seen = sandbox.wait_deliveries("docs-live-2", lambda s: s.get(capture_id, {}).get("status") == "DELIVERY_STATUS_SUCCEEDED")
    second = [r for r in Capture.requests if r["headers"].get("webhook-id") == "docs-live-2"]
    if report(len(second) == 1, "capture received event docs-live-2 after the rotation", f"{len(second)} requests"):
        signatures = second[0]["headers"]["webhook-signature"].split(" ")
        report(len(signatures) == 2 and all(s.startswith("v1,") for s in signatures),
               "during the overlap webhook-signature carries two space-separated v1 signatures",
               second[0]["headers"]["webhook-signature"][:24] + "...")
        fixture(out / "live-hookrelay-rotated.json",
                "A delivery captured during a secret rotation's overlap: signed with the new and the previous secret.",
                [second_secret, first_secret], second[0])
    capture.shutdown()
    # What each binary serves on /metrics now, for docs/tools/check_docs.py's comparison with the metrics table.
    for name, url in (("agent", f"http://{sandbox.agent_addr}/metrics"), ("control", f"{sandbox.control_url}/metrics")):
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        (out / f"metrics-{name}.txt").write_text(text)
        report("# EOF" in text, f"{name} /metrics scraped for the docs check", f"{len(text.splitlines())} lines")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=pathlib.Path, required=True)
    parser.add_argument("--python", default=sys.executable, help="interpreter with standardwebhooks installed")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    try:
        run(args)
    except Exception as error:  # a broken setup is a failure too, never a silent pass
        report(False, "live run", f"{type(error).__name__}: {error}")
    finally:
        stop_all()
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
