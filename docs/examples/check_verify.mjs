// Runs verify.mjs's `verify` against signed-request fixtures; prints one PASS/FAIL line per case.
//
//   node check_verify.mjs fixtures/spec.json [more fixtures ...]
//
// Same fixtures and cases as check_verify.py. With a fixture's `now`, Date.now is pinned to it: standardwebhooks
// has no tolerance setting and reads Date.now() when it checks `webhook-timestamp`. When every case passes, the
// versions of standardwebhooks and of Node they ran with are written to target/tested-versions/, which
// docs/tools/check_docs.py compares with the docs.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename } from "node:path";
import { Webhook, WebhookVerificationError } from "standardwebhooks";
import { verify } from "./verify.mjs";

const OTHER_SECRET = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
const results = [];

function withClock(now, run) {
  if (now === undefined || now === null) return run();
  const realNow = Date.now;
  Date.now = () => now * 1000;
  try {
    return run();
  } finally {
    Date.now = realNow;
  }
}

function check(name, accept, now, run) {
  let outcome;
  try {
    withClock(now, run);
    outcome = "accepted";
  } catch (error) {
    if (!(error instanceof WebhookVerificationError)) {
      results.push(false);
      console.log(`FAIL node: ${name}: ${error}`);
      return;
    }
    outcome = `refused (${error.message})`;
  }
  const ok = accept ? outcome === "accepted" : outcome.startsWith("refused");
  results.push(ok);
  console.log(`${ok ? "PASS" : "FAIL"} node: ${name}: ${outcome}`);
}

for (const path of process.argv.slice(2)) {
  const fixture = JSON.parse(readFileSync(path, "utf8"));
  const label = basename(path, ".json");
  const secrets = fixture.secrets ?? [fixture.secret];
  const headers = fixture.headers;
  const body = Buffer.from(fixture.body, "utf8");
  const now = fixture.now;
  secrets.forEach((secret, index) => {
    const suffix = secrets.length > 1 ? ` (secret ${index + 1} of ${secrets.length})` : "";
    check(`${label}: authentic request${suffix}`, true, now, () => verify(new Webhook(secret), headers, body));
  });
  const webhook = new Webhook(secrets[0]);
  const text = fixture.body;
  const altered = Buffer.from(text.includes("}") ? text.replace("}", " }") : `${text} `, "utf8");
  check(`${label}: altered body`, false, now, () => verify(webhook, headers, altered));
  check(`${label}: altered webhook-id`, false, now, () =>
    verify(webhook, { ...headers, "webhook-id": `${headers["webhook-id"]}x` }, body),
  );
  check(`${label}: another secret`, false, now, () => verify(new Webhook(OTHER_SECRET), headers, body));
  const upper = Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toUpperCase(), value]));
  check(`${label}: upper-case header names`, true, now, () => verify(webhook, upper, body));
  if (now !== undefined && now !== null) {
    check(`${label}: same request checked against the real clock (stale timestamp)`, false, null, () =>
      verify(webhook, headers, body),
    );
  }
}

const passed = results.length > 0 && results.every(Boolean);
if (passed) {
  const tested = new URL("../../target/tested-versions/", import.meta.url);
  const library = JSON.parse(readFileSync(new URL("node_modules/standardwebhooks/package.json", import.meta.url)));
  mkdirSync(tested, { recursive: true });
  writeFileSync(new URL("docs-node-standardwebhooks", tested), `${library.version}\n`);
  writeFileSync(new URL("docs-node", tested), `${process.versions.node}\n`);
}
process.exit(passed ? 0 : 1);
