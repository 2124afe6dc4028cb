#!/usr/bin/env python3
"""Tests of gen_flags.py's reading of clap's --help layouts (run by docs/examples/test.sh)."""

import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import gen_flags  # noqa: E402

SHORT = """\
Does things

Usage: thing [OPTIONS]

Options:
      --listen <ADDR>     Address to serve on; port 0 picks one [env: THING_LISTEN=] [default: 127.0.0.1:7100]
      --insecure          Permit http:// [env: THING_INSECURE=]
  -h, --help              Print help
  -V, --version           Print version
"""

LONG = """\
Usage: thing [OPTIONS] <COMMAND>

Commands:
  run   Runs --not-an-option
  help  Print this message

Options:
  -h, --help
          Print help (see a summary with '-h')

Global options:
      --token <TOKEN>
          Bearer token
          for control

          [env: THING_TOKEN]

  -o, --output <OUTPUT>
          How to print results

          Possible values:
          - table: Aligned columns
          - json:  The response as JSON

          [default: table]
      --mode <MODE>
          A mode [possible values: fast, slow]

Examples:
  thing --output json run
"""


class ParseTests(unittest.TestCase):
    def test_short_layout(self) -> None:
        listen, insecure = gen_flags.parse_help(SHORT)
        self.assertEqual((listen.flag, listen.value, listen.env, listen.default),
                         ("--listen", "ADDR", "THING_LISTEN", "127.0.0.1:7100"))
        self.assertEqual(listen.description, "Address to serve on; port 0 picks one")
        self.assertEqual((insecure.value, insecure.env, insecure.default), ("", "THING_INSECURE", ""))

    def test_long_layout_with_hidden_env_value_and_possible_values(self) -> None:
        token, output, mode = gen_flags.parse_help(LONG)
        self.assertEqual((token.env, token.description), ("THING_TOKEN", "Bearer token for control"))
        self.assertEqual((output.short, output.default), ("-o", "table"))
        self.assertEqual(output.possible, ["table (Aligned columns)", "json (The response as JSON)"])
        self.assertEqual(output.description, "How to print results")
        self.assertEqual(mode.possible, ["fast", "slow"])

    def test_table(self) -> None:
        text = gen_flags.table(gen_flags.parse_help(LONG))
        self.assertIn("| `--token <TOKEN>` | `THING_TOKEN` | none | Bearer token for control. |", text)
        self.assertIn("| `-o`, `--output <OUTPUT>` |  | `table` | How to print results. Values: table (Aligned "
                      "columns); json (The response as JSON). |", text)

    def test_render_replaces_only_the_marked_block(self) -> None:
        document = "a\n<!-- BEGIN GENERATED: flags x -->\nold\n<!-- END GENERATED: flags x -->\nb\n"
        self.assertEqual(gen_flags.render(document, {"x": "new"}),
                         "a\n<!-- BEGIN GENERATED: flags x -->\nnew\n<!-- END GENERATED: flags x -->\nb\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
