#!/usr/bin/env python3
"""A hookrelay receiver in Python: every delivery is verified with the Standard Webhooks library before it is used.

    pip install standardwebhooks
    WEBHOOK_SECRET='whsec_...' python3 verify.py 8000      # listens on 127.0.0.1:8000, POST /webhook

Tested by docs/examples/test.sh (standardwebhooks 1.1.0 from PyPI) against the Standard Webhooks specification's
example and against live deliveries from hookrelay-agent.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


def verify(webhook: Webhook, headers: dict, body: bytes):
    """Returns the event payload (parsed JSON) when `body` and `headers` carry a valid signature of this endpoint's
    secret and a `webhook-timestamp` within 5 minutes of now; raises WebhookVerificationError otherwise.

    `body` must be the raw bytes as received: parsing and re-serialising the JSON changes them and breaks the
    signature. Header names may be in any case.
    """
    return webhook.verify(body, headers)


class Receiver(BaseHTTPRequestHandler):
    webhook: Webhook  # set in main()
    # Event ids already handled. hookrelay delivers at least once and keeps `webhook-id` across retries and replays,
    # so a repeated id is a repeat of an event already handled. Keep these in your database, not in memory.
    handled: set = set()
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            payload = verify(self.webhook, dict(self.headers.items()), body)
        except WebhookVerificationError as error:
            # Not from hookrelay, altered on the way, or too old to trust: refuse it.
            self.answer(400, {"error": str(error)})
            return
        event_id = self.headers["webhook-id"]
        with self.lock:
            first_time = event_id not in self.handled
            self.handled.add(event_id)
        if first_time:
            print(f"verified {self.headers['hookrelay-event-type']} {event_id} "
                  f"(attempt {self.headers['hookrelay-attempt']}): {json.dumps(payload)}", flush=True)
        # Any 2xx tells hookrelay the delivery succeeded; answer quickly and do slow work afterwards.
        self.answer(204, None)

    def answer(self, status: int, document) -> None:
        body = json.dumps(document).encode() if document is not None else b""
        self.send_response(status)
        if body:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # quiet: one line per verified event is printed above
        pass


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    Receiver.webhook = Webhook(os.environ["WEBHOOK_SECRET"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    print(f"receiver listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
