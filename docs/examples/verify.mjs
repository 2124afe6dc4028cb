// A hookrelay receiver in Node.js: every delivery is verified with the Standard Webhooks library before it is used.
//
//   npm install standardwebhooks
//   WEBHOOK_SECRET='whsec_...' node verify.mjs 8000      # listens on 127.0.0.1:8000, POST /webhook
//
// Tested by docs/examples/test.sh (standardwebhooks 1.1.1 from npm, Node 20) against the Standard Webhooks
// specification's example and against live deliveries from hookrelay-agent.

import http from "node:http";
import { pathToFileURL } from "node:url";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

// Returns the event payload (parsed JSON) when `body` and `headers` carry a valid signature of this endpoint's
// secret and a `webhook-timestamp` within 5 minutes of now; throws WebhookVerificationError otherwise.
// `body` must be the raw bytes as received (a Buffer): JSON.parse then JSON.stringify changes them and breaks the
// signature, so do not verify what a JSON body parser produced.
export function verify(webhook, headers, body) {
  return webhook.verify(body, headers);
}

// Event ids already handled. hookrelay delivers at least once and keeps `webhook-id` across retries and replays, so a
// repeated id is a repeat of an event already handled. Keep these in your database, not in memory.
const handled = new Set();

export function receiver(secret) {
  const webhook = new Webhook(secret);
  return http.createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      let payload;
      try {
        payload = verify(webhook, request.headers, Buffer.concat(chunks));
      } catch (error) {
        if (!(error instanceof WebhookVerificationError)) throw error;
        // Not from hookrelay, altered on the way, or too old to trust: refuse it.
        response.writeHead(400, { "content-type": "application/json" });
        response.end(JSON.stringify({ error: error.message }));
        return;
      }
      const eventId = request.headers["webhook-id"];
      if (!handled.has(eventId)) {
        handled.add(eventId);
        const type = request.headers["hookrelay-event-type"];
        const attempt = request.headers["hookrelay-attempt"];
        console.log(`verified ${type} ${eventId} (attempt ${attempt}): ${JSON.stringify(payload)}`);
      }
      // Any 2xx tells hookrelay the delivery succeeded; answer quickly and do slow work afterwards.
      response.writeHead(204);
      response.end();
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const port = Number(process.argv[2] ?? 8000);
  const server = receiver(process.env.WEBHOOK_SECRET);
  server.listen(port, "127.0.0.1", () => {
    console.log(`receiver listening on 127.0.0.1:${server.address().port}`);
  });
}
