"""Checks lockstep's OpenAPI document with validators lockstep did not write.

    openapi_check.py DOC.json [CALLS.json]

1. DOC must be a valid OpenAPI 3.1 document (openapi-spec-validator).
2. CALLS, if given, is a list of real calls made against a running server:
   {"method", "path" (as sent, query included), "status", "content_type",
   "body" (parsed JSON or null)}. For each one the operation is looked up
   by method and path template; its status must be documented for that
   operation (explicitly: a `default` response does not count); a JSON
   answer must validate against the documented schema for that status and
   content type (openapi-schema-validator, JSON Schema 2020-12 as OpenAPI
   3.1 has it). Every documented operation must have been called and have
   answered 2xx at least once, and none of its calls may have reached the
   router's fallbacks (`not_found`, `method_not_allowed`).

Prints what it checked; exits 1 with every problem found.
"""

import json
import sys
from urllib.parse import urlsplit

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

FALLBACK_CODES = {"not_found", "method_not_allowed"}


def pointer(*parts):
    """A JSON pointer to `parts` (RFC 6901)."""
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def template_of(doc, path):
    """The documented path template that `path` (no query) matches."""
    segments = path.split("/")
    for template in doc["paths"]:
        t = template.split("/")
        if len(t) == len(segments) and all(
            a == b or (a.startswith("{") and a.endswith("}") and b) for a, b in zip(t, segments)
        ):
            return template
    return None


def check_call(doc, call):
    """Problems with one call (a list of strings)."""
    method = call["method"].lower()
    path = urlsplit(call["path"]).path
    template = template_of(doc, path)
    name = f"{call['method']} {call['path'][:80]} -> {call['status']}"
    if template is None or method not in doc["paths"][template]:
        return [f"{name}: no documented operation"], None
    op = doc["paths"][template][method]
    responses = op.get("responses", {})
    status = str(call["status"])
    if status not in responses:
        return [f"{name}: status not documented for {method.upper()} {template} (documented: {sorted(responses)})"], (method, template)
    problems = []
    body = call.get("body")
    if isinstance(body, dict) and body.get("error") in FALLBACK_CODES:
        problems.append(f"{name}: answered by the router's fallback ({body.get('error')})")
    content = responses[status].get("content")
    ct = (call.get("content_type") or "").split(";")[0].strip().lower()
    if content:
        if ct not in content:
            problems.append(f"{name}: content type {ct!r} not documented (documented: {sorted(content)})")
        elif "schema" in content[ct] and ct.endswith("json"):
            # Validate against the schema where it sits in the document, so
            # its $refs resolve against the document's components.
            schema = dict(doc)
            schema["$ref"] = pointer("paths", template, method, "responses", status, "content", ct, "schema")
            errors = sorted(OAS31Validator(schema).iter_errors(body), key=str)
            for e in errors[:5]:
                problems.append(f"{name}: body does not match the documented schema: {e.message} at {list(e.absolute_path)}")
    return problems, (method, template)


def main():
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    problems = []
    # 1. The document itself, every error listed.
    errors = list(OpenAPIV31SpecValidator(doc).iter_errors())
    for e in errors:
        problems.append(f"document: {e}")
    print(f"document: OpenAPI {doc.get('openapi')}, {sum(len(v) for v in doc['paths'].values())} operations, "
          f"{'valid' if not errors else 'INVALID'} (openapi-spec-validator)")
    # 2. The calls.
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            calls = json.load(f)
        called = {}
        for call in calls:
            found, op = check_call(doc, call)
            problems.extend(found)
            if op:
                called.setdefault(op, set()).add(call["status"])
        for template, item in doc["paths"].items():
            for method in item:
                statuses = called.get((method, template), set())
                if not statuses:
                    problems.append(f"{method.upper()} {template}: documented but never called")
                elif not any(200 <= s < 300 for s in statuses):
                    problems.append(f"{method.upper()} {template}: never answered 2xx")
        print(f"calls: {len(calls)} checked against their operations, covering {len(called)} operations")
        for (method, template), statuses in sorted(called.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(f"  {method.upper():5} {template:35} {sorted(statuses)}")
    for p in problems:
        print("PROBLEM: " + p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
