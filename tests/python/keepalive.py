"""Keep-alive probe for tests/http_conformance.rs.

    keepalive.py HOST PORT CAFILE < CASES_JSON

Each case is sent on a TLS connection of its own (Python's ssl, HTTP/1.1,
responses parsed by http.client). After the case's response the probe either
sends `GET /healthz` on the same connection or, when the response said
`Connection: close`, reads on until the connection ends and tells how:
"clean" (TLS close_notify), "ragged" (TCP FIN without close_notify),
"reset", "timeout" or "data". Prints one JSON object per case.

A case: {"name", "method", "path", "headers": {..}, "body": text or
"body_bytes": N (of "body_char", default "x"), "chunked": bool,
"body_after_response": bool, "also_http_client": bool, "raw": text}.
`body_after_response` holds the body back until the response has come (as a
client waiting for `100 Continue` does, then sending anyway); `raw` sends
that text as the whole request instead; `also_http_client` runs the case
once more through http.client.HTTPSConnection and reports whether that
library kept its connection for the second request.
"""

import http.client
import json
import socket
import ssl
import sys


def connect(host, port, ctx):
    tcp = socket.create_connection((host, port), timeout=15)
    # suppress_ragged_eofs=False: a FIN without close_notify raises
    # SSLEOFError, so a clean close can be told from a ragged one.
    return ctx.wrap_socket(tcp, server_hostname=host, suppress_ragged_eofs=False)


def response(sock, method):
    """The next response on `sock`: (status, headers, body)."""
    r = http.client.HTTPResponse(sock, method=method)
    r.begin()
    body = r.read()
    headers = {k.lower(): v for k, v in r.getheaders()}
    r.close()
    return r.status, headers, body


def how_it_ends(sock):
    try:
        data = sock.recv(1)
    except ssl.SSLEOFError:
        return "ragged"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error: " + repr(e)
    return "clean" if data == b"" else "data"


def head_bytes(case, host, port):
    lines = [f"{case['method']} {case['path']} HTTP/1.1", f"Host: {host}:{port}"]
    for k, v in case.get("headers", {}).items():
        lines.append(f"{k}: {v}")
    n = len(plain_body(case))
    if case.get("chunked"):
        lines.append("Transfer-Encoding: chunked")
    elif n or case["method"] not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {n}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def plain_body(case):
    if "body" in case:
        return case["body"].encode()
    return case.get("body_char", "x").encode() * case.get("body_bytes", 0)


def body_bytes(case):
    """The body as sent: chunked when the case says so."""
    body = plain_body(case)
    if not case.get("chunked"):
        return body
    out = b""
    for i in range(0, len(body), 8192):
        chunk = body[i : i + 8192]
        out += b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    return out + b"0\r\n\r\n"


def probe(host, port, ctx, case):
    out = {"name": case["name"]}
    sock = connect(host, port, ctx)
    local = sock.getsockname()
    try:
        if "raw" in case:
            sock.sendall(case["raw"].encode())
            status, headers, body = response(sock, "GET")
        else:
            sock.sendall(head_bytes(case, host, port))
            if case.get("body_after_response"):
                status, headers, body = response(sock, case["method"])
                sock.sendall(body_bytes(case))
            else:
                sock.sendall(body_bytes(case))
                status, headers, body = response(sock, case["method"])
    except (OSError, http.client.HTTPException) as e:
        out["error"] = repr(e)
        return out
    out["status"] = status
    out["connection"] = headers.get("connection")
    out["content_type"] = headers.get("content-type")
    try:
        out["code"] = json.loads(body).get("error")
    except ValueError:
        out["code"] = None
    if (headers.get("connection") or "").lower() == "close":
        out["after"] = how_it_ends(sock)
        return out
    try:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        second, _, _ = response(sock, "GET")
        out["after"] = f"second {second}"
        out["same_connection"] = sock.getsockname() == local
    except (OSError, http.client.HTTPException) as e:
        out["after"] = "second failed: " + repr(e)
    finally:
        sock.close()
    return out


def client_retry(host, port, ctx, case):
    """The same request through http.client.HTTPSConnection, then
    `GET /healthz`: whether that library reused its connection."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=15)
    out = {"name": case["name"] + " (http.client)"}
    try:
        conn.connect()
        first_sock = conn.sock
        conn.request(case["method"], case["path"], body=plain_body(case), headers=case.get("headers", {}))
        r = conn.getresponse()
        r.read()
        out["status"] = r.status
    except (OSError, http.client.HTTPException) as e:
        out["error"] = repr(e)
        return out
    try:
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        out["after"] = f"second {r.status}"
        # http.client reconnects silently when it finds its socket closed.
        out["same_connection"] = conn.sock is first_sock
    except (OSError, http.client.HTTPException) as e:
        out["after"] = "second failed: " + repr(e)
    finally:
        conn.close()
    return out


def main():
    host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    for case in json.load(sys.stdin):
        print(json.dumps(probe(host, port, ctx, case)), flush=True)
        if case.get("also_http_client"):
            print(json.dumps(client_retry(host, port, ctx, case)), flush=True)


if __name__ == "__main__":
    main()
