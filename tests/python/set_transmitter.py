"""A Shared Signals transmitter for the tests (tests/signals.rs).

    set_transmitter.py keygen DIR
        writes DIR/main.pem and DIR/other.pem (EC P-256 private keys) and
        DIR/jwks.json, which publishes main's public key only, as kid "k1".
    set_transmitter.py sign DIR < request.json
        prints the SET the request describes (as push would send it).
    set_transmitter.py push URL CAFILE DIR < request.json
        request: {"claims": {...}, "key": "main" | "other",
                  "headers": {...}} (headers default to kid k1 and typ
        secevent+jwt). Signs the claims as a SET with PyJWT (ES256) and
        POSTs it per RFC 8935 (Content-Type: application/secevent+jwt),
        trusting CAFILE. Prints {"status": N, "body": <JSON or text>}.
"""

import json
import ssl
import sys
import urllib.error
import urllib.request

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def keygen(directory):
    for name in ("main", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(f"{directory}/{name}.pem", "wb") as f:
            f.write(pem)
        if name == "main":
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": "k1", "use": "sig", "alg": "ES256"})
            with open(f"{directory}/jwks.json", "w") as f:
                json.dump({"keys": [jwk]}, f)


def sign(directory, request):
    with open(f"{directory}/{request.get('key', 'main')}.pem", "rb") as f:
        key = f.read()
    headers = {"kid": "k1", "typ": "secevent+jwt"}
    headers.update(request.get("headers", {}))
    return jwt.encode(request["claims"], key, algorithm="ES256", headers=headers)


def push(url, cafile, directory):
    token = sign(directory, json.load(sys.stdin))
    post = urllib.request.Request(
        url,
        data=token.encode(),
        method="POST",
        headers={"Content-Type": "application/secevent+jwt", "Accept": "application/json"},
    )
    context = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(post, context=context, timeout=10) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        body = json.loads(body) if body else None
    except ValueError:
        body = body.decode(errors="replace")
    print(json.dumps({"status": status, "body": body}))


if __name__ == "__main__":
    if sys.argv[1] == "keygen":
        keygen(sys.argv[2])
    elif sys.argv[1] == "sign":
        print(sign(sys.argv[2], json.load(sys.stdin)))
    else:
        push(sys.argv[2], sys.argv[3], sys.argv[4])
