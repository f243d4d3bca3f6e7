"""A webhook receiver for tests/webhooks.rs: verifies each delivery with the
Standard Webhooks reference library and records it.

    webhook_receiver.py PORT SECRET_FILE LOG [--slow N SECONDS] [--hold FILE]

Listens on 127.0.0.1:PORT. Each POST is verified with
standardwebhooks.Webhook(secret).verify(body, headers); one JSON line per
request goes to LOG: {"verified": bool, "id", "timestamp", "signature",
"body"} (the raw body as text). Verified deliveries are answered 204,
others 400. --slow N SECONDS: the first N requests are answered only after
SECONDS. --hold FILE: requests are answered only once FILE exists. Prints
"listening" once it accepts connections.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

port, secret_file, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
args = sys.argv[4:]
slow_count, slow_secs, hold = 0, 0.0, None
while args:
    if args[0] == "--slow":
        slow_count, slow_secs, args = int(args[1]), float(args[2]), args[3:]
    elif args[0] == "--hold":
        hold, args = args[1], args[2:]
    else:
        sys.exit(f"unknown argument {args[0]}")

with open(secret_file) as f:
    verifier = Webhook(f.read().strip())
lock = threading.Lock()
seen = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with lock:
            seen += 1
            n = seen
        if n <= slow_count:
            time.sleep(slow_secs)
        while hold and not os.path.exists(hold):
            time.sleep(0.05)
        try:
            verifier.verify(body, dict(self.headers))
            verified = True
        except WebhookVerificationError:
            verified = False
        record = {
            "verified": verified,
            "id": self.headers.get("webhook-id"),
            "timestamp": self.headers.get("webhook-timestamp"),
            "signature": self.headers.get("webhook-signature"),
            "body": body.decode(),
        }
        with lock, open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")
        try:
            self.send_response(204 if verified else 400)
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up waiting (a slow answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
