"""Verifies one recorded delivery (a JSON line of webhook_receiver.py on
stdin) with the Standard Webhooks reference library and the secret in
SECRET_FILE; exit 0 when it verifies, 1 when not.

    webhook_verify.py SECRET_FILE < record.json
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

with open(sys.argv[1]) as f:
    verifier = Webhook(f.read().strip())
record = json.loads(sys.stdin.read())
headers = {
    "webhook-id": record["id"],
    "webhook-timestamp": record["timestamp"],
    "webhook-signature": record["signature"],
}
try:
    verifier.verify(record["body"].encode(), headers)
except WebhookVerificationError as e:
    print(f"refused: {e}")
    sys.exit(1)
print("verified")
