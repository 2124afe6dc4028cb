#!/usr/bin/env python3
"""Runs verify.py's `verify` against signed-request fixtures; prints one `PASS`/`FAIL` line per case.

    python3 check_verify.py fixtures/spec.json [more fixtures ...]

A fixture is JSON: `secrets` (or `secret`), `headers`, `body`, and optionally `now` (unix seconds). With `now`, the
library's clock is pinned to it (the specification's example is from 2021, far outside the 5-minute tolerance);
without it the real clock is used, as a receiver would. Cases per fixture: the request verifies under each secret;
an altered body, an altered id, a signature from another secret and (for pinned fixtures) the real clock are refused.
When every case passes, the version of standardwebhooks they ran with is written to
target/tested-versions/docs-python-standardwebhooks, which docs/tools/check_docs.py compares with the docs.
"""

import datetime
import importlib.metadata
import json
import pathlib
import sys
from contextlib import contextmanager
from unittest import mock

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import standardwebhooks.webhooks  # noqa: E402
from standardwebhooks import Webhook, WebhookVerificationError  # noqa: E402

from verify import verify  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTED = ROOT / "target" / "tested-versions" / "docs-python-standardwebhooks"
OTHER_SECRET = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 bytes of "A": signs nothing here


@contextmanager
def clock(now):
    """Pins the library's notion of now. standardwebhooks has no tolerance setting; it reads
    `datetime.now(tz=timezone.utc)` in `standardwebhooks.webhooks`, so that name is replaced for the duration."""
    if now is None:
        yield
        return

    class Pinned(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.fromtimestamp(now, tz)

    with mock.patch.object(standardwebhooks.webhooks, "datetime", Pinned):
        yield


results = []


def case(name, accept, run):
    try:
        run()
        outcome = "accepted"
    except WebhookVerificationError as error:
        outcome = f"refused ({error})"
    except Exception as error:  # anything else is a failure of the snippet, never a pass
        results.append(False)
        print(f"FAIL python: {name}: {type(error).__name__}: {error}")
        return
    ok = outcome == "accepted" if accept else outcome.startswith("refused")
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} python: {name}: {outcome}")


def main(paths):
    for path in paths:
        fixture = json.loads(pathlib.Path(path).read_text())
        label = pathlib.Path(path).stem
        secrets = fixture.get("secrets") or [fixture["secret"]]
        headers = fixture["headers"]
        body = fixture["body"].encode()
        now = fixture.get("now")
        for index, secret in enumerate(secrets):
            suffix = f" (secret {index + 1} of {len(secrets)})" if len(secrets) > 1 else ""
            with clock(now):
                case(f"{label}: authentic request{suffix}", True,
                     lambda: verify(Webhook(secret), headers, body))
        webhook = Webhook(secrets[0])
        with clock(now):
            altered = body.replace(b"}", b" }", 1) if b"}" in body else body + b" "
            case(f"{label}: altered body", False, lambda: verify(webhook, headers, altered))
            case(f"{label}: altered webhook-id", False,
                 lambda: verify(webhook, {**headers, "webhook-id": headers["webhook-id"] + "x"}, body))
            case(f"{label}: another secret", False, lambda: verify(Webhook(OTHER_SECRET), headers, body))
            case(f"{label}: upper-case header names", True,
                 lambda: verify(webhook, {name.upper(): value for name, value in headers.items()}, body))
        if now is not None:
            case(f"{label}: same request checked against the real clock (stale timestamp)", False,
                 lambda: verify(webhook, headers, body))
    if not results or not all(results):
        return 1
    TESTED.parent.mkdir(parents=True, exist_ok=True)
    TESTED.write_text(importlib.metadata.version("standardwebhooks") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
