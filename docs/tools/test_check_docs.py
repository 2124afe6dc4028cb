#!/usr/bin/env python3
"""Tests of check_docs.py's readers and checks on made-up pages (run by docs/examples/test.sh)."""

import json
import pathlib
import sys
import tempfile
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import check_docs  # noqa: E402

ROOT_HELP = """\
Manage things

Usage: hookrelay [OPTIONS] <COMMAND>

Commands:
  endpoint     Where webhooks go
  agent        The agents
  completions  Print a shell completion script
  help         Print this message or the help of the given subcommand(s)

Options:
  -h, --help     Print help

Global options:
      --control <URL>
          Control's gRPC address
  -o, --output <OUTPUT>
          How to print results

Exit codes: 0 ok, 1 the server refused the request, 2 usage error, 3 control or agent unreachable, 4 a change was
made but --wait ran out.
"""

ENDPOINT_HELP = """\
Usage: hookrelay endpoint <COMMAND>

Commands:
  disable        Disable an endpoint
  rotate-secret  Make a new signing secret primary
"""

DISABLE_HELP = """\
Usage: hookrelay endpoint disable [OPTIONS] <ID>

Arguments:
  <ID>

Options:
      --reason <REASON>  Why
      --wait             After the change, wait
      --wait-timeout <DURATION>
          How long --wait waits: `30s` (the default)

Global options:
      --control <URL>  Control's gRPC address
  -o, --output <OUTPUT>  How to print results
"""


def tree() -> dict:
    return {
        (): check_docs.parse_help(ROOT_HELP),
        ("endpoint",): check_docs.parse_help(ENDPOINT_HELP),
        ("endpoint", "disable"): check_docs.parse_help(DISABLE_HELP),
        ("endpoint", "rotate-secret"): check_docs.parse_help(DISABLE_HELP),
        ("agent",): check_docs.Command({"--control": True}, set()),
        ("completions",): check_docs.Command({}, set()),
    }


def invocation(line: str) -> check_docs.Invocation:
    tokens = check_docs.segments(line)[0]
    return check_docs.Invocation("page.md:1", check_docs.program_of(tokens[0]), tokens[1:])


class HelpTests(unittest.TestCase):
    def test_parse_help_reads_commands_and_flags_with_values(self) -> None:
        root = check_docs.parse_help(ROOT_HELP)
        self.assertEqual(root.subcommands, {"endpoint", "agent", "completions"})
        self.assertEqual(root.flags, {"--help": False, "--control": True, "--output": True})
        disable = check_docs.parse_help(DISABLE_HELP)
        self.assertEqual(disable.flags["--wait"], False)
        self.assertEqual(disable.flags["--wait-timeout"], True)
        self.assertNotIn("--wait", check_docs.parse_help(ENDPOINT_HELP).flags)

    def test_exit_codes(self) -> None:
        self.assertEqual(check_docs.exit_codes(ROOT_HELP), {"0", "1", "2", "3", "4"})
        self.assertEqual(check_docs.exit_codes("Exit codes: 0 success, 1 refused.\n\nMore"), {"0", "1"})


class CommandTests(unittest.TestCase):
    def problems(self, line: str) -> list[str]:
        return check_docs.check_invocation(invocation(line), tree())

    def test_known_commands_and_flags_pass(self) -> None:
        self.assertEqual(self.problems("hookrelay endpoint disable ep_1 --reason 'gone' --wait --wait-timeout 2m"), [])
        self.assertEqual(self.problems("./target/release/hookrelay -o json endpoint rotate-secret ep_1"), [])
        self.assertEqual(self.problems("hookrelay --control=http://c:1 agent"), [])
        # Alternatives and placeholders as prose writes them.
        self.assertEqual(self.problems("hookrelay endpoint disable/rotate-secret"), [])
        self.assertEqual(self.problems("hookrelay <command> --help"), [])
        self.assertEqual(self.problems("hookrelay completions bash|zsh"), [])

    def test_unknown_subcommands_and_flags_fail(self) -> None:
        [problem] = self.problems("hookrelay endpoint rotate ep_1")
        self.assertIn("`hookrelay endpoint` has no subcommand 'rotate'", problem)
        [problem] = self.problems("hookrelay endpoint disable ep_1 --force")
        self.assertIn("`hookrelay endpoint disable` has no --force", problem)
        # A flag of a subcommand is not one of its parent.
        [problem] = self.problems("hookrelay endpoint --wait disable ep_1")
        self.assertIn("`hookrelay endpoint` has no --wait", problem)

    def test_segments_split_shell_lines(self) -> None:
        self.assertEqual(check_docs.segments("cargo build --release && ./target/release/hookrelay dev"),
                         [["cargo", "build", "--release"], ["./target/release/hookrelay", "dev"]])
        self.assertEqual(check_docs.segments("WEBHOOK_SECRET='whsec_x' python3 verify.py 8000"),
                         [["python3", "verify.py", "8000"]])
        self.assertEqual(check_docs.segments("hookrelay endpoint list -o json | jq '.endpoints[].url'")[0],
                         ["hookrelay", "endpoint", "list", "-o", "json"])

    def test_shell_lines_join_continuations_and_drop_comments(self) -> None:
        code = [(1, "# a comment --not-a-flag"), (2, "hookrelay endpoint disable \\"), (3, "  ep_1 --wait")]
        self.assertEqual(check_docs.shell_lines(code), [(2, "hookrelay endpoint disable  ep_1 --wait")])


class PageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = tempfile.TemporaryDirectory()
        self.root = pathlib.Path(self.directory.name)

    def tearDown(self) -> None:
        self.directory.cleanup()

    def write(self, name: str, text: str) -> pathlib.Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def page(self, name: str, text: str) -> check_docs.Page:
        return check_docs.load_page(self.write(name, text), self.root)

    def test_forbidden_references(self) -> None:
        page = self.page("a.md", "See DESIGN.md §5 and issue 4.\nsled issue #1308 is upstream's.\n```\nissues 4 and 5\n```\n")
        problems, _ = check_docs.check_forbidden([page])
        self.assertEqual(len(problems), 4, problems)
        self.assertTrue(all(problem.startswith("a.md:") for problem in problems), problems)
        self.assertFalse(any(problem.startswith("a.md:2:") for problem in problems), problems)

    def test_links_and_anchors(self) -> None:
        self.write("docs/other.md", "# Title\n\n## Running on Kubernetes with the chart\n\n## Not `yet`, really\n")
        page = self.page("docs/page.md", "[a](other.md#running-on-kubernetes-with-the-chart) [b](other.md#not-yet-really)"
                                         " [c](missing.md) [d](other.md#gone) [e](https://x.example/y) [f](#local)\n"
                                         "## Local\n")
        problems, checked = check_docs.check_links([page], self.root)
        self.assertEqual(checked, 5)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("missing.md points at nothing", problems[0])
        self.assertIn("has no heading for #gone", problems[1])

    def test_paths_and_file_names(self) -> None:
        self.write("agent/src/queue/mod.rs", "")
        self.write("common/fuzz/pick.py", "")
        self.write("README.md", "")
        page = self.page("agent/fuzz/README.md", "`agent/src/queue/mod.rs` and `agent/src/queue/gone.rs`, "
                                                 "DESIGN.md, Node.js, `express.json()`, `target/debug/x`\n"
                                                 "```sh\npython3 ../common/fuzz/pick.py\n```\n")
        files = ["agent/src/queue/mod.rs", "common/fuzz/pick.py", "README.md", "agent/fuzz/README.md"]
        problems, _ = check_docs.check_paths([page], self.root, files)
        self.assertEqual(sorted(problem.split(": ", 1)[1] for problem in problems),
                         ["DESIGN.md is not a file of the repository",
                          "agent/src/queue/gone.rs does not exist in the repository",
                          "agent/src/queue/gone.rs is not a file of the repository"])

    def test_defaults(self) -> None:
        page = self.page("a.md", "`--cache-mib`, default 16. `--max-queue-mib` (default 1024). `--listen` (default "
                                 "`0.0.0.0:7100`). `--wait-timeout` (default 30 s).\n")
        help_text = "Options:\n      --cache-mib <N>  Cache [default: 16]\n      --max-queue-mib <N>  Limit [default: 2048]\n" \
                    "      --listen <ADDR>  Where [default: 127.0.0.1:7200]\n"
        problems, checked = check_docs.check_defaults([page], {"hookrelay-agent": help_text})
        self.assertEqual(checked, 2)
        self.assertEqual(problems, ["a.md:1: says --max-queue-mib defaults to 1024; --help says 2048"])

    def test_metrics_against_the_scrape(self) -> None:
        self.write(f"{check_docs.SCRAPES}/metrics-agent.txt",
                   "# HELP hookrelay_agent_emits_accepted Events accepted.\n# TYPE hookrelay_agent_emits_accepted counter\n"
                   "hookrelay_agent_emits_accepted_total 3\n# TYPE hookrelay_agent_queue_bytes gauge\n"
                   "hookrelay_agent_queue_bytes 10\n# TYPE hookrelay_agent_new gauge\nhookrelay_agent_new 1\n# EOF\n")
        page = self.page("ops.md", "| `hookrelay_agent_emits_accepted_total` | `hookrelay_agent_queue_bytes` |\n"
                                   "`hookrelay_agent_gone_total{reason}` and `hookrelay_control_x` (not scraped)\n")
        problems, checked = check_docs.check_metrics([page], self.root)
        self.assertEqual(checked, 3)
        self.assertEqual(problems, ["ops.md:2: hookrelay-agent serves no hookrelay_agent_gone_total",
                                    "hookrelay-agent serves hookrelay_agent_new, which no page names"])

    def test_values_paths(self) -> None:
        paths = check_docs.values_paths("# c\nagent:\n  # -- x\n  port: 7200\n  storage:\n    kind: hostPath\n"
                                        "logLevel: info\n")
        self.assertEqual(paths, {"agent", "agent.port", "agent.storage", "agent.storage.kind", "logLevel"})

    def chart(self, operating: str) -> list[str]:
        self.write("charts/hookrelay/values.yaml", "control:\n  port: 7100\nagent:\n  cacheMib: 16\n")
        self.write("charts/hookrelay/templates/control.yaml",
                   "      command:\n        - hookrelay-control\n      args:\n        - --listen=x\n")
        self.write("charts/hookrelay/templates/agent.yaml",
                   "      command:\n        - hookrelay-agent\n      args:\n        - --cache-mib=1\n")
        trees = {"hookrelay-control": {(): check_docs.Command({"--listen": True, "--log-format": True,
                                                                 "--help": False}, set())},
                 "hookrelay-agent": {(): check_docs.Command({"--cache-mib": True, "--log-format": True}, set())}}
        problems, _ = check_docs.check_chart(trees, self.root, operating)
        return problems

    TRUE = """\
<!-- check: chart-flags hookrelay-control -->
| value | flag |
| --- | --- |
| `control.port` | `--listen`: on all addresses |

<!-- check: chart-flags hookrelay-agent -->
| value | flag |
| --- | --- |
| `agent.cacheMib` | `--cache-mib` |

<!-- check: not-in-chart hookrelay-control -->
`--log-format`.

<!-- check: not-in-chart hookrelay-agent -->
`--log-format`.
"""

    def test_chart_lists_that_match_the_templates(self) -> None:
        self.assertEqual(self.chart(self.TRUE), [])

    def test_chart_lists_that_do_not(self) -> None:
        # The stale statement of old: a flag the chart passes said to be missing from it.
        stale = self.TRUE.replace("`--log-format`.\n\n<!-- check: not-in-chart hookrelay-agent -->",
                                  "`--log-format`, `--listen`.\n\n<!-- check: not-in-chart hookrelay-agent -->")
        [problem] = self.chart(stale)
        self.assertIn("hookrelay-control --listen is listed as not set by the chart, but the chart passes it", problem)
        problems = self.chart(self.TRUE.replace("`agent.cacheMib` | `--cache-mib`", "`agent.cache` | `--max-x`"))
        self.assertEqual(len(problems), 4, problems)  # unknown value, flag not passed, passed flag omitted, unlisted
        [problem] = self.chart(self.TRUE.replace("`--log-format`.\n", "none.\n", 1))
        self.assertIn("hookrelay-control --log-format is neither in the chart's table nor in the list", problem)
        [problem] = self.chart(self.TRUE.replace("<!-- check: not-in-chart hookrelay-agent -->", ""))
        self.assertIn("lacks <!-- check: chart-flags hookrelay-agent -->", problem)

    def version_problems(self, page: str, records: dict[str, str]) -> list[str]:
        self.write(check_docs.RECEIVING, page)
        self.write("docs/examples/requirements.txt", "# pins\nstandardwebhooks==1.3.0\ngrpcio-tools==1\n")
        self.write("docs/examples/package-lock.json",
                   json.dumps({"packages": {"node_modules/standardwebhooks": {"version": "1.1.1"}}}))
        for name, version in records.items():
            self.write(f"{check_docs.TESTED}/{name}", version + "\n")
        problems, _ = check_docs.check_tested_versions(self.root)
        return problems

    PAGE = "`pip install standardwebhooks` (tested with 1.3.0, the pin)\n`npm install standardwebhooks` (tested with\n" \
           "1.1.1 on Node 20, the lock)\n"

    def test_tested_versions_match_pins_and_records(self) -> None:
        records = {"cargo-python-standardwebhooks": "1.3.0", "docs-python-standardwebhooks": "1.3.0",
                   "docs-node-standardwebhooks": "1.1.1", "docs-node": "20.20.2"}
        self.assertEqual(self.version_problems(self.PAGE, records), [])

    def test_a_stale_version_statement_fails(self) -> None:
        problems = self.version_problems(self.PAGE.replace("tested with 1.3.0", "tested with 1.1.0"),
                               {"cargo-python-standardwebhooks": "1.3.0"})
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("says 1.1.0, docs/examples/requirements.txt pins 1.3.0", problems[0])
        self.assertIn("says 1.1.0, the tests ran with (target/tested-versions/cargo-python-standardwebhooks) 1.3.0",
                      problems[1])
        [problem] = self.version_problems(self.PAGE, {"docs-node": "22.1.0"})
        self.assertIn("says 20, the tests ran with (target/tested-versions/docs-node) 22", problem)
        [problem] = self.version_problems("no statement\n", {})
        self.assertIn("no longer says which standardwebhooks versions", problem)


if __name__ == "__main__":
    unittest.main(verbosity=2)
